"""From an engraved score to a synthetic performance with exact note timing.

Verovio's timemap lists, in performed order (repeats and voltas unfolded),
which note ids start at which score time; its MIDI export holds the sounding
notes (ties merged).  We keep the timemap events that start a sounding note,
warp score time with a smooth random tempo curve (rubato), write our own MIDI
and let fluidsynth play it.  Because we write the MIDI, every onset time in
the audio is known exactly: that is the alignment.
"""

from __future__ import annotations

import base64
import io
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .scorefile import ScoreError

SAMPLE_RATE = 22050
_REND = re.compile(r"-rend\d+$")


def base_id(note_id: str) -> str:
    """Id of the engraved note a (possibly repeated) timemap id refers to."""
    return _REND.sub("", note_id)


@dataclass
class Note:
    onset: float  # seconds, score time
    offset: float
    pitch: int
    event: int  # index into the onset-event list


@dataclass
class ScoreTiming:
    """Onset events in performed order, score time (nominal tempo)."""

    event_times: np.ndarray  # (E,) seconds
    event_ids: list[list[str]]  # engraved (base) note ids starting at each event
    notes: list[Note]
    measure_times: np.ndarray  # seconds, measure starts in performed order

    def to_json(self) -> dict:
        return {
            "event_times": [round(float(t), 4) for t in self.event_times],
            "event_ids": self.event_ids,
            "measure_times": [round(float(t), 4) for t in self.measure_times],
            "notes": [[round(n.onset, 4), round(n.offset, 4), n.pitch, n.event] for n in self.notes],
        }

    @classmethod
    def from_json(cls, d: dict) -> "ScoreTiming":
        notes = [Note(a, b, int(p), int(e)) for a, b, p, e in d["notes"]]
        return cls(np.asarray(d["event_times"], float), d["event_ids"], notes, np.asarray(d["measure_times"], float))


def _midi_notes(midi_b64: str) -> list[tuple[float, float, int]]:
    """(onset s, offset s, pitch) of every sounding note in verovio's MIDI."""
    import mido

    mf = mido.MidiFile(file=io.BytesIO(base64.b64decode(midi_b64)))
    t = 0.0
    active: dict[tuple[int, int], list[float]] = {}
    out = []
    for msg in mf:
        t += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            active.setdefault((msg.channel, msg.note), []).append(t)
        elif msg.type in ("note_off", "note_on"):
            starts = active.get((msg.channel, msg.note))
            if starts:
                out.append((starts.pop(0), t, msg.note))
    return sorted(out)


def score_timing(tk) -> ScoreTiming:
    """Performed-order onset events of the score loaded in ``tk``."""
    timemap = tk.renderToTimemap({"includeMeasures": True, "includeRests": False})
    midi = _midi_notes(tk.renderToMIDI())
    if not midi:
        raise ScoreError("score has no sounding notes")
    # sounding onsets by (ms, pitch) to tell note starts from tie continuations
    sounding: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    for on, off, p in midi:
        sounding.setdefault((int(round(on * 1000)), p), []).append((on, off, p))
    event_times, event_ids, notes, measures = [], [], [], []
    for entry in timemap:
        ms = entry.get("tstamp", 0.0)
        if "measureOn" in entry:
            measures.append(ms / 1000.0)
        ids = []
        for nid in entry.get("on", []):
            pitch = tk.getMIDIValuesForElement(nid).get("pitch", -1)
            key = None
            for d in (0, -1, 1, -2, 2):
                if sounding.get((int(round(ms)) + d, pitch)):
                    key = (int(round(ms)) + d, pitch)
                    break
            if key is None:
                continue  # tie continuation or unpitched: no new onset
            on, off, p = sounding[key].pop(0)
            notes.append(Note(on, off, p, len(event_times)))
            ids.append(base_id(nid))
        if ids:
            event_times.append(ms / 1000.0)
            event_ids.append(ids)
    if not event_times:
        raise ScoreError("no onset in the score's timemap")
    return ScoreTiming(np.asarray(event_times), event_ids, notes, np.asarray(measures))


