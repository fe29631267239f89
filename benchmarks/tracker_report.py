"""One Markdown table of the tracker's measured results, against the issue's targets, from the
JSON files the evaluations wrote (nothing is recomputed here):

    python benchmarks/tracker_report.py [--results benchmarks/results] [--out benchmarks/results/tracker.md]

Reads tracker_test.json, tracker_test_structure.json, tracker_test_radio.json (benchmarks/tracker.py
on the test split), tracker_valid.json / tracker_valid_radio.json (the selection data),
tracker_cost.json, real_vienna.json, real_joplin.json and real_joplin_ool.json when present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load(folder: Path, name: str) -> dict | None:
    f = folder / name
    return json.loads(f.read_text()) if f.is_file() else None


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _s(x) -> str:
    if x is None:
        return "–"
    return "never" if x == float("inf") else f"{x:.1f} s"


def _follow_rows(tag: str, r: dict | None) -> list[str]:
    if not r:
        return []
    rows = []
    for mode, what in (("piece", "piece given"), ("identify", "identify")):
        m = r.get(mode)
        if not m:
            continue
        p = m["pooled"]
        rows.append(f"| {tag} | follow, {what} ({m['takes']} takes) | within 0.5 / 1 / 2 s | "
                    f"{_pct(p['within_0.5s'])} / {_pct(p['within_1s'])} / {_pct(p['within_2s'])} | >= 92 % / >= 97 % / – |")
        rows.append(f"| {tag} | follow, {what} | tracked to the end | {_pct(m['tracked_to_end'])} | >= 95 % |")
        pt = m.get("page_turns")
        if pt:
            rows.append(f"| {tag} | page turns, {what} ({pt['changes']} page changes) | on time (0-3 s ahead) / early / late / "
                        f"missed; spurious per take | {_pct(pt['on_time'])} / {_pct(pt['early'])} / {_pct(pt['late'])} / "
                        f"{_pct(pt['missed'])}; {pt['spurious_per_take']:.1f} | – |")
        idn = m.get("identification")
        if idn:
            cells = " / ".join(_pct(idn[c]["top1"]) if idn.get(c) else "–" for c in ("5s", "10s", "30s"))
            rows.append(f"| {tag} | identify, {r.get('pieces_in_library')} pieces | top-1 after 5 / 10 / 30 s | {cells} | >= 97 % at 10 s (>= 1,000 pieces) |")
            rows.append(f"| {tag} | identify | median time to identify; never | {_s(idn['time_to_identify_median_s'])}; "
                        f"{idn['never_identified']} | <= 4 s |")
            vo = idn.get("votes_only")
            if vo:      # the baseline: the kNN-vote leader, no alignment, never "unknown"
                cells = " / ".join(_pct(vo[c]["top1"]) if vo.get(c) else "–" for c in ("5s", "10s", "30s"))
                rows.append(f"| {tag} | identify, votes only (baseline: never 'unknown') | top-1 after 5 / 10 / 30 s; median time "
                            f"to lead; never | {cells}; {_s(vo['time_to_identify_median_s'])}; {vo['never_identified']} | – |")
            if "time_to_identify_playing_median_s" in idn:
                rows.append(f"| {tag} | identify, 'stays' only while the music plays | median time to identify; never | "
                            f"{_s(idn['time_to_identify_playing_median_s'])}; {idn['never_identified_playing']} | <= 4 s |")
    u = r.get("unknown")
    if u:
        rows.append(f"| {tag} | unknown: {u['takes']} takes of pieces not in the library | 10 s stretches with a piece named | "
                    f"{_pct(u['false_identification_share'])} | <= 1 % |")
    st = r.get("structure")
    if st:
        for k in ("back", "forward"):
            v = st[k]
            rows.append(f"| {tag} | structure: jump {k} ({v['splices']} splices) | re-lock median / p90; never | "
                        f"{_s(v['median_relock_s'])} / {_s(v['p90_relock_s'])}; {v['never']} | median <= 3 s |")
    ra = r.get("radio")
    if ra:
        a = ra["after_change"]
        rows.append(f"| {tag} | radio: {ra['medleys']} medleys, {a['items']} changes | re-identify median / p90; never | "
                    f"{_s(a['median_reidentify_s'])} / {_s(a['p90_reidentify_s'])}; {a['never']} | median <= 6 s |")
        rows.append(f"| {tag} | radio | changes with a wrong piece named >= 5 s | {a['errors']} ({_pct(a['error_share'])}) | – |")
    return rows


def markdown(folder: Path) -> str:
    rows = ["| data | measure | metric | value | target |", "|---|---|---|---|---|"]
    test = _load(folder, "tracker_test.json") or {}
    for extra in ("tracker_test_structure.json", "tracker_test_radio.json"):
        test.update({k: v for k, v in (_load(folder, extra) or {}).items() if k in ("structure", "radio")})
    rows += _follow_rows("test (203 pieces, held-out timbre)", test)
    # the first 100 test takes again, 2026-12-08, with the vote-only baseline beside the tracker
    rows += _follow_rows("test, first 100 takes", _load(folder, "tracker_test_identify100_203.json"))
    rows += _follow_rows("test, first 50 takes, 1,000-piece library", _load(folder, "tracker_test_identify50_1000.json"))
    rows += _follow_rows("test, first 100 takes, 1,000-piece library", _load(folder, "tracker_test_identify100_1000.json"))
    valid = _load(folder, "tracker_valid.json") or {}
    valid.update({k: v for k, v in (_load(folder, "tracker_valid_radio.json") or {}).items() if k == "radio"})
    rows += _follow_rows("valid (selection)", valid)
    # this machine's rebuild of the valid corpus and library (2026-12-07): page turns, identify while playing
    rows += _follow_rows("valid, rebuilt corpus (40 takes p0)", _load(folder, "tracker_valid_piece_p0_pageturns.json"))
    rows += _follow_rows("valid, rebuilt corpus", _load(folder, "tracker_valid_identify_rebuilt.json"))
    # real scans: the shipped settings, then configs/tracker_scans.toml (its lower evidence allowance)
    for name, scans in (("real_vienna.json", ""), ("real_vienna_scans.json", ", configs/tracker_scans.toml")):
        v = _load(folder, name)
        if not v:
            continue
        tag = f"Vienna 4x22 (real timing, real scans; {v['takes']} takes)"
        for mode, what in (("piece", "piece given"), ("identify", f"identify ({v['library_pieces']} scans)"),
                           ("identify_distractors", f"identify (+{v.get('distractor_pieces')} distractors)")):
            m = v["pooled"].get(mode)
            if m:
                rows.append(f"| {tag} | {what}{scans} | system right; within 1 system | {_pct(m['system_right'])}; "
                            f"{_pct(m['within_1_system'])} | >= 90 % |")
    for name, scans in (("real_joplin.json", ""), ("real_joplin_allow08.json", ", configs/tracker_scans.toml")):
        j = _load(folder, name)
        if not j:
            continue
        tag = f"Joplin (real scans, synthesized kern; {j['pooled']['all']['piece']['pieces']} pieces)"
        for mode, what in (("piece", "piece given"), ("identify", f"identify ({j.get('library_pieces')} scans)")):
            m = j["pooled"]["all"].get(mode)
            if m and not (scans and mode == "piece"):
                rows.append(f"| {tag} | {what}{scans} | system right; within 1 system | {_pct(m['system_accuracy'])}; "
                            f"{_pct(m['within_1_accuracy'])} | >= 90 % |")
    for name, scans in (("real_joplin_ool.json", ""), ("real_joplin_ool_allow08.json", ", configs/tracker_scans.toml")):
        o = _load(folder, name)       # the price of a lower allowance: Joplin audio whose scan is not in the library
        if o:
            rows.append(f"| Joplin (real scans, synthesized kern; {len(o['pieces'])} pieces) | unknown: each piece's audio, "
                        f"its scan removed ({o['library_pieces'] - 1} scans){scans} | 10 s stretches with a piece named | "
                        f"{_pct(o['false_identification_share'])} | <= 1 % |")
    c = _load(folder, "tracker_cost.json")
    if c:
        for k in ("small", "large"):
            x = c.get(k)
            if x:
                rows.append(f"| cost | {x['pieces']} pieces ({x['index']}) | ms per update, median / p99 | "
                            f"{x['ms_median']:.1f} / {x['ms_p99']:.1f} | <= 2 ms at 1,000 pieces |")
        rows.append(f"| cost | embedding (batched) | s CPU per stream-second | {c['embedding_s_per_stream_second']:.3f} | |")
    return "# Tracker results\n\n`python benchmarks/tracker_report.py` (from the JSON files in this folder)\n\n" + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    md = markdown(a.results)
    print(md)
    out = a.out or a.results / "tracker.md"
    out.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
