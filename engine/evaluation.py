"""Evaluations of the engine on a built corpus (``scorestream eval identify|follow``, benchmarks/).

A library built with ``library import-corpus`` (page images only, through our system
detection) and the corpus's performances: their spectrogram frames are cut into windows
exactly as the live front end cuts them, embedded once (cached), and streamed causally
through a tracker.  Truth: every performed notehead onset (page, system, notehead x).

* follow: with ``--piece`` given (``mode="piece"``) and without (``mode="identify"``): share
  of results within 0.5 / 1 / 2 s (pooled and mean per piece), share of pieces tracked to
  the end; identification top-1/top-5/MRR after 5, 10, 30 s and time to identify;
* unknown: audio of pieces that are not in the library (speech, noise, applause, silence: nonmusic, after):
  share of 10 s stretches in which some piece is named;
* structure: a performance spliced with a jump back / forward: time until the reported
  position is right again (within 1 s) after the splice.
"""

from __future__ import annotations

import hashlib
import zlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorestream.core.frontend import FrontEndConfig
from scorestream.streamer.frontend import WindowCutter

from .engine import TrackerConfig, load_tracker_config
from .scoring import follow_errors, follow_summary, identification, page_turn_summary, page_turns, tracked_to_end

log = logging.getLogger(__name__)

UNKNOWN_STRETCH_S = 10.0
RELOCK_WITHIN_S = 1.0
FPS = FrontEndConfig().fps      # spectrogram frames per second of the corpus takes


@dataclass
class Take:
    """One performance: spectrogram frames (T, bins), truth events [t, page, system, x], its piece."""

    name: str
    piece: str | None
    frames: np.ndarray
    events: list


def corpus_takes(corpus: str | Path, pieces: list[str], perfs=(0,)) -> list[Take]:
    from scorestream.models.corpus.reader import Corpus

    c = Corpus(corpus)
    out = []
    for pid in pieces:
        p = c.piece(pid)
        for j in perfs:
            if j >= len(p.meta["performances"]):
                continue
            spec, _ = p.performance(j)
            ev = [[r["onset_s"], r["page"], r["system"], (r["x0"] + r["x1"]) / 2] for r in p.alignment(j)]
            ev.sort(key=lambda e: e[0])
            out.append(Take(f"{pid}/p{j}", pid, spec, ev))
    return out


def windows_of(engine, frames: np.ndarray) -> list:
    cut = WindowCutter(engine.audio_frames, engine.stride_frames)
    ws = []
    for i in range(0, len(frames), 2):         # 100 ms of frames at a time, as a live stream
        ws += cut.push(frames[i:i + 2])
    return ws + cut.flush()


class EmbeddingCache:
    """Window embeddings per take, on disk (keyed by the model's fingerprint and the frames)."""

    def __init__(self, engine, folder: str | Path | None) -> None:
        self.engine = engine
        self.folder = Path(folder) if folder else None
        self.fp = getattr(engine.embedder, "fingerprint", "model")

    def get(self, take: Take) -> tuple[list, np.ndarray]:
        ws = windows_of(self.engine, take.frames)
        key = hashlib.sha256(self.fp.encode() + take.frames.tobytes() + str(self.engine.stride_frames).encode()).hexdigest()[:20]
        f = self.folder / f"{key}.npy" if self.folder else None
        if f is not None and f.is_file():
            emb = np.load(f)
            if len(emb) == len(ws):
                return ws, emb
        emb = np.concatenate([self.engine.embed(ws[i:i + 64]) for i in range(0, len(ws), 64)]) if ws else np.zeros((0, 1))
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.save(f, emb.astype(np.float32))
        return ws, emb


def run_take(engine, ws, emb, *, piece: str | None, config=None, votes: list | None = None) -> tuple[list[dict], float]:
    """The take's results (JSON dicts) and the tracker's seconds per update. ``votes``: a list that
    receives, per result, the vote-only answer (:func:`vote_answer`; identification only)."""
    tr = engine.new_tracker(piece, config=config)
    res, spent = [], 0.0
    for w, e in zip(ws, emb):
        t0 = time.perf_counter()
        res.append(tr.update(w, e).to_json())
        spent += time.perf_counter() - t0          # the tracker's time only, not the baseline's bookkeeping
        if votes is not None:
            votes.append(vote_answer(tr, res[-1]["t"]))
    return res, spent / max(len(ws), 1)