@dataclass
class PerformanceStyle:
    """How one synthetic pianist plays: instrument, tempo, rubato, pedal, room."""

    timbre: str
    program: int = 0
    tempo: float = 1.0  # global factor, > 1 is faster
    rubato: float = 0.0  # std of log tempo deviations
    rubato_period: float = 3.0  # seconds of score time between tempo knots
    velocity: int = 72
    velocity_spread: int = 12
    asynchrony_ms: float = 0.0
    pedal: bool = False
    reverb_rt60: float = 0.0  # seconds, 0 = dry
    reverb_wet: float = 0.0
    noise_snr_db: float = 0.0  # 0 = no noise
    seed: int = 0
    # ---- concert playing (``human=True``, see :func:`human_performance`); the defaults
    # leave the original generator untouched, bit for bit
    human: bool = False
    phrase_rubato: float = 0.0     # log-tempo amplitude of phrase arcs (push into the phrase, ritardando at its end)
    phrase_bars: int = 4           # typical phrase length in bars (each phrase draws 2..2x this)
    final_ritard: float = 0.0      # log-tempo drop over the last two bars
    melody_lead_ms: float = 0.0    # the top note of a chord sounds this much earlier
    hand_lag_ms: float = 0.0       # notes below middle C later (+) / earlier (-) than the right hand
    arpeggio_p: float = 0.0        # share of chords (3+ notes) rolled from the bottom
    arpeggio_ms: float = 0.0       # time between successive notes of a rolled chord
    ornament_p: float = 0.0        # share of long top notes given a grace note or a short trill
    wrong_p: float = 0.0           # share of notes played a semitone or tone off
    missed_p: float = 0.0          # share of inner chord notes not played
    pedal_style: str = "measure"   # pedal changes: "measure", "half" (half bars) or "bass" (new bass notes)
    pedal_depth: int = 100         # CC64 value while pressed
    dynamics_swell: float = 0.0    # velocity units of the crescendo/diminuendo over a phrase
    melody_accent: float = 0.0     # velocity added to the top note of a chord
    articulation: float = 1.0      # note length factor (legato > 1 > staccato)
    room_kind: str = "noise"       # "noise" (the original exponential-noise reverb) or "bands" (frequency-dependent + early echoes)
    eq_tilt_db: float = 0.0        # microphone colouring, dB per octave around 1 kHz

    @classmethod
    def concert(cls, rng: random.Random, timbre: str, tempo_median: float = 0.75, tempo_log_sd: float = 0.3,
                tempo_range: tuple[float, float] = (0.35, 1.7), room_p: float = 0.6, noise_p: float = 0.4) -> "PerformanceStyle":
        """A concert pianist: wide global tempo (log-normal around ``tempo_median``, measured on
        Vienna 4x22: real performances move through the strip at about half the corpus's
        plain-tempo speed), phrase rubato, chord asynchrony and rolled chords, ornaments,
        pedalling, dynamics and a few wrong/missed notes; a room most of the time."""
        import math

        lo, hi = tempo_range
        tempo = min(hi, max(lo, math.exp(rng.gauss(math.log(tempo_median), tempo_log_sd))))
        wet = rng.random() < room_p
        return cls(
            timbre=timbre,
            program=rng.choice((0, 0, 0, 1)),
            tempo=round(tempo, 3),
            rubato=round(rng.uniform(0.03, 0.15), 3),
            rubato_period=round(rng.uniform(1.5, 5.0), 2),
            velocity=rng.randint(40, 100),
            velocity_spread=rng.randint(6, 22),
            asynchrony_ms=round(rng.uniform(3.0, 25.0), 1),
            pedal=rng.random() < 0.8,
            reverb_rt60=round(rng.uniform(0.3, 2.2), 2) if wet else 0.0,
            reverb_wet=round(rng.uniform(0.1, 0.5), 2) if wet else 0.0,
            noise_snr_db=round(rng.uniform(18, 45), 1) if rng.random() < noise_p else 0.0,
            seed=rng.randrange(2**31),
            human=True,
            phrase_rubato=round(rng.uniform(0.0, 0.2), 3),
            phrase_bars=rng.choice((2, 4, 4, 8)),
            final_ritard=round(rng.uniform(0.0, 0.5), 3),
            melody_lead_ms=round(rng.uniform(0.0, 40.0), 1),
            hand_lag_ms=round(rng.uniform(-25.0, 25.0), 1),
            arpeggio_p=round(rng.choice((0.0, 0.0, rng.uniform(0.0, 0.15), rng.uniform(0.1, 0.6))), 3),
            arpeggio_ms=round(rng.uniform(15.0, 60.0), 1),
            ornament_p=round(rng.choice((0.0, rng.uniform(0.0, 0.1))), 3),
            wrong_p=round(rng.choice((0.0, rng.uniform(0.0, 0.01))), 4),
            missed_p=round(rng.choice((0.0, rng.uniform(0.0, 0.03))), 4),
            pedal_style=rng.choice(("measure", "half", "bass", "bass")),
            pedal_depth=rng.randint(70, 127),
            dynamics_swell=round(rng.uniform(0.0, 20.0), 1),
            melody_accent=round(rng.uniform(0.0, 15.0), 1),
            articulation=round(rng.uniform(0.75, 1.3), 3),
            room_kind="bands" if wet and rng.random() < 0.7 else "noise",
            eq_tilt_db=round(rng.gauss(0.0, 1.0), 2),
        )

    @classmethod
    def random(cls, rng: random.Random, timbre: str) -> "PerformanceStyle":
        wet = rng.random() < 0.5
        return cls(
            timbre=timbre,
            program=rng.choice((0, 0, 0, 1)),
            tempo=round(rng.uniform(0.9, 1.1), 3),
            rubato=round(rng.uniform(0.0, 0.12), 3),
            rubato_period=round(rng.uniform(1.5, 5.0), 2),
            velocity=rng.randint(55, 95),
            velocity_spread=rng.randint(4, 18),
            asynchrony_ms=round(rng.uniform(0.0, 15.0), 1),
            pedal=rng.random() < 0.5,
            reverb_rt60=round(rng.uniform(0.3, 1.5), 2) if wet else 0.0,
            reverb_wet=round(rng.uniform(0.1, 0.4), 2) if wet else 0.0,
            noise_snr_db=round(rng.uniform(20, 45), 1) if rng.random() < 0.4 else 0.0,
            seed=rng.randrange(2**31),
        )

    @classmethod
    def plain(cls, timbre: str, seed: int = 0) -> "PerformanceStyle":
        """Metronomic, dry, tempo 1.0: the paper's test condition."""
        return cls(timbre=timbre, seed=seed)


