"""Where the following error comes from: the position at the audio window's centre (what the
model sees, 1.05 s in the past for bl1_2s) against the causal result at ``t`` (that position
carried forward with the tempo estimate).  Piece given, corpus takes.

    python benchmarks/follow_lag.py --library data/lib_valid --split valid --limit 25 \
        [--corpus data/corpus] [--out benchmarks/results/follow_lag_valid]
    python benchmarks/follow_lag.py --vienna 8 --out benchmarks/results/follow_lag_vienna   # real timing, real scans

``--vienna N``: instead, the first N pianists of each Vienna 4x22 piece against the library of
the scans (benchmarks/real_vienna.py builds and caches both), scored at system level.

Both are scored with the same truth (engine/scoring.py: the reported page/system/x turned into
a performed time, compared with the time the result is about): the causal result against
``t``, the centre position against the window centre.  The gap between the two is what a
model with less look-ahead (or a better forecast of the next second) could gain; the centre
score bounds what any extrapolation can reach with today's model.  Also scored: extrapolating
with a tempo fitted over other spans, and reporting the fitted line instead of the filter's
mode (both measure how uneven the strip's pixels per second are: note spacing is not
proportional to time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.engine import evaluation as ev  # noqa: E402
from scorestream.engine.engine import Engine  # noqa: E402
from scorestream.engine.library import Library  # noqa: E402
from scorestream.engine.scoring import follow_errors, follow_summary  # noqa: E402
from scorestream.engine.tracker import MIN_TEMPO_POINTS, MIN_TEMPO_SPAN_S, theil_sen_slope  # noqa: E402

LINE_TRUST_PX = 150.0       # the fitted line is used only while the filter's mode is this close to it


def record_take(engine, take, cache) -> list[tuple]:
    """Run the piece-given tracker; per window: (t, t_centre, x_centre, tempo, track, music, state)."""
    ws, emb = cache.get(take)
    tr = engine.new_tracker(take.piece)
    rows = []
    for w, e in zip(ws, emb):
        r = tr.update(w, e)
        c = tr.cands[tr.fixed.index]
        x_c, _, _ = tr._mode_x(c)        # same belief, same answer (hysteresis state already updated)
        rows.append((float(w.t), float(w.t) - engine.window_lead_s, x_c, c.tempo_px_s,
                     np.array(c.track, np.float64).reshape(-1, 2), bool(tr.history[-1].music), r.state))
    return rows


def positions(rows, kind: str, cfg, span_s: float | None = None) -> list[tuple[float, float]]:
    """(time the result is about, strip x) for one way of reporting."""
    lo, hi = cfg.tempo_min * cfg.nominal_px_s, cfg.tempo_max * cfg.nominal_px_s
    out = []
    for t, tc, xc, v, track, music, _ in rows:
        lead = (t - tc) if music else 0.0
        if kind == "centre":
            out.append((tc, xc))
            continue
        x0, vv = xc, v
        if kind in ("span", "line") and len(track):
            tr = track[track[:, 0] >= tc - span_s] if span_s else track
            if len(tr) >= MIN_TEMPO_POINTS and tr[-1, 0] - tr[0, 0] >= MIN_TEMPO_SPAN_S:
                vv = float(np.clip(theil_sen_slope(tr[:, 0], tr[:, 1]), lo, hi))
                if kind == "line":
                    x_line = float(np.median(tr[:, 1] - vv * tr[:, 0]) + vv * tc)
                    x0 = x_line if abs(x_line - xc) < LINE_TRUST_PX else xc
        out.append((t, x0 + vv * lead))
    return out


def score(engine, recs, kind: str, span_s: float | None = None) -> dict:
    errs = []
    for piece, events, rows in recs:
        p = engine.by_id[piece]
        res = []
        for (t, x), row in zip(positions(rows, kind, engine.config, span_s), rows):
            loc = p.locate(float(np.clip(x, 0.0, max(p.strip_width - 1, 0))))
            res.append({"t": t, "state": row[6], "piece": piece, "page": loc["page"], "system": loc["system"], "x": loc["x"]})
        errs.append(follow_errors(res, events, piece=piece))
    return follow_summary(np.concatenate(errs) if errs else np.zeros(0))


def vienna(n_takes: int, out: str | None, data: str, library: str, settings: list[str] | None = None) -> int:
    """System-level version on real timing and real scans (benchmarks/real_vienna.py's data and truth)."""
    import real_vienna as rv

    fx = json.loads(rv.FIXTURE.read_text())
    src = Path(data) / "vienna4x22"
    lib = Path(library)
    rv.ensure_library(lib, src / "pdf", fx)
    engine = Engine(Library.open(lib), tracker_config=ev.config_with(settings))
    cache = REPO / "data" / "real_vienna"
    tot = {k: {"results": 0, "system_right": 0, "within_1_system": 0} for k in ("t", "centre")}
    takes = 0
    for name, p in fx["pieces"].items():
        pm = engine.by_id[p["library_id"]]
        order = {(int(s.page), int(s.system)): k for k, s in enumerate(pm.systems)}
        for mp in sorted((src / "match").glob(f"{name}_p*.match"))[:n_takes]:
            match = rv.read_match(mp)
            onsets, truth = rv.truth_events(match, p)
            audio, sr = rv.render_take(match, src / "midi", cache / "audio")
            ws, emb = rv.windows_and_embeddings(engine, audio, sr, cache / "emb", mp.stem)
            tr = engine.new_tracker(pm.id)
            at_t, at_c = [], []
            for w, e in zip(ws, emb):
                r = tr.update(w, e).to_json()
                x_c, _, _ = tr._mode_x(tr.cands[pm.index])
                loc = pm.locate(x_c)
                at_t.append(r)
                at_c.append({**r, "t": float(w.t) - engine.window_lead_s, "page": loc["page"], "system": loc["system"]})
            for k, res in (("t", at_t), ("centre", at_c)):
                d = rv.score_take(res, onsets, truth, pm.id, order)["counts"]
                for m in tot[k]:
                    tot[k][m] += d[m]
            takes += 1
            print(f"[{takes}] {mp.stem}", flush=True)
    rows = {k: {m: v / max(c["results"], 1) for m, v in c.items() if m != "results"} | {"results": c["results"]}
            for k, c in tot.items()}
    res = {"benchmark": "follow_lag_vienna", "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "takes": takes,
           "audio_model": engine.config.audio_model, "look_ahead_s": engine.window_lead_s, "rows": rows}
    lines = ["# Following error on real timing and real scans: the window centre vs the present (Vienna 4x22, piece given)", "",
             f"`python benchmarks/follow_lag.py --vienna {n_takes}`  ", f"{res['date']}; {takes} takes; audio model "
             f"{res['audio_model']}, look-ahead {res['look_ahead_s']:.2f} s; truth as benchmarks/real_vienna.py", "",
             "| reported | results | system right | within 1 system |", "|---|---|---|---|"]
    for k, what in (("t", "causal result at t (shipped)"), ("centre", "position at the window centre")):
        r = rows[k]
        lines.append(f"| {what} | {r['results']} | {100 * r['system_right']:.1f} % | {100 * r['within_1_system']:.1f} % |")
        print(lines[-1])
    if out:
        o = Path(out)
        o.with_suffix(".json").write_text(json.dumps(res, indent=1))
        o.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--library", default=None, help="library of the split's pieces (required without --vienna)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--limit", type=int, default=25)
    ap.add_argument("--cache", default=str(REPO / "data" / "eval_cache"))
    ap.add_argument("--out", default=None, help="writes OUT.json and OUT.md")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding vienna4x22/ (with --vienna)")
    ap.add_argument("--vienna", type=int, default=None, metavar="N", help="Vienna 4x22 instead: first N pianists per piece")
    ap.add_argument("--vienna-library", default=str(REPO / "data" / "lib_vienna"), help="library of the Vienna scans (built if missing)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tracker setting override (audio_model=...)")
    a = ap.parse_args(argv)
    if a.vienna:
        sys.path.insert(0, str(REPO / "benchmarks"))
        return vienna(a.vienna, a.out, a.data, a.vienna_library, a.set)
    from scorestream.models.corpus.reader import Corpus

    if not a.library:
        ap.error("--library is required (or --vienna N)")
    engine = Engine(Library.open(a.library), tracker_config=ev.config_with(a.set))
    cache = ev.EmbeddingCache(engine, a.cache)
    ids = [p for p in Corpus(a.corpus).piece_ids(a.split) if p in engine.by_id][: a.limit]
    t0 = time.time()
    recs = []
    for i, tk in enumerate(ev.corpus_takes(a.corpus, ids, (0,)), 1):
        recs.append((tk.piece, tk.events, record_take(engine, tk, cache)))
        print(f"[{i}/{len(ids)}] {tk.name}", flush=True)
    rows = [("causal result at t (shipped: mode + tempo over the last "
             f"{engine.config.tempo_window_s:g} s x look-ahead)", score(engine, recs, "current")),
            ("position at the window centre (no look-ahead to cover)", score(engine, recs, "centre"))]
    for s in (3.0, 4.5):
        rows.append((f"at t, tempo over the last {s:g} s", score(engine, recs, "span", s)))
    rows.append((f"at t, fitted line over the last {engine.config.tempo_window_s:g} s instead of the mode",
                 score(engine, recs, "line", engine.config.tempo_window_s)))
    out = {"benchmark": "follow_lag", "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "library": a.library,
           "split": a.split, "takes": len(recs), "audio_model": engine.config.audio_model,
           "look_ahead_s": engine.window_lead_s, "wall_s": round(time.time() - t0, 1),
           "rows": [{"what": w, **s} for w, s in rows]}
    lines = [f"# Following error: the window centre vs the present ({a.split} split, piece given)", "",
             f"`python benchmarks/follow_lag.py --library {a.library} --split {a.split} --limit {a.limit}`  ",
             f"{out['date']}; {len(recs)} takes (p0); audio model {out['audio_model']}, look-ahead {out['look_ahead_s']:.2f} s", "",
             "| reported | within 0.5 s | within 1 s | within 2 s | median abs error |", "|---|---|---|---|---|"]
    for w, s in rows:
        lines.append(f"| {w} | {100 * s['within_0.5s']:.1f} % | {100 * s['within_1s']:.1f} % | {100 * s['within_2s']:.1f} % "
                     f"| {s['median_abs_error_s']:.3f} s |")
        print(f"{w}: {json.dumps({k: round(v, 4) for k, v in s.items() if isinstance(v, float)})}")
    if a.out:
        o = Path(a.out)
        o.parent.mkdir(parents=True, exist_ok=True)
        o.with_suffix(".json").write_text(json.dumps(out, indent=1))
        o.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {o.with_suffix('.json')} and {o.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