def vote_answer(tracker, t: float, top: int = 5) -> dict:
    """The baseline the tracker must beat: the piece with the most kNN votes (the tracker's own
    votes: exponential forgetting, normalised per piece), no alignment and no "unknown", as a
    result dict that :func:`~scorestream.engine.scoring.identification` scores."""
    v = tracker.votes
    if not len(v) or float(v.max()) <= 0:
        return {"t": t, "state": "unknown", "piece": None, "candidates": []}
    k = min(top, len(v))
    best = np.argpartition(-v, k - 1)[:k]
    best = best[np.argsort(-v[best])]
    ids = [tracker.engine.pieces[int(i)].id for i in best if v[i] > 0]
    return {"t": t, "state": "tracking", "piece": ids[0], "candidates": [{"piece": i} for i in ids]}


def evaluate_follow(engine, takes: list[Take], cache: EmbeddingCache, *, mode: str = "identify", config=None,
                    progress=None) -> dict:
    """Follow (and identify, unless ``mode == "piece"``) every take of a library piece."""
    per, pooled, ms = [], [], []
    for i, tk in enumerate(takes):
        ws, emb = cache.get(tk)
        votes = [] if mode != "piece" else None
        res, dt = run_take(engine, ws, emb, piece=tk.piece if mode == "piece" else None, config=config, votes=votes)
        e = follow_errors(res, tk.events, piece=tk.piece)
        s = follow_summary(e)
        d = {"take": tk.name, **s, "tracked_to_end": tracked_to_end(e), "ms_per_update": dt * 1e3,
             "page_turns": page_turns(res, tk.events, piece=tk.piece)}
        if mode != "piece":
            d["identification"] = identification(res, tk.piece)
            d["identification_votes"] = identification(votes, tk.piece)
            if tk.events:        # "stays" only while the music plays (up to the last onset)
                d["identification"]["time_to_identify_playing_s"] = identification(
                    res, tk.piece, end=float(tk.events[-1][0]), checkpoints=())["time_to_identify_s"]
        per.append(d)
        pooled.append(e)
        ms.append(dt * 1e3)
        if progress:
            progress(i + 1, len(takes), d)
    allerr = np.concatenate(pooled) if pooled else np.zeros(0)
    out = {"mode": mode, "takes": len(takes), "pooled": follow_summary(allerr),
           "mean_per_take": {k: float(np.mean([d[k] for d in per])) for k in ("within_0.5s", "within_1s", "within_2s")} if per else {},
           "tracked_to_end": float(np.mean([d["tracked_to_end"] for d in per])) if per else 0.0,
           "ms_per_update_median": float(np.median(ms)) if ms else None,
           "page_turns": page_turn_summary([d["page_turns"] for d in per]), "per_take": per}
    if mode != "piece" and per:
        idn = identification_summary([d["identification"] for d in per])
        ttp = [d["identification"].get("time_to_identify_playing_s") for d in per]
        idn["time_to_identify_playing_median_s"] = float(np.median([x if x is not None else np.inf for x in ttp]))
        idn["never_identified_playing"] = int(sum(x is None for x in ttp))
        idn["votes_only"] = identification_summary([d["identification_votes"] for d in per])
        out["identification"] = idn
    return out


def identification_summary(per_take: list[dict]) -> dict:
    """Means of :func:`~scorestream.engine.scoring.identification`'s per-take scores at each
    checkpoint, and the median time to identify (inf when more than half never were)."""
    out: dict = {}
    for c in ("5s", "10s", "30s"):
        vals = [d[c] for d in per_take if d[c] is not None]
        out[c] = {k: float(np.mean([v[k] for v in vals])) for k in ("top1", "top5", "rr")} if vals else None
    tti = [d["time_to_identify_s"] for d in per_take]
    out["time_to_identify_median_s"] = float(np.median([x if x is not None else np.inf for x in tti]))
    out["never_identified"] = int(sum(x is None for x in tti))
    return out