def tempo_warp(score_end: float, style: PerformanceStyle) -> tuple[np.ndarray, np.ndarray]:
    """Grid (score seconds) and performance seconds for a smooth random tempo curve.

    Local tempo = global tempo x exp(smooth noise); performance time is the
    integral of 1/tempo, so it is strictly increasing and onset order is kept.
    """
    rng = np.random.default_rng(style.seed)
    grid = np.arange(0.0, score_end + 1.0, 0.01)
    if style.rubato > 0:
        knots_t = np.arange(0.0, score_end + 2 * style.rubato_period, style.rubato_period)
        knots_v = rng.normal(0.0, style.rubato, size=len(knots_t))
        # occasional phrase-end ritardando
        knots_v -= np.where(rng.random(len(knots_t)) < 0.1, style.rubato * 2, 0.0)
        from scipy.interpolate import CubicSpline

        log_tempo = CubicSpline(knots_t, knots_v)(grid) if len(knots_t) > 3 else np.interp(grid, knots_t, knots_v)
    else:
        log_tempo = np.zeros_like(grid)
    local = style.tempo * np.exp(np.clip(log_tempo, -0.5, 0.5))
    perf = np.concatenate([[0.0], np.cumsum(0.01 / local[:-1])])
    return grid, perf


def performed_times(timing: ScoreTiming, style: PerformanceStyle) -> tuple[np.ndarray, list[tuple[float, float, int, int]]]:
    """Event onset times in the performance, and the notes to play (on, off, pitch, velocity)."""
    end = max(max(n.offset for n in timing.notes), float(timing.event_times[-1]))
    grid, perf = tempo_warp(end, style)
    warp = lambda t: np.interp(t, grid, perf)  # noqa: E731
    rng = np.random.default_rng(style.seed + 1)
    ev_perf = warp(timing.event_times)
    # a slow loudness curve plus per-note jitter
    dyn_t = np.arange(0, end + 8, 4.0)
    dyn = rng.normal(0, style.velocity_spread * 0.6, len(dyn_t))
    played = []
    for n in timing.notes:
        on = float(ev_perf[n.event]) + (rng.normal(0, style.asynchrony_ms / 1000) if style.asynchrony_ms else 0.0)
        off = float(warp(n.offset))
        on = max(on, 0.0)
        off = max(off, on + 0.03)
        vel = style.velocity + np.interp(n.onset, dyn_t, dyn) + rng.normal(0, style.velocity_spread * 0.4)
        played.append((on, off, n.pitch, int(np.clip(round(vel), 15, 127))))
    return ev_perf, played


