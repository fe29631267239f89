"""Per-stream tracker: identification (kNN votes -> candidates -> sequential likelihood ratios)
and following (an HMM forward filter over each candidate's snippet sequence, with jumps).

Contract (sans-I/O, see docs/engine.md):

* input: the stream's audio windows in order (``AudioWindow``: ``index``, ``t``, ``spec``) and
  their embeddings (one unit-free vector per window, from the engine's embedder);
* output: one :class:`~scorestream.engine.results.Result` per window, about audio time
  ``window.t`` (the end of the newest audio the window holds: causal and current);
* ``reset()`` forgets the stream; ``skipped(n)`` says that ``n`` windows were dropped;
* bounded state: a few candidates, each one float vector over its piece's snippets, and
  ``history_s`` of window embeddings.  No I/O, no threads, never blocks.

The model.  A snippet ``i`` of piece ``p`` explains an audio window embedding ``q`` with
likelihood ``exp(kappa * <q, e_i>)`` (``kappa`` calibrated on the valid split, so that the
posterior over positions is neither over- nor under-confident).  "Not this piece" is the
background: the mean likelihood over the whole library (the exact top-k plus a fixed random
sample for the rest).  Each candidate runs a forward filter: per window the position advances
by the tempo's expected number of snippet hops (Gaussian, sd ``advance_sd`` of it), moves back a
little with ``back_p``, and jumps with ``jump_p`` (half to system starts: repeats, da capo,
restarts; half anywhere).  The log predictive likelihood minus the background's is the
candidate's evidence per window; summed with forgetting (``llr_half_life_s``) and capped, it is
a sequential likelihood ratio.  Piece posteriors are a softmax of the candidates' ratios and
one "unknown" hypothesis with log-odds ``unknown_prior_nats``.  Windows that the gate calls
silence or steady noise are no evidence at all (and do not move the position).

The position is the posterior mean near the posterior's mode, at the window centre; it is
carried forward to ``t`` with the tempo (the slope of the position over the last
``tempo_window_s``), so results are about now, not about the centre of a window in the past.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from scorestream.core.frontend import FrontEndConfig

from .gate import GateConfig, MusicClassifier, gate_features, gate_vector
from .results import Event, Result

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine, PieceModel

MODE_HALF_WIDTH = 3           # snippets either side of the posterior mode averaged for the position
HYSTERESIS_HALF_WIDTH = 8     # snippets either side of a mode whose belief is compared (hysteresis)
MIN_TEMPO_POINTS = 8          # positions needed before the slope replaces the nominal tempo
MIN_TEMPO_SPAN_S = 2.0        # ... spanning at least this much audio
SEARCHING_NATS = 2.0          # a candidate this far above the background: "searching", not "unknown"
MAX_NEW_CANDIDATES = 2        # new candidates warm-started per window (bounded cost)
TOP_CANDIDATES = 3            # candidates listed in a result
START_PRIOR_STATES = 16       # snippets over which the "starts at the beginning" prior is spread


@dataclass(frozen=True)
class TrackerConfig:
    """See configs/tracker.toml for the meaning of each field."""

    stride_s: float = 0.2
    audio_model: str = "bl1_2s"
    knn: int = 32
    candidates: int = 6
    vote_half_life_s: float = 8.0
    kappa: float = 5.0
    llr_half_life_s: float = 12.0
    llr_max: float = 40.0
    llr_min: float = -20.0
    unknown_prior_nats: float = 12.0
    p_track: float = 0.6
    p_lose: float = 0.35
    nominal_px_s: float = 80.0
    tempo_min: float = 0.3
    tempo_max: float = 3.0
    tempo_window_s: float = 6.0
    advance_sd: float = 0.5
    advance_sd_min_states: float = 0.8
    back_p: float = 0.03
    jump_p: float = 0.0005
    jump_to_system_start: float = 0.5
    history_s: float = 6.0
    page_turn_lead_s: float = 2.0
    jump_min_px: float = 300.0
    start_prior: float = 0.5
    library_null_weight: float = 1.0
    evidence_allowance_nats: float = 1.7
    reset_on_change: bool = True
    silence_hold_s: float | None = 8.0
    mode_hysteresis: float = 2.0
    gate: bool = True
    music_classifier: bool = True
    nonmusic_hold_s: float | None = 2.0


FPS = FrontEndConfig().fps


def fused_similarity(emb: np.ndarray, q: np.ndarray, blocks, shift_states_per_s: float) -> np.ndarray:
    """Per snippet: the sum over members of their similarity at the snippet ``lag_s`` earlier
    (``shift_states_per_s``: the tempo in snippets per second; linear interpolation, clamped)."""
    out = np.zeros(len(emb), np.float64)
    idx = np.arange(len(emb), dtype=np.float64)
    for a, b, lag in blocks:
        s = (emb[:, a:b] @ q[a:b]).astype(np.float64)
        if lag > 0 and len(s) > 1:
            s = np.interp(idx - lag * shift_states_per_s, idx, s)
        out += s
    return out


# --------------------------------------------------------------------------- pure functions

def advance_kernel(delta: float, sd: float, back_p: float) -> tuple[np.ndarray, int]:
    """Transition kernel over integer advances ``d`` (snippet hops): returns (weights, d_min).
    Forward: a Gaussian around ``delta`` over d >= 0; backward: ``back_p`` over d = -1, -2."""
    d_max = int(math.ceil(delta + 4.0 * sd)) + 1
    d = np.arange(0, d_max + 1, dtype=np.float64)
    fwd = np.exp(-0.5 * ((d - delta) / sd) ** 2)
    fwd *= (1.0 - back_p) / fwd.sum()
    k = np.concatenate([[back_p / 3.0, 2.0 * back_p / 3.0], fwd])
    return k, -2


def transition(alpha: np.ndarray, kernel: np.ndarray, d_min: int, jump_p: float, jump_target: np.ndarray) -> np.ndarray:
    """One HMM prediction step: convolve with the advance kernel (mass past either end stays at
    the end), then mix in ``jump_p`` of ``jump_target`` (a distribution over states)."""
    n = len(alpha)
    full = np.convolve(alpha, kernel)            # index m <-> position m + d_min
    lo = -d_min
    out = full[lo:lo + n].copy()
    out[0] += full[:lo].sum()
    out[-1] += full[lo + n:].sum()
    if jump_p > 0:
        out *= 1.0 - jump_p
        out += jump_p * jump_target
    return out


def initial_distribution(n: int, start_prior: float) -> np.ndarray:
    """Where a stream that starts now is in the piece: ``start_prior`` of the mass near the
    beginning (geometric over the first START_PRIOR_STATES snippets), the rest uniform."""
    a = np.full(n, (1.0 - start_prior) / n)
    if start_prior > 0:
        g = 0.5 ** (np.arange(min(n, START_PRIOR_STATES)) / (START_PRIOR_STATES / 4))
        a[: len(g)] += start_prior * g / g.sum()
    return a


def theil_sen_slope(t: np.ndarray, x: np.ndarray) -> float:
    """Median of pairwise slopes (robust to a few wrong positions)."""
    i, j = np.triu_indices(len(t), 1)
    dt = t[j] - t[i]
    ok = dt > 1e-6
    if not ok.any():
        return float("nan")
    return float(np.median((x[j] - x[i])[ok] / dt[ok]))


# --------------------------------------------------------------------------- state

class _Candidate:
    """One piece followed by the forward filter."""

    __slots__ = ("piece", "alpha", "llr", "tempo_px_s", "track", "last_x", "last_t", "jumped", "last_inc", "mode_k")

    def __init__(self, piece: "PieceModel", nominal_px_s: float, start_prior: float = 0.0) -> None:
        self.piece = piece
        self.alpha = initial_distribution(piece.n, start_prior)
        self.llr = 0.0
        self.tempo_px_s = nominal_px_s
        self.track: deque = deque()          # (t_centre, strip x) of recent music windows
        self.last_x: float | None = None
        self.last_t: float | None = None
        self.jumped = False
        self.last_inc = 0.0      # evidence of the newest window (nats)
        self.mode_k: int | None = None   # the state the position was last read at (hysteresis)


@dataclass
class _Seen:
    """A window remembered for warm-starting new candidates."""

    steps: int
    t_centre: float
    q: np.ndarray
    music: bool
    ref: float
    log_bg: float
    stopped: bool = False        # silence or noise (not a steady held chord): the music may have stopped
    why: str | None = None       # the gate's reason: silence, noise, steady, not_music (None: music)


class Tracker:
    """Identification and following for one stream (see the module docstring)."""

    def __init__(self, engine: "Engine", *, piece: str | None = None, config: TrackerConfig | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.engine = engine
        self.cfg = config or engine.config
        self.log = logger or logging.getLogger("scorestream.tracker")
        self.fixed = engine.by_id[piece] if piece is not None else None
        self.gate_cfg = GateConfig()
        self.classifier: MusicClassifier | None = getattr(engine, "music_classifier", None) if self.cfg.music_classifier else None
        self._sys_target: dict[int, np.ndarray] = {}
        self.reset()

    # ---- lifecycle
    def reset(self) -> None:
        """Forget the stream (a new stream may follow on the same tracker)."""
        P = len(self.engine.pieces)
        self.votes = np.zeros(P)
        self.cands: dict[int, _Candidate] = {}
        self.history: deque[_Seen] = deque(maxlen=max(1, int(round(self.cfg.history_s / self.engine.stride_s))))
        self.tracked: int | None = None
        self.last_index: int | None = None
        self.pending_skips = 0
        self.dropped = 0
        self.music_seen = False
        self.last_music_t: float | None = None
        self.last_music_tc: float | None = None   # window centre of the newest music window
        self.announced_page: tuple[int, int] | None = None   # (piece index, page) a page_turn was raised for
        self.shown_page: tuple[int, int] | None = None
        self.last_report_x: float | None = None
        self.change_t: float | None = None       # window centre of the last "lost" (a change of piece)
        if self.fixed is not None:
            self.cands[self.fixed.index] = _Candidate(self.fixed, self.cfg.nominal_px_s, self.cfg.start_prior)
        self.windows_seen = 0

    def skipped(self, n: int) -> None:
        """``n`` windows were dropped before the next one (the server fell behind)."""
        self.pending_skips += max(0, int(n))
        self.dropped += max(0, int(n))

    def feed(self, windows, embeddings) -> list[Result]:
        """Several windows at once (in order) -> their results."""
        return [self.update(w, e) for w, e in zip(windows, embeddings)]

    # ---- one window
    def update(self, window, embedding: np.ndarray) -> Result:
        cfg = self.cfg
        eng = self.engine
        steps = 1 if self.last_index is None else max(1, int(window.index) - self.last_index)
        self.last_index = int(window.index)
        self.pending_skips = 0
        self.windows_seen += 1
        dt = steps * eng.stride_s
        t_c = (float(window.centre_time) + eng.query_shift_s) if hasattr(window, "centre_time") \
            else float(window.t) - eng.window_lead_s
        music, stopped, why = True, False, None
        if cfg.gate:
            feats = gate_features(window.spec, self.gate_cfg)
            why = feats.reason(self.gate_cfg)
            if why is None and self.classifier is not None and \
                    self.classifier.p_not_music(gate_vector(window.spec, FPS)) > self.classifier.threshold:
                why = "not_music"          # speech, applause, coloured noise (configs/gate.toml)
            music, stopped = why is None, why in ("silence", "noise", "not_music")
        q = np.asarray(embedding, np.float32).ravel()
        q = q / max(float(np.linalg.norm(q)), 1e-8)

        ref, log_bg = 0.0, 0.0
        if music and eng.size:
            self.music_seen = True
            self.last_music_t = float(window.t)
            self.last_music_tc = t_c
            if self.fixed is None:
                scores, ids = eng.index.search(q[None], min(cfg.knn, eng.size))
                scores, ids = scores[0], ids[0]
                keep = ids >= 0
                scores, ids = scores[keep], ids[keep]
                ref = float(scores[0])
                log_bg = self._log_background(q, scores, ref)
                self._vote(scores, ids, ref, dt)
            else:
                ref = float(np.max(self.fixed.emb @ q))
        elif self.fixed is None:
            self.votes *= 0.5 ** (dt / cfg.vote_half_life_s)

        seen = _Seen(steps, t_c, q, music, ref, log_bg, stopped, why)
        self.history.append(seen)
        if self.fixed is None and music:
            self._refresh_candidates()
        events: list[Event] = []
        for c in list(self.cands.values()):
            self._step(c, seen, dt)
            self._observe_track(c, seen)
        return self._decide(window, t_c, music, events)

    # ---- evidence
    def _log_background(self, q: np.ndarray, top_scores: np.ndarray, ref: float) -> float:
        """log of the mean likelihood of ``q`` over the whole library (relative to exp(kappa*ref))."""
        eng, k = self.engine, self.cfg.kappa
        m = eng.size
        top = np.exp(k * (top_scores.astype(np.float64) - ref)).sum()
        if len(eng.background_emb) and m > len(top_scores):
            rest = np.exp(k * (eng.background_emb @ q - ref).astype(np.float64)).mean() * (m - len(top_scores))
        else:
            rest = 0.0
        return float(math.log(max((top + rest) / m, 1e-300)))

    def _vote(self, scores: np.ndarray, ids: np.ndarray, ref: float, dt: float) -> None:
        cfg, eng = self.cfg, self.engine
        self.votes *= 0.5 ** (dt / cfg.vote_half_life_s)
        w = np.exp(cfg.kappa * (scores.astype(np.float64) - ref))
        owners = eng.owner[ids]
        per = np.bincount(owners, weights=w, minlength=len(eng.pieces))
        hit = per > 0
        # normalised per piece: a long score gets more hits by chance (sqrt: between none and full)
        norm = np.sqrt(eng.piece_sizes[hit] / max(float(eng.piece_sizes.mean()), 1.0))
        per[hit] /= norm
        self.votes += per / max(per.sum(), 1e-12)

    def _refresh_candidates(self) -> None:
        cfg = self.cfg
        order = np.argsort(-self.votes)[: cfg.candidates]
        want = [int(i) for i in order if self.votes[i] > 0]
        keep = set(want)
        if self.tracked is not None:
            keep.add(self.tracked)
        for i, c in self.cands.items():            # strong alignments stay even when their votes are weak
            if c.llr >= SEARCHING_NATS and len(keep) < cfg.candidates + 2:
                keep.add(i)
        for i in [i for i in self.cands if i not in keep]:
            del self.cands[i]
        added = 0
        for i in want:
            if i not in self.cands and added < MAX_NEW_CANDIDATES:
                self.cands[i] = self._warm_start(self.engine.pieces[i])
                added += 1

    def _warm_start(self, piece: "PieceModel") -> _Candidate:
        """A new candidate replayed over the remembered windows (all but the newest, which the
        caller steps next)."""
        from_start = self.windows_seen <= len(self.history)       # the stream began inside the history
        c = _Candidate(piece, self.cfg.nominal_px_s, self.cfg.start_prior if from_start else 0.0)
        hist = list(self.history)[:-1]
        if self.cfg.reset_on_change and self.change_t is not None:
            hist = [h for h in hist if h.t_centre > self.change_t]     # not the audio of the piece before
        for h in hist:
            self._step(c, h, h.steps * self.engine.stride_s)
            self._observe_track(c, h)
        return c

    def _jump_target(self, piece: "PieceModel") -> np.ndarray:
        t = self._sys_target.get(piece.index)
        if t is None:
            js = self.cfg.jump_to_system_start
            t = np.full(piece.n, (1.0 - js) / piece.n)
            t[piece.sys_start_states] += js / len(piece.sys_start_states)
            if len(self._sys_target) > 64:
                self._sys_target.clear()
            self._sys_target[piece.index] = t
        return t

    def _step(self, c: _Candidate, h: _Seen, dt: float) -> None:
        cfg = self.cfg
        p = c.piece
        if not h.music:                      # silence / noise: no evidence, the position waits
            c.llr *= 0.5 ** (dt / cfg.llr_half_life_s)
            # speech / applause after the music: let go sooner than after silence (a pianist's pause)
            hold = cfg.silence_hold_s if h.why == "silence" else cfg.nonmusic_hold_s
            if (hold is not None and h.stopped and self.fixed is None and self.last_music_tc is not None
                    and h.t_centre - self.last_music_tc > hold):
                # silence or noise longer than the hold: the music has stopped; like a window of no
                # evidence, it costs the allowance, so the piece is let go a few seconds later (a
                # steady held chord is not "stopped")
                c.llr = max(cfg.llr_min, c.llr - cfg.evidence_allowance_nats * max(1, h.steps))
            return
        delta = c.tempo_px_s * dt / p.hop_px
        sd = max(cfg.advance_sd_min_states, cfg.advance_sd * delta)
        steps = max(1, h.steps)
        back = 1.0 - (1.0 - cfg.back_p) ** steps
        jump = 1.0 - (1.0 - cfg.jump_p) ** steps
        kern, d_min = advance_kernel(delta, sd, back)
        pred = transition(c.alpha, kern, d_min, jump, self._jump_target(p))
        if self.engine.fusion is not None:
            s = fused_similarity(p.emb, h.q, self.engine.fusion, c.tempo_px_s / p.hop_px)
        else:
            s = p.emb @ h.q
        ref = h.ref if self.fixed is None else float(s.max())
        lik = np.exp(cfg.kappa * (s.astype(np.float64) - ref))
        lp = float(pred @ lik)
        if lp <= 0 or not math.isfinite(lp):
            c.alpha = np.full(p.n, 1.0 / p.n)
            return
        c.alpha = pred * lik / lp
        if self.fixed is None:
            # evidence = how much better the alignment predicts than a random position of the same
            # piece (sequential fit; immune to "hub" pieces that resemble everything), optionally
            # mixed with how much better than a random snippet of the library
            log_own = math.log(max(float(lik.mean()), 1e-300))
            b = cfg.library_null_weight
            inc = math.log(lp) - ((1.0 - b) * log_own + b * h.log_bg)
            c.last_inc = inc
            # CUSUM-like: only evidence beyond an allowance per window accumulates, so a piece that
            # resembles everything a little ("hub") never builds up a ratio, the right one quickly does
            inc -= cfg.evidence_allowance_nats * steps
            c.llr = min(cfg.llr_max, max(cfg.llr_min, c.llr * 0.5 ** (dt / cfg.llr_half_life_s) + inc))

    def _mode_x(self, c: _Candidate) -> tuple[float, int, float]:
        """(strip x at the window centre, mode state, posterior mass in the mode's system).
        Remembers the mode it read (``c.mode_k``) for the hysteresis: a second call on the same
        belief gives the same answer."""
        p = c.piece
        a = c.alpha
        k = int(np.argmax(a))
        h = self.cfg.mode_hysteresis
        if h > 1.0 and c.mode_k is not None and abs(k - c.mode_k) > HYSTERESIS_HALF_WIDTH:
            # two places fit (repetitive music): stay where we were unless the other one holds
            # ``mode_hysteresis`` times the belief (no flapping between look-alike bars)
            w = HYSTERESIS_HALF_WIDTH
            lo0, hi0 = max(0, c.mode_k - w), min(p.n, c.mode_k + w + 1)
            if a[max(0, k - w):k + w + 1].sum() < h * a[lo0:hi0].sum():
                k = lo0 + int(np.argmax(a[lo0:hi0]))
        c.mode_k = k
        lo, hi = max(0, k - MODE_HALF_WIDTH), min(p.n, k + MODE_HALF_WIDTH + 1)
        w = a[lo:hi]
        x = float((w * p.strip_x[lo:hi]).sum() / max(w.sum(), 1e-300))
        j = p.system_at(x)
        s0, s1 = np.searchsorted(p.strip_x, [p.seg_x0[j], p.seg_x1[j]])
        return x, k, float(a[s0:s1].sum())

    def _observe_track(self, c: _Candidate, h: _Seen) -> None:
        """Tempo: the slope of the position over the last tempo_window_s of music; a jump resets it."""
        if not h.music:
            return
        cfg = self.cfg
        x, _, _ = self._mode_x(c)
        c.jumped = False
        if c.last_x is not None:
            expect = c.last_x + c.tempo_px_s * (h.t_centre - c.last_t)
            if abs(x - expect) > cfg.jump_min_px:
                c.track.clear()
                c.jumped = True
        c.track.append((h.t_centre, x))
        while c.track and c.track[0][0] < h.t_centre - cfg.tempo_window_s:
            c.track.popleft()
        c.last_x, c.last_t = x, h.t_centre
        if len(c.track) >= MIN_TEMPO_POINTS and c.track[-1][0] - c.track[0][0] >= MIN_TEMPO_SPAN_S:
            arr = np.array(c.track)
            v = theil_sen_slope(arr[:, 0], arr[:, 1])
            if math.isfinite(v):
                lo, hi = cfg.tempo_min * cfg.nominal_px_s, cfg.tempo_max * cfg.nominal_px_s
                c.tempo_px_s = float(np.clip(v, lo, hi))

    # ---- decision
    def _posteriors(self) -> tuple[list[int], np.ndarray]:
        ids = list(self.cands)
        if self.fixed is not None:
            return ids, np.ones(len(ids))
        if not ids:
            return ids, np.zeros(0)
        z = np.array([self.cands[i].llr for i in ids] + [self.cfg.unknown_prior_nats])
        z = np.exp(z - z.max())
        z /= z.sum()
        return ids, z[:-1]

    def _decide(self, window, t_c: float, music: bool, events: list[Event]) -> Result:
        cfg, eng = self.cfg, self.engine
        t = float(window.t)
        ids, post = self._posteriors()
        pmap = dict(zip(ids, post.tolist()))
        prev = self.tracked
        if self.fixed is not None:
            self.tracked = self.fixed.index if self.music_seen else None
        else:
            best = ids[int(np.argmax(post))] if ids else None
            if self.tracked is not None and (self.tracked not in pmap or pmap[self.tracked] < cfg.p_lose):
                self.tracked = None
            if best is not None and pmap[best] >= cfg.p_track and best != self.tracked:
                if self.tracked is None or pmap[best] > pmap.get(self.tracked, 0.0):
                    self.tracked = best
        if prev is not None and prev != self.tracked:
            events.append(Event("lost", t, eng.pieces[prev].id))
            if cfg.reset_on_change:
                # a change of piece (radio): the other candidates' negative evidence was gathered
                # while the lost piece explained the audio; it says nothing about the new music
                self.change_t = t_c
                for i, c in self.cands.items():
                    if i != prev:
                        c.llr = max(c.llr, 0.0)
            self.announced_page = self.shown_page = None
            self.last_report_x = None
        if self.tracked is not None and prev != self.tracked:
            events.append(Event("identified", t, eng.pieces[self.tracked].id))

        cands = sorted(({"piece": eng.pieces[i].id, "score": round(float(pmap[i]), 4)} for i in ids),
                       key=lambda d: -d["score"])[:TOP_CANDIDATES]
        res = Result(t=t, state="unknown", candidates=cands, window=int(window.index), dropped_windows=self.dropped)
        if self.tracked is None:
            if self.fixed is None and music and any(self.cands[i].llr >= SEARCHING_NATS for i in ids):
                res.state = "searching"
            res.events = events
            return res

        c = self.cands[self.tracked]
        p = c.piece
        x_c, _, sys_mass = self._mode_x(c)
        lead = max(0.0, t - t_c) if music else 0.0
        x = float(np.clip(x_c + c.tempo_px_s * lead, 0.0, max(p.strip_width - 1, 0)))
        loc = p.locate(x)
        res.state = "tracking"
        res.piece, res.title = p.id, p.title
        res.page, res.system = loc["page"], loc["system"]
        res.x, res.y, res.bbox, res.page_size = loc["x"], loc["y"], loc["bbox"], loc["page_size"]
        res.progress = x / max(p.strip_width, 1)
        res.tempo = c.tempo_px_s / cfg.nominal_px_s
        res.confidence = float(np.clip(pmap.get(self.tracked, 1.0) * sys_mass, 0.0, 1.0))

        if c.jumped and prev == self.tracked and self.last_report_x is not None:
            frm = p.locate(self.last_report_x)
            events.append(Event("jump", t, p.id, loc["page"], loc["system"],
                                {"from_page": frm["page"], "from_system": frm["system"],
                                 "from_progress": round(self.last_report_x / max(p.strip_width, 1), 4),
                                 "to_progress": round(res.progress, 4)}))
        self.last_report_x = x
        page_key = (p.index, loc["page"])
        if self.shown_page is not None and self.shown_page != page_key and self.announced_page != page_key:
            events.append(Event("page_turn", t, p.id, loc["page"], 1, {"reason": "position"}))
            self.announced_page = page_key
        self.shown_page = page_key
        j = loc["sys"]
        if p.last_on_page[j] and loc["page"] < p.n_pages:
            remaining_s = (p.seg_x1[j] - x) / max(c.tempo_px_s, 1e-6)
            nxt = (p.index, loc["page"] + 1)
            if remaining_s <= cfg.page_turn_lead_s and self.announced_page != nxt:
                events.append(Event("page_turn", t, p.id, loc["page"] + 1, 1, {"lead_s": round(float(remaining_s), 2)}))
                self.announced_page = nxt
        res.events = events
        return res
