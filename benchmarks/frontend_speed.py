"""Throughput of the audio front end (scorestream.core.frontend / scorestream.core.audio).

Measures, on 60 s of audio, single-threaded:

* offline ``spectrogram()`` of a whole 22050 Hz mono signal,
* ``StreamingSpectrogram.process()`` fed 1024-sample chunks (+ flush),
* the conversion path for a 44.1 kHz stereo int16 client: offline
  ``to_mono_float()`` and ``StreamingResampler`` with 2048-frame messages,
* the full live path (resampler -> streaming spectrogram).

Real-time factor = audio duration / wall time (higher is better; the target
for offline is >= 500x). Prints a Markdown table and writes
``benchmarks/results/frontend_speed.json``.

Usage: ``.venv/bin/python benchmarks/frontend_speed.py [--seconds 60] [--repeats 5]``
"""

from __future__ import annotations

import os

# One core: pin BLAS/OpenMP pools before numpy is imported, so the numbers
# describe what one streaming worker gets, not the whole machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scorestream.core.audio import StreamingResampler, to_mono_float  # noqa: E402
from scorestream.core.frontend import FrontEndConfig, StreamingSpectrogram, num_frames, spectrogram  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "frontend_speed.json"


def _test_signal(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A few decaying harmonic tones plus noise (content does not affect speed)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.01 * rng.standard_normal(n)
    for f0 in (220.0, 277.2, 329.6, 440.0):
        for h in range(1, 5):
            x += 0.05 / h * np.sin(2 * np.pi * f0 * h * t) * np.exp(-((t % 0.5) * 4))
    return (x / np.abs(x).max() * 0.8).astype(np.float32)


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) wall time over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=1024, help="streaming chunk size in samples at 22050 Hz")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    cfg = FrontEndConfig()
    sr = cfg.sample_rate
    x = _test_signal(args.seconds, sr)
    duration = len(x) / sr

    # 44.1 kHz stereo int16, as a websocket client would send it.
    x44 = _test_signal(args.seconds, 44100, seed=1)
    pcm44 = (np.stack([x44, 0.9 * x44], axis=1) * 32767).astype(np.int16)
    interleaved = pcm44.reshape(-1)
    msg_frames = 2048

    def offline() -> np.ndarray:
        return spectrogram(x, cfg)

    chunk_times: list[float] = []

    def streaming() -> np.ndarray:
        proc = StreamingSpectrogram(cfg)
        out = []
        chunk_times.clear()
        for i in range(0, len(x), args.chunk):
            t0 = time.perf_counter()
            out.append(proc.process(x[i : i + args.chunk]))
            chunk_times.append(time.perf_counter() - t0)
        out.append(proc.flush())
        return np.concatenate(out)

    def convert_offline() -> np.ndarray:
        return to_mono_float(pcm44, 44100)

    def convert_streaming() -> np.ndarray:
        rs = StreamingResampler(44100, channels=2)
        out = [rs.process(interleaved[i : i + 2 * msg_frames]) for i in range(0, len(interleaved), 2 * msg_frames)]
        out.append(rs.flush())
        return np.concatenate(out)

    def live_pipeline() -> int:
        rs = StreamingResampler(44100, channels=2)
        proc = StreamingSpectrogram(cfg)
        n = 0
        for i in range(0, len(interleaved), 2 * msg_frames):
            n += len(proc.process(rs.process(interleaved[i : i + 2 * msg_frames])))
        n += len(proc.process(rs.flush()))
        n += len(proc.flush())
        return n

    # Sanity: the benchmarked paths agree.
    ref = offline()
    assert ref.shape == (num_frames(len(x), cfg), cfg.n_bins)
    assert np.abs(streaming() - ref).max() <= 1e-5

    rows = []
    cases = [
        ("offline spectrogram (22.05 kHz mono)", offline, duration),
        (f"streaming spectrogram (chunk {args.chunk})", streaming, duration),
        ("to_mono_float (44.1 kHz stereo int16)", convert_offline, len(pcm44) / 44100),
        (f"StreamingResampler (44.1 kHz stereo, {msg_frames}-frame msgs)", convert_streaming, len(pcm44) / 44100),
        ("live: resampler + streaming spectrogram", live_pipeline, len(pcm44) / 44100),
    ]
    stream_chunk_us = None
    for name, fn, dur in cases:
        best, median = _time(fn, args.repeats)
        row = {
            "case": name,
            "audio_s": round(dur, 3),
            "best_s": best,
            "median_s": median,
            "realtime_x_best": dur / best,
            "realtime_x_median": dur / median,
        }
        if fn is streaming:
            streaming()  # fresh per-chunk timings
            ct = np.array(chunk_times) * 1e6
            stream_chunk_us = {"mean": float(ct.mean()), "p50": float(np.median(ct)), "p99": float(np.percentile(ct, 99)), "max": float(ct.max())}
            row["per_chunk_us"] = stream_chunk_us
        rows.append(row)

    print(f"\nFront end speed, {duration:.0f} s of audio, 1 thread, {platform.processor() or platform.machine()}\n")
    print("| case | wall (median) | real-time × (median) | real-time × (best) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['median_s'] * 1e3:.1f} ms | {r['realtime_x_median']:.0f}× | {r['realtime_x_best']:.0f}× |")
    if stream_chunk_us:
        print(
            f"\nStreaming per-chunk latency ({args.chunk} samples = {args.chunk / sr * 1e3:.1f} ms of audio): "
            f"mean {stream_chunk_us['mean']:.0f} µs, p50 {stream_chunk_us['p50']:.0f} µs, "
            f"p99 {stream_chunk_us['p99']:.0f} µs, max {stream_chunk_us['max']:.0f} µs"
        )

    result = {
        "benchmark": "frontend_speed",
        "config": {k: getattr(cfg, k) for k in ("sample_rate", "frame_size", "fps", "bands_per_octave", "fmin", "fmax")},
        "n_bins": cfg.n_bins,
        "audio_seconds": duration,
        "chunk": args.chunk,
        "repeats": args.repeats,
        "threads": 1,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