def _phrase_log_tempo(grid: np.ndarray, measures: np.ndarray, style: PerformanceStyle, rng: np.random.Generator) -> np.ndarray:
    """Phrase arcs over score time: a push towards the middle of each phrase, a ritardando into its end."""
    out = np.zeros_like(grid)
    if len(measures) < 2:
        return out
    bounds = [0]
    while bounds[-1] < len(measures) - 1:
        bounds.append(min(len(measures) - 1, bounds[-1] + int(rng.integers(max(1, style.phrase_bars // 2), 2 * style.phrase_bars + 1))))
    for a, b in zip(bounds[:-1], bounds[1:]):
        t0, t1 = float(measures[a]), float(measures[b])
        if t1 <= t0:
            continue
        amp = style.phrase_rubato * rng.uniform(0.3, 1.3)
        sel = (grid >= t0) & (grid < t1)
        u = (grid[sel] - t0) / (t1 - t0)
        out[sel] += amp * (0.5 * np.sin(np.pi * u) - 1.5 * np.clip((u - 0.75) / 0.25, 0, 1) ** 2)
    return out


def human_tempo_warp(timing: ScoreTiming, style: PerformanceStyle, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Score-time grid and performance seconds: global tempo x smooth rubato x phrase arcs x final ritardando."""
    rng = np.random.default_rng(style.seed + 3)
    grid = np.arange(0.0, end + 1.0, 0.01)
    log_tempo = np.zeros_like(grid)
    if style.rubato > 0:
        from scipy.interpolate import CubicSpline

        knots_t = np.arange(0.0, end + 2 * style.rubato_period, style.rubato_period)
        knots_v = rng.normal(0.0, style.rubato, size=len(knots_t))
        log_tempo += CubicSpline(knots_t, knots_v)(grid) if len(knots_t) > 3 else np.interp(grid, knots_t, knots_v)
    if style.phrase_rubato > 0:
        log_tempo += _phrase_log_tempo(grid, np.asarray(timing.measure_times, float), style, rng)
    if style.final_ritard > 0 and len(timing.measure_times) >= 3:
        t0 = float(timing.measure_times[-3])
        log_tempo -= style.final_ritard * np.clip((grid - t0) / max(end - t0, 1e-3), 0, 1) ** 2
    local = style.tempo * np.exp(np.clip(log_tempo, -0.9, 0.6))
    perf = np.concatenate([[0.0], np.cumsum(0.01 / local[:-1])])
    return grid, perf


def human_performance(timing: ScoreTiming, style: PerformanceStyle) -> tuple[np.ndarray, list[tuple[float, float, int, int]], list[tuple[float, int]]]:
    """Concert playing: (event onset times, notes to play (on, off, pitch, velocity), pedal events (s, CC64)).

    An event's onset is the mean onset of its played notes (what the audio shows); extra
    ornament notes are played but belong to no event.  One tempo curve drives notes and
    pedal alike."""
    end = max(max(n.offset for n in timing.notes), float(timing.event_times[-1]))
    grid, perf = human_tempo_warp(timing, style, end)
    warp = lambda t: np.interp(t, grid, perf)  # noqa: E731
    rng = np.random.default_rng(style.seed + 1)
    ev_base = warp(np.asarray(timing.event_times, float))
    by_event: dict[int, list[Note]] = {}
    for n in timing.notes:
        by_event.setdefault(n.event, []).append(n)
    # loudness: a slow random curve plus phrase swells
    dyn_t = np.arange(0, end + 8, 4.0)
    dyn = rng.normal(0, style.velocity_spread * 0.6, len(dyn_t))
    meas = np.asarray(timing.measure_times, float)
    bars = max(1, style.phrase_bars)
    phrase_starts = meas[::bars] if len(meas) else np.array([0.0])
    phrase_starts = np.append(phrase_starts, end + 1e-3)
    played: list[tuple[float, float, int, int]] = []
    ornaments: list[tuple[float, float, int, int]] = []
    ev_on = ev_base.copy()
    for ev in sorted(by_event):
        notes = sorted(by_event[ev], key=lambda n: n.pitch)
        top = notes[-1].pitch
        rolled = len(notes) >= 3 and rng.random() < style.arpeggio_p
        step = style.arpeggio_ms / 1000 * rng.uniform(0.6, 1.4)
        ons = []
        for rank, n in enumerate(notes):
            if len(notes) >= 2 and n.pitch != top and rng.random() < style.missed_p:
                continue
            on = float(ev_base[ev]) + rng.normal(0, style.asynchrony_ms / 1000)
            if rolled:
                on += rank * step
            if len(notes) > 1 and n.pitch == top:
                on -= style.melody_lead_ms / 1000 * rng.uniform(0.5, 1.5)
            if n.pitch < 60:
                on += style.hand_lag_ms / 1000
            on = max(on, 0.0)
            dur = (float(warp(n.offset)) - float(ev_base[ev])) * style.articulation * rng.uniform(0.85, 1.15)
            off = on + max(dur, 0.04)
            k = int(np.searchsorted(phrase_starts, n.onset, side="right")) - 1
            k = min(max(k, 0), len(phrase_starts) - 2)
            u = (n.onset - phrase_starts[k]) / max(phrase_starts[k + 1] - phrase_starts[k], 1e-3)
            vel = (style.velocity + np.interp(n.onset, dyn_t, dyn) + style.dynamics_swell * (np.sin(np.pi * u) - 0.5)
                   + (style.melody_accent if n.pitch == top and len(notes) > 1 else 0.0) - (4.0 if n.pitch < 60 else 0.0)
                   + rng.normal(0, style.velocity_spread * 0.4))
            pitch = n.pitch
            if rng.random() < style.wrong_p:
                pitch = int(np.clip(pitch + rng.choice((-2, -1, 1, 2)), 21, 108))
            vel_i = int(np.clip(round(vel), 12, 127))
            played.append((on, off, pitch, vel_i))
            ons.append(on)
            if n.pitch == top and off - on > 0.35 and rng.random() < style.ornament_p:
                if rng.random() < 0.6:       # grace note from above or below
                    g = pitch + int(rng.choice((-1, 1, 2)))
                    t = max(0.0, on - rng.uniform(0.05, 0.09))
                    ornaments.append((t, t + 0.05, g, max(12, vel_i - 10)))
                else:                        # a short trill with the upper neighbour
                    rate = rng.uniform(12, 16)
                    t, upper, alt = on + 1 / rate, pitch + int(rng.choice((1, 2))), 0
                    stop = on + (off - on) * rng.uniform(0.4, 0.8)
                    while t < stop:
                        q = upper if alt % 2 == 0 else pitch
                        ornaments.append((t, t + 0.9 / rate, q, max(12, vel_i - 8)))
                        t += 1 / rate
                        alt += 1
        if ons:
            ev_on[ev] = float(np.mean(ons))
    pedal: list[tuple[float, int]] = []
    if style.pedal and len(timing.event_times):
        if style.pedal_style == "half" and len(meas) >= 2:
            mids = (meas[:-1] + meas[1:]) / 2
            changes = np.sort(np.concatenate([meas, mids]))
        elif style.pedal_style == "bass":
            changes, last_bass, last_t = [], None, -1e9
            for ev in sorted(by_event):
                bass = min(n.pitch for n in by_event[ev])
                t = float(timing.event_times[ev])
                if (last_bass is None or bass != last_bass) and t - last_t >= 0.3:
                    changes.append(t)
                    last_t = t
                last_bass = bass
            changes = np.asarray(changes)
        else:
            changes = meas
        for t in warp(np.asarray(changes, float)):
            lift = float(t) + rng.uniform(0.0, 0.06)
            pedal.append((lift, 0))
            pedal.append((lift + rng.uniform(0.08, 0.25), int(style.pedal_depth)))
        pedal.sort()
    notes = sorted(played + ornaments)
    return ev_on, notes, pedal


def write_midi(path: str | Path, notes: list[tuple[float, float, int, int]], program: int = 0, pedal_times: np.ndarray | None = None) -> None:
    """A one-track MIDI file at 120 bpm (1 beat = 0.5 s) so seconds map to ticks exactly."""
    import mido

    tpb = 960
    to_tick = lambda s: int(round(s * 2 * tpb))  # noqa: E731
    events = []
    for on, off, p, v in notes:
        events.append((to_tick(on), 1, mido.Message("note_on", note=p, velocity=v, channel=0)))
        events.append((to_tick(off), 0, mido.Message("note_off", note=p, velocity=0, channel=0)))
    if pedal_times is not None and len(pedal_times):
        for t in pedal_times:
            events.append((to_tick(max(t - 0.02, 0)), 0, mido.Message("control_change", control=64, value=0, channel=0)))
            events.append((to_tick(t + 0.08), 2, mido.Message("control_change", control=64, value=100, channel=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    mf = mido.MidiFile(ticks_per_beat=tpb)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    tr.append(mido.Message("program_change", program=program, channel=0, time=0))
    last = 0
    for tick, _, msg in events:
        tr.append(msg.copy(time=tick - last))
        last = tick
    tr.append(mido.Message("control_change", control=64, value=0, channel=0, time=tpb))
    mf.save(str(path))


def room(audio: np.ndarray, style: PerformanceStyle, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Synthetic room reverb (exponentially decaying noise) and background noise."""
    rng = np.random.default_rng(style.seed + 2)
    y = audio
    if style.room_kind == "bands" and style.reverb_rt60 > 0 and style.reverb_wet > 0:
        y = _band_reverb(audio, style, rng, sample_rate)
    elif style.reverb_rt60 > 0 and style.reverb_wet > 0:
        from scipy.signal import fftconvolve

        n = int(style.reverb_rt60 * sample_rate)
        t = np.arange(n) / sample_rate
        ir = rng.normal(0, 1, n) * np.exp(-6.9 * t / style.reverb_rt60)
        ir[: int(0.005 * sample_rate)] *= np.linspace(0, 1, int(0.005 * sample_rate))  # soft pre-delay
        ir /= np.sqrt(np.sum(ir**2)) + 1e-9
        wet = fftconvolve(audio, ir)[: len(audio)]
        y = (1 - style.reverb_wet) * audio + style.reverb_wet * wet
    if style.noise_snr_db > 0:
        p = np.mean(y**2) + 1e-12
        noise = rng.normal(0, 1, len(y))
        # pinkish: smooth white noise a little
        noise = np.convolve(noise, np.ones(4) / 4, mode="same")
        noise *= np.sqrt(p / (np.mean(noise**2) * 10 ** (style.noise_snr_db / 10)))
        y = y + noise
    if style.eq_tilt_db:
        from scipy.fft import next_fast_len

        m = int(next_fast_len(len(y) + sample_rate // 10, real=True))
        Y = np.fft.rfft(y, m)
        f = np.maximum(np.fft.rfftfreq(m, 1 / sample_rate), 20.0)
        y = np.fft.irfft(Y * 10 ** (style.eq_tilt_db * np.log2(f / 1000.0) / 20), m)[: len(y)]
    peak = np.max(np.abs(y)) + 1e-9
    return (y / peak * 0.9).astype(np.float32)


def _band_reverb(audio: np.ndarray, style: PerformanceStyle, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Training reverb: a few early echoes and a noise tail whose decay is faster in the treble
    (RT60 x1.2 below 500 Hz, x0.6 above 3 kHz).  Statistical, not the image-source rooms of the
    validation conditions."""
    from scipy.signal import fftconvolve

    rt = style.reverb_rt60
    n = int(1.3 * rt * sample_rate)
    t = np.arange(n) / sample_rate
    noise = rng.normal(0, 1, n)
    X = np.fft.rfft(noise)
    f = np.fft.rfftfreq(n, 1 / sample_rate)
    parts = []
    for lo, hi, scale in ((0, 500, 1.2), (500, 3000, 1.0), (3000, sample_rate / 2 + 1, 0.6)):
        band = np.fft.irfft(X * ((f >= lo) & (f < hi)), n)
        parts.append(band * np.exp(-6.9 * t / (rt * scale)))
    ir = np.sum(parts, axis=0)
    ir[: int(0.008 * sample_rate)] *= np.linspace(0, 1, int(0.008 * sample_rate))
    for _ in range(rng.integers(2, 7)):
        k = int(rng.uniform(0.004, 0.045) * sample_rate)
        ir[k] += rng.uniform(0.5, 2.0) * np.std(ir[: int(0.05 * sample_rate)] + 1e-9) * 8
    ir /= np.sqrt(np.sum(ir**2)) + 1e-9
    wet = fftconvolve(audio, ir)[: len(audio)]
    return (1 - style.reverb_wet) * audio + style.reverb_wet * wet


class FluidRenderer:
    """Plays note lists through libfluidsynth in-process, reproducibly.

    Every performance is played by a fresh synth, so nothing of an earlier piece
    (voices in release, the phase of fluidsynth's 64-sample block grid, controller
    and modulator state) leaks into the next one: the same notes give the same
    audio whatever was rendered before (a corpus is reproducible byte for byte).
    Loading a soundfont costs up to seconds (the .sf3 ones decode Ogg samples), so
    one idle "holder" synth per soundfont keeps it in libfluidsynth's process-wide
    sample cache; a fresh synth then loads it in ~0.1 s.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self._holders: dict[str, object] = {}

    @staticmethod
    def _fluidsynth():
        try:
            import fluidsynth
        except (ImportError, OSError) as exc:
            raise RuntimeError("pyfluidsynth/libfluidsynth missing: run scripts/setup.sh") from exc
        return fluidsynth

    def _new_synth(self, soundfont: str | Path):
        fluidsynth = self._fluidsynth()
        key = str(soundfont)
        if not Path(soundfont).is_file():
            raise RuntimeError(f"soundfont {soundfont} not found: run scripts/setup.sh")
        if key not in self._holders:
            holder = fluidsynth.Synth(samplerate=float(self.sample_rate))
            if holder.sfload(key) < 0:
                raise RuntimeError(f"fluidsynth could not load {soundfont}")
            self._holders[key] = holder
        syn = fluidsynth.Synth(samplerate=float(self.sample_rate), gain=0.6)
        syn.setting("synth.reverb.active", 0)
        syn.setting("synth.chorus.active", 0)
        sfid = syn.sfload(key)
        if sfid < 0:
            syn.delete()
            raise RuntimeError(f"fluidsynth could not load {soundfont}")
        return syn, sfid

    def render(self, notes: list[tuple[float, float, int, int]], soundfont: str | Path, program: int = 0,
               pedal_times: np.ndarray | None = None, tail: float = 1.5,
               pedal_events: list[tuple[float, int]] | None = None) -> np.ndarray:
        """Mono float32 audio of ``notes`` (on s, off s, pitch, velocity).

        Sustain pedal: ``pedal_times`` (the corpus's pedal changes: lifted 20 ms before
        each time, pressed again 80 ms after it) and/or ``pedal_events``, explicit
        ``(seconds, CC64 value)`` controller changes (a pianist's pedalling, e.g. from a
        performance MIDI file; values >= 64 hold the dampers off)."""
        syn, sfid = self._new_synth(soundfont)
        try:
            return self._play(syn, sfid, notes, program, pedal_times, tail, pedal_events)
        finally:
            syn.delete()

    def _play(self, syn, sfid: int, notes, program: int, pedal_times, tail: float, pedal_events=None) -> np.ndarray:
        syn.program_select(0, sfid, 0, program)
        events = []  # (sample, order, kind, a, b): offs before ons at equal times
        sr = self.sample_rate
        for on, off, p, v in notes:
            events.append((int(round(on * sr)), 2, "on", p, v))
            events.append((int(round(off * sr)), 1, "off", p, 0))
        if pedal_times is not None:
            for t in pedal_times:
                events.append((int(round(max(t - 0.02, 0) * sr)), 0, "cc", 64, 0))
                events.append((int(round((t + 0.08) * sr)), 3, "cc", 64, 100))
        for t, v in pedal_events or ():
            v = int(np.clip(v, 0, 127))
            events.append((int(round(max(float(t), 0.0) * sr)), 0 if v < 64 else 3, "cc", 64, v))
        events.sort()
        chunks, pos = [], 0
        for at, _, kind, a, b in events:
            if at > pos:
                chunks.append(syn.get_samples(at - pos))
                pos = at
            if kind == "on":
                syn.noteon(0, a, b)
            elif kind == "off":
                syn.noteoff(0, a)
            else:
                syn.cc(0, a, b)
        syn.cc(0, 64, 0)
        chunks.append(syn.get_samples(int(tail * sr)))
        x = np.concatenate(chunks).astype(np.float32) / 32768.0
        return x.reshape(-1, 2).mean(axis=1)


_RENDERER: FluidRenderer | None = None


def perform(timing: ScoreTiming, style: PerformanceStyle, soundfont: str | Path, renderer: FluidRenderer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize one performance. Returns (audio at 22050 Hz, event onset times in seconds)."""
    global _RENDERER
    if renderer is None:
        _RENDERER = _RENDERER or FluidRenderer()
        renderer = _RENDERER
    if style.human:
        ev_perf, played, pedal_events = human_performance(timing, style)
        audio = renderer.render(played, soundfont, style.program, pedal_events=pedal_events)
        return room(audio, style), ev_perf
    ev_perf, played = performed_times(timing, style)
    pedal = None
    if style.pedal and len(timing.measure_times):
        grid, perf = tempo_warp(float(timing.measure_times[-1]) + 1, style)
        pedal = np.interp(timing.measure_times, grid, perf)
    audio = renderer.render(played, soundfont, style.program, pedal)
    return room(audio, style), ev_perf


def style_json(style: PerformanceStyle) -> dict:
    return asdict(style)