def evaluate_unknown(engine, takes: list[Take], cache: EmbeddingCache, *, config=None) -> dict:
    """Takes whose music is not in the library: share of 10 s stretches in which a piece is named."""
    stretches, false, per = 0, 0, []
    for tk in takes:
        ws, emb = cache.get(tk)
        res, _ = run_take(engine, ws, emb, piece=None, config=config)
        end = max((r["t"] for r in res), default=0.0)
        n = max(1, int(end // UNKNOWN_STRETCH_S))
        named = np.zeros(n, bool)
        for r in res:
            k = min(n - 1, int(r["t"] // UNKNOWN_STRETCH_S))
            named[k] |= r["state"] == "tracking"
        stretches += n
        false += int(named.sum())
        per.append({"take": tk.name, "stretches": n, "false": int(named.sum()),
                    "tracking_share": float(np.mean([r["state"] == "tracking" for r in res])) if res else 0.0})
    return {"takes": len(takes), "stretches": stretches, "false_identification_share": false / max(stretches, 1), "per_take": per}


def splice(take: Take, cut_at_s: float, resume_at_s: float, name: str) -> tuple[Take, float]:
    """The take played up to ``cut_at_s`` then from ``resume_at_s`` on (a jump back if
    resume < cut, forward otherwise); returns the spliced take and the splice time."""
    fps = FPS
    a, b = int(round(cut_at_s * fps)), int(round(resume_at_s * fps))
    frames = np.concatenate([take.frames[:a], take.frames[b:]])
    shift = (a - b) / fps
    ev = [e for e in take.events if e[0] < cut_at_s] + [[e[0] + shift, *e[1:]] for e in take.events if e[0] >= resume_at_s]
    return Take(name, take.piece, frames, ev), a / fps


def evaluate_structure(engine, takes: list[Take], cache: EmbeddingCache, *, config=None, piece_given: bool = False,
                       rng_seed: int = 0) -> dict:
    """Jumps back (8-16 s of score) and forward (8-16 s) spliced into each take: re-lock time."""
    rng = np.random.default_rng(rng_seed)
    relock = {"back": [], "forward": []}
    for tk in takes:
        dur = len(tk.frames) / FPS
        if dur < 60:
            continue
        for kind in ("back", "forward"):
            cut = float(rng.uniform(0.35, 0.6) * dur)
            span = float(rng.uniform(8, 16))
            resume = cut - span if kind == "back" else cut + span
            sp, at = splice(tk, cut, resume, f"{tk.name}/{kind}")
            ws, emb = cache.get(sp)
            res, _ = run_take(engine, ws, emb, piece=tk.piece if piece_given else None, config=config)
            e = follow_errors(res, sp.events, piece=tk.piece)
            ts = [r["t"] for r in res if sp.events[0][0] <= r["t"] <= sp.events[-1][0] + 1.0]
            ok_before = np.mean(np.abs(e[[i for i, t in enumerate(ts) if at - 10 <= t < at]]) <= RELOCK_WITHIN_S) if ts else 0
            if ok_before < 0.5:      # not following before the splice: re-lock is undefined
                continue
            after = [(t, abs(x) <= RELOCK_WITHIN_S) for t, x in zip(ts, e) if t >= at]
            t_ok = None
            for i, (t, ok) in enumerate(after):    # first time from which 2 s of results stay right
                if ok and all(o for tt, o in after[i:] if tt <= t + 2.0):
                    t_ok = t - at
                    break
            relock[kind].append(np.inf if t_ok is None else t_ok)
    out = {}
    for k, v in relock.items():
        a = np.array(v)
        out[k] = {"splices": len(a), "median_relock_s": float(np.median(a)) if len(a) else None,
                  "p90_relock_s": float(np.quantile(a, 0.9, method="higher")) if len(a) else None, "never": int(np.isinf(a).sum())}
    return out


RADIO_ITEMS = 4                 # pieces per medley
RADIO_ITEM_S = 45.0             # seconds of each piece
RADIO_GAP_S = (0.0, 2.0)        # digital silence between two pieces (uniform)
RADIO_WRONG_S = 5.0             # a wrong piece named this long (continuously) is an error


def silence_frames(seconds: float) -> np.ndarray:
    """Spectrogram frames of digital silence, through the same front end as the corpus."""
    from scorestream.core.frontend import spectrogram

    cfg = FrontEndConfig()
    n = int(round(seconds * cfg.fps))
    if n <= 0:
        return np.zeros((0, cfg.n_bins), np.float32)
    return spectrogram(np.zeros(int(seconds * cfg.sample_rate) + cfg.frame_size, np.float32), cfg)[:n]


def medley(takes: list[Take], rng: np.random.Generator, name: str, *, items: int = RADIO_ITEMS,
           item_s: float = RADIO_ITEM_S, gap_s: tuple[float, float] = RADIO_GAP_S) -> tuple[Take, list[dict]]:
    """A radio hour in miniature: ``items`` different takes, ``item_s`` seconds of each from a
    random point in the piece, hard cuts, ``gap_s`` of silence between them.  Returns the medley
    (events shifted to medley time) and its items ``{piece, start, end}`` in medley seconds."""
    fps = FPS
    picks = rng.choice(len(takes), size=min(items, len(takes)), replace=False)
    parts, events, segs, t = [], [], [], 0.0
    for k, i in enumerate(picks):
        tk = takes[int(i)]
        dur = len(tk.frames) / fps
        n = int(round(min(item_s, dur) * fps))
        off = int(round(rng.uniform(0.0, max(0.0, dur - n / fps)) * fps))
        if k:
            g = silence_frames(float(rng.uniform(*gap_s)))
            parts.append(g)
            t += len(g) / fps
        parts.append(tk.frames[off:off + n])
        shift = t - off / fps
        events += [[e[0] + shift, *e[1:]] for e in tk.events if off / fps <= e[0] < (off + n) / fps]
        segs.append({"piece": tk.piece, "take": tk.name, "start": t, "end": t + n / fps, "offset_s": off / fps})
        t += n / fps
    return Take(name, None, np.concatenate(parts).astype(np.float32), events), segs


def radio_items(results: list[dict], segs: list[dict], *, wrong_s: float = RADIO_WRONG_S) -> list[dict]:
    """Per medley item: time from its start until the right piece is named and stays named to the
    item's end (``None``: never), the first time it is named, and whether another piece was named
    for ``wrong_s`` seconds or more (continuously) while the item played."""
    out = []
    for s in segs:
        rs = [r for r in results if s["start"] <= r["t"] < s["end"]]
        right = [r["state"] == "tracking" and r.get("piece") == s["piece"] for r in rs]
        stay = None
        for r, ok in zip(reversed(rs), reversed(right)):
            if not ok:
                break
            stay = r["t"] - s["start"]
        first = next((r["t"] - s["start"] for r, ok in zip(rs, right) if ok), None)
        longest, run0 = 0.0, None
        for r in rs:
            wrong = r["state"] == "tracking" and r.get("piece") not in (None, s["piece"])
            if wrong:
                run0 = r["t"] if run0 is None else run0
                longest = max(longest, r["t"] - run0)
            else:
                run0 = None
        out.append({"piece": s["piece"], "take": s["take"], "reidentify_s": stay, "first_named_s": first,
                    "longest_wrong_s": longest, "error": longest >= wrong_s})
    return out


def evaluate_radio(engine, takes: list[Take], cache: EmbeddingCache, *, medleys: int = 20, config=None,
                   rng_seed: int = 0, progress=None) -> dict:
    """Medleys of library pieces back to back (``medley``), streamed without the piece given:
    re-identification time after each change (the first item included), errors (a wrong piece
    named for >= 5 s), and position accuracy within each item once its piece is named."""
    rng = np.random.default_rng(rng_seed)
    items, per, fol = [], [], []
    for m in range(medleys):
        tk, segs = medley(takes, rng, f"radio{m}")
        ws, emb = cache.get(tk)
        res, _ = run_take(engine, ws, emb, piece=None, config=config)
        its = radio_items(res, segs)
        for s, it in zip(segs, its):
            if it["first_named_s"] is not None:
                e = follow_errors(res, [e for e in tk.events if s["start"] <= e[0] < s["end"]], piece=s["piece"],
                                  start=s["start"] + it["first_named_s"], end=s["end"])
                fol.append(e)
        items += its
        per.append({"medley": tk.name, "items": [{**s, **it} for s, it in zip(segs, its)]})
        if progress:
            progress(m + 1, medleys, its)
    later = [it for k, it in enumerate(items) if k % RADIO_ITEMS]           # after a change (not a stream's start)
    def summary(its):
        v = np.array([np.inf if it["reidentify_s"] is None else it["reidentify_s"] for it in its])
        return {"items": len(its), "median_reidentify_s": float(np.median(v)) if len(v) else None,
                "p90_reidentify_s": float(np.quantile(v, 0.9, method="higher")) if len(v) else None,
                "never": int(np.isinf(v).sum()), "errors": int(sum(it["error"] for it in its)),
                "error_share": float(np.mean([it["error"] for it in its])) if its else 0.0}
    allerr = np.concatenate(fol) if fol else np.zeros(0)
    return {"medleys": medleys, "item_s": RADIO_ITEM_S, "gap_s": list(RADIO_GAP_S), "wrong_s": RADIO_WRONG_S,
            "all_items": summary(items), "after_change": summary(later),
            "follow_once_named": follow_summary(allerr), "per_medley": per}


NONMUSIC_S = 60.0               # seconds of each non-music item
AFTER_PIECE_MUSIC_S = 40.0      # seconds of the piece before the non-music starts
AFTER_PIECE_S = 30.0            # seconds of non-music after it
RELEASE_GRACE_S = 5.0           # a piece still named this long after its music stopped counts as held


def nonmusic_takes(kinds=None, *, items: int = 2, seconds: float = NONMUSIC_S, seed: int = 0) -> list[Take]:
    """``items`` takes of every non-music kind (engine/nonmusic.py), ``seconds`` each."""
    from . import nonmusic

    out = []
    for kind in kinds or nonmusic.KINDS:
        for j in range(items):
            out.append(Take(f"{kind}/{j}", None, nonmusic.frames(kind, seconds, seed * 1000 + 17 * j + zlib.crc32(kind.encode()) % 997), []))
    return out


def evaluate_nonmusic(engine, takes: list[Take], cache: EmbeddingCache, *, config=None) -> dict:
    """Speech, noise, applause, silence alone: share of 10 s stretches with a piece named, per kind."""
    r = evaluate_unknown(engine, takes, cache, config=config)
    kinds: dict[str, list] = {}
    for d in r["per_take"]:
        kinds.setdefault(d["take"].split("/")[0], []).append(d)
    r["per_kind"] = {k: {"stretches": sum(d["stretches"] for d in v), "false": sum(d["false"] for d in v),
                         "false_identification_share": sum(d["false"] for d in v) / max(1, sum(d["stretches"] for d in v))}
                     for k, v in kinds.items()}
    return r


def evaluate_after_piece(engine, takes: list[Take], cache: EmbeddingCache, *, kinds=None, config=None,
                         music_s: float = AFTER_PIECE_MUSIC_S, after_s: float = AFTER_PIECE_S, seed: int = 0) -> dict:
    """A library piece (``music_s`` from its start) and then speech / applause / noise / silence
    (``after_s``): how long the piece is still named after its music stopped (release time:
    from the end of the music until no piece is named for the rest of the take), and the share
    of non-music 10 s stretches after the first ``RELEASE_GRACE_S`` in which a piece is named."""
    from . import nonmusic

    kinds = list(kinds or ("speech_en", "speech_de", "applause", "noise_pink", "silence"))
    rows = []
    for i, tk in enumerate(takes):
        kind = kinds[i % len(kinds)]
        n = int(round(music_s * FPS))
        if len(tk.frames) < n:
            continue
        tail = nonmusic.frames(kind, after_s, seed * 7919 + i)
        joined = Take(f"{tk.name}+{kind}", tk.piece, np.concatenate([tk.frames[:n], tail]).astype(np.float32),
                      [e for e in tk.events if e[0] < music_s])
        ws, emb = cache.get(joined)
        res, _ = run_take(engine, ws, emb, piece=None, config=config)
        end_music = n / FPS
        named_at_end = any(r["state"] == "tracking" and r["piece"] == tk.piece for r in res if end_music - 2 <= r["t"] < end_music)
        last_named = max((r["t"] for r in res if r["t"] >= end_music and r["state"] == "tracking"), default=None)
        release = 0.0 if last_named is None else last_named - end_music + engine.stride_s
        after = [r for r in res if r["t"] >= end_music + RELEASE_GRACE_S]
        k = max(1, int((after_s - RELEASE_GRACE_S) // UNKNOWN_STRETCH_S))
        named = np.zeros(k, bool)
        for r in after:
            j = min(k - 1, int((r["t"] - end_music - RELEASE_GRACE_S) // UNKNOWN_STRETCH_S))
            named[j] |= r["state"] == "tracking"
        rows.append({"take": joined.name, "kind": kind, "named_at_music_end": named_at_end, "release_s": release,
                     "stretches": k, "false": int(named.sum())})
    def summ(rs):
        rel = np.array([r["release_s"] for r in rs if r["named_at_music_end"]])
        return {"takes": len(rs), "named_at_music_end": int(sum(r["named_at_music_end"] for r in rs)),
                "release_median_s": float(np.median(rel)) if len(rel) else None,
                "release_p90_s": float(np.quantile(rel, 0.9, method="higher")) if len(rel) else None,
                "false_identification_share": sum(r["false"] for r in rs) / max(1, sum(r["stretches"] for r in rs))}
    return {"music_s": music_s, "after_s": after_s, "grace_s": RELEASE_GRACE_S, **summ(rows),
            "per_kind": {kd: summ([r for r in rows if r["kind"] == kd]) for kd in kinds}, "per_take": rows}


def config_with(settings: list[str] | None) -> TrackerConfig:
    """configs/tracker.toml with ``KEY=VALUE`` overrides (values parsed as JSON where they parse:
    ``kappa=10``, ``gate=false``; else strings: ``audio_model=bl1_2s``), for the benchmarks' ``--set``."""
    import json

    out = {}
    for item in settings or []:
        if "=" not in item:
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return load_tracker_config(**out)
