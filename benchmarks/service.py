"""Streaming-service benchmark: latency, capacity, memory per stream, windows/s, batch sizes.

    .venv/bin/python benchmarks/service.py [--quick] [--out benchmarks/results/service]

A real ``scorestream serve`` process on the test library (tests/music_fixtures.py: music21
scores engraved and synthesized here), loaded by real-time clients in this process: 44.1 kHz
mono int16 in 100 ms messages, each stream a synthesized performance.

* latency: 1 stream; for every result, the wall time from sending the 100 ms message that
  completed the result's window (found by running the server's front end on the same messages
  here) to receiving the result; p50/p99 (client side, so it includes the websocket, the front
  end, the batcher's wait, the model and the tracker; not the 100 ms of buffering in the message
  itself; the end-of-stream flush is left out);
* capacity: N simultaneous real-time streams for ``--seconds`` each; a level passes when the
  p99 latency is <= 250 ms and no window was dropped; reported: the largest N that passes, for
  the default (``scorestream serve`` as shipped: a library of the ``bl1_2s+bl2_4s_at`` ensemble,
  the audio embedded by its ``bl1_2s`` member, configs/tracker.toml ``audio_model``), for the whole
  ensemble embedding the audio (``audio_model = ""``: both networks per window), and for a library
  built with ``bl1_2s`` alone;
* memory per stream: the server's resident memory with N streams open minus with none, / N;
* windows/s and batch sizes: from the server's /metrics during the largest passing level.

Targets (issue 11): p99 <= 100 ms for one stream; >= 32 real-time streams on 2 cores with the
default model, >= 64 with bl1_2s; <= 5 MB per stream. The load generator shares the CPUs with
the server, and so do whatever other jobs the machine runs (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import re  # noqa: E402
import tempfile  # noqa: E402

import music_fixtures as mf  # noqa: E402
from conftest_server import ServerProcess  # noqa: E402

RATE = 44100
CHUNK_S = 0.1


def _load_audio(paths: list[Path]) -> list[np.ndarray]:
    import soundfile as sf

    from scorestream.core.audio import to_mono_float

    out = []
    for p in paths:
        x, sr = sf.read(str(p), dtype="float32")
        y = to_mono_float(x, sr, target_rate=RATE)
        out.append(np.clip(np.rint(y * 32767), -32768, 32767).astype("<i2"))
    return out


def _completing_chunk(chunks: list[bytes], audio_frames: int, stride_frames: int) -> dict[int, int]:
    """Window index -> index of the message that completes it (the server's front end, run here)."""
    from scorestream.streamer.frontend import StreamFrontEnd

    fe = StreamFrontEnd(RATE, 1, audio_frames=audio_frames, stride_frames=stride_frames)
    out = {}
    for i, c in enumerate(chunks):
        for w in fe.process(np.frombuffer(c, "<i2")):
            out[w.index] = i
    return out


async def _one_stream(url: str, audio: np.ndarray, seconds: float, offset: int, start_at: float, lat: list, info: dict) -> None:
    from websockets.asyncio.client import connect

    n = int(RATE * CHUNK_S)
    total = int(seconds / CHUNK_S)
    chunks = [np.take(audio, np.arange(offset + i * n, offset + (i + 1) * n), mode="wrap").tobytes() for i in range(total)]
    send_t: list[float] = []
    done_by: dict[int, int] = {}
    async with connect(url, open_timeout=120, max_size=None, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1, "sample_rate": RATE, "channels": 1, "format": "int16",
                                  "mode": "identify", "encoding": "json"}))
        ready = json.loads(await ws.recv())
        info.setdefault("ready", ready)
        done_by.update(_completing_chunk(chunks, int(round(ready["window_s"] * 20)), int(round(ready["hop_s"] * 20))))

        async def reader():
            async for m in ws:
                now = time.monotonic()
                d = json.loads(m)
                if d.get("type") == "result" and not d.get("final"):
                    r = d["result"]
                    k = done_by.get(r["window"])        # the message that completed the result's window
                    if k is not None and k < len(send_t):   # (not the end-of-stream flush)
                        lat.append(now - send_t[k])
                    info["dropped"] = max(info.get("dropped", 0), r.get("dropped_windows", 0))
                elif d.get("type") == "bye":
                    info["dropped"] = max(info.get("dropped", 0), d.get("dropped_windows", 0))
                elif d.get("type") == "error":
                    info["errors"] = info.get("errors", 0) + 1

        rt = asyncio.create_task(reader())
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        t0 = time.monotonic()
        for i, c in enumerate(chunks):
            wait = t0 + i * CHUNK_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            send_t.append(time.monotonic())
            await ws.send(c)
        await ws.send(json.dumps({"type": "bye"}))
        await asyncio.wait_for(rt, 300)


async def _level(srv: ServerProcess, audios: list[np.ndarray], n: int, seconds: float) -> dict:
    lat: list[float] = []
    infos = [dict() for _ in range(n)]
    m0 = srv.metrics()
    rss0 = srv.rss_mb()
    start = time.monotonic() + 1.0 + 0.02 * n
    # stagger the streams over one chunk so they do not all send at the same instant
    tasks = [asyncio.create_task(_one_stream(srv.url, audios[i % len(audios)], seconds, (i * 7919) % RATE * 10,
                                             start + (i % 10) * CHUNK_S / 10, lat, infos[i])) for i in range(n)]
    # memory with every stream open, in the middle of the run
    await asyncio.sleep(max(0.0, start - time.monotonic()) + seconds / 2)
    rss_mid = srv.rss_mb()
    m_mid = srv.metrics()
    t_mid = time.monotonic()
    await asyncio.gather(*tasks)
    m1 = srv.metrics()
    t1 = time.monotonic()
    a = np.asarray(lat) if lat else np.asarray([math.nan])
    batches = m1["scorestream_batches_total"] - m0["scorestream_batches_total"]
    wins = m1["scorestream_windows_total"] - m0["scorestream_windows_total"]
    dropped = int(m1["scorestream_dropped_windows_total"] - m0["scorestream_dropped_windows_total"])
    return {
        "streams": n, "seconds": seconds, "results": len(lat),
        "latency_p50_ms": round(float(np.percentile(a, 50)) * 1000, 1),
        "latency_p99_ms": round(float(np.percentile(a, 99)) * 1000, 1),
        "latency_max_ms": round(float(a.max()) * 1000, 1),
        "dropped_windows": dropped, "errors": sum(i.get("errors", 0) for i in infos),
        "windows_per_s": round((m1["scorestream_windows_total"] - m_mid["scorestream_windows_total"]) / max(1e-9, t1 - t_mid), 1),
        "mean_batch": round(wins / batches, 2) if batches else None,
        "rss_idle_mb": round(rss0, 1), "rss_open_mb": round(rss_mid, 1),
        "mb_per_stream": round((rss_mid - rss0) / n, 2),
        "passes": bool(dropped == 0 and float(np.percentile(a, 99)) <= 0.25 and not any(i.get("errors") for i in infos)),
        "hop_s": (infos[0].get("ready") or {}).get("hop_s"),
    }


def capacity(srv: ServerProcess, audios, ladder: list[int], seconds: float, log, retries: int = 1) -> tuple[list[dict], int]:
    """Levels up the ladder until one fails. Other jobs share this machine's 2 cores, so a failing
    level is run once more (``retries``) before the ladder stops; every attempt is recorded, with the
    load average of the minute it ran in."""
    levels, best = [], 0
    for n in ladder:
        for attempt in range(1 + retries):
            r = asyncio.run(_level(srv, audios, n, seconds))
            r["attempt"] = attempt + 1
            r["load_avg_1min"] = round(os.getloadavg()[0], 2)
            levels.append(r)
            log(f"  {n:3d} streams: p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms, dropped {r['dropped_windows']}, "
                f"{r['windows_per_s']} windows/s, batch {r['mean_batch']}, {r['mb_per_stream']} MB/stream, "
                f"load {r['load_avg_1min']} -> {'pass' if r['passes'] else 'FAIL'}")
            if r["passes"]:
                break
        if r["passes"]:
            best = n
        else:
            break
    return levels, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service"))
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per capacity level")
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="short levels (a smoke run)")
    ap.add_argument("--ladder", default="16,32,48,64,80,96,128", help="stream counts, default")
    ap.add_argument("--ladder-ensemble", default="8,16,24,32,48,64", help="stream counts, the ensemble embedding the audio")
    ap.add_argument("--ladder-small", default="16,32,48,64,80,96,128", help="stream counts, bl1_2s library")
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.latency_seconds = 8.0, 15.0
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    why = mf.available()
    if why:
        raise SystemExit(f"benchmark needs the fixtures: {why}")
    lib = mf.build_library(mf.TEST_SET, log=log)
    wavs = [mf.performance(s.id, lib=lib) for s in mf.TEST_SET]
    audios = _load_audio(wavs)
    res: dict = {"machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                             "load_avg_before": os.getloadavg()[0], "python": platform.python_version()},
                 "date": time.strftime("%Y-%m-%d %H:%M"), "chunk_s": CHUNK_S, "input": f"{RATE} Hz mono int16"}
    srv = ServerProcess(lib)
    try:
        log("latency: 1 real-time stream")
        r = asyncio.run(_level(srv, audios, 1, a.latency_seconds))
        res["latency_1_stream"] = r
        log(f"  p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms over {r['results']} results")
        log("capacity, default model")
        levels, best = capacity(srv, audios, [int(x) for x in a.ladder.split(",")], a.seconds, log)
        res["capacity_default"] = {"model": (levels[0].get("model") if levels else None), "max_streams": best, "levels": levels}
        status, _, body = srv.get("/healthz")
        res["capacity_default"]["model"] = json.loads(body).get("model")
        res["capacity_default"]["library_model"] = _library_model(lib)
    finally:
        srv.stop()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "tracker.toml"
        text = (ROOT / "configs" / "tracker.toml").read_text()
        cfg.write_text(re.sub(r'(?m)^audio_model\s*=\s*"[^"]*"', 'audio_model = ""', text))
        srv = ServerProcess(lib, "--config", str(cfg))
        try:
            status, _, body = srv.get("/healthz")
            name = json.loads(body).get("model")
            log(f"capacity, the whole ensemble embedding the audio ({name})")
            levels, best = capacity(srv, audios, [int(x) for x in a.ladder_ensemble.split(",")], a.seconds, log)
            res["capacity_ensemble"] = {"model": name, "library_model": _library_model(lib), "max_streams": best,
                                        "levels": levels}
        finally:
            srv.stop()
    lib_small = mf.build_library(mf.TEST_SET, log=log, model="bl1_2s")
    srv = ServerProcess(lib_small)
    try:
        log("capacity, bl1_2s")
        levels, best = capacity(srv, audios, [int(x) for x in a.ladder_small.split(",")], a.seconds, log)
        res["capacity_bl1_2s"] = {"model": "bl1_2s", "library_model": _library_model(lib_small), "max_streams": best,
                                  "levels": levels}
    finally:
        srv.stop()
    res["machine"]["load_avg_after"] = os.getloadavg()[0]
    cd, cs = res["capacity_default"], res["capacity_bl1_2s"]
    passing = [lv for lv in cd["levels"] + res["capacity_ensemble"]["levels"] + cs["levels"] if lv["passes"]]
    res["mb_per_stream"] = max((lv["mb_per_stream"] for lv in passing if lv["streams"] >= 8), default=None)
    lat = res["latency_1_stream"]
    res["targets"] = {
        "p99_1_stream_le_100ms": lat["latency_p99_ms"] <= 100,
        "default_ge_32_streams": cd["max_streams"] >= 32,
        "bl1_2s_ge_64_streams": cs["max_streams"] >= 64,
        "le_5mb_per_stream": res["mb_per_stream"] is not None and res["mb_per_stream"] <= 5,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def _library_model(lib: Path) -> str | None:
    import sqlite3

    con = sqlite3.connect(Path(lib) / "library.sqlite")
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None
    finally:
        con.close()


def markdown(res: dict) -> str:
    lat = res["latency_1_stream"]
    t = res["targets"]
    ok = lambda b: "met" if b else "**not met**"  # noqa: E731
    lines = [
        "# Streaming service benchmark", "",
        f"`benchmarks/service.py`, {res['date']}, {res['machine']['cpus']} CPUs ({res['machine']['cpu']}), load average "
        f"{res['machine']['load_avg_before']:.2f} before / {res['machine']['load_avg_after']:.2f} after (other jobs share "
        f"the machine; the load generator runs on the same 2 cores). Input {res['input']} in {int(res['chunk_s'] * 1000)} ms "
        "messages at real time; one `scorestream serve` process on the 5-piece test library.", "",
        "| measure | value | target |", "|---|---|---|",
        f"| latency, 1 stream: p50 / p99 | {lat['latency_p50_ms']} / {lat['latency_p99_ms']} ms | p99 <= 100 ms: {ok(t['p99_1_stream_le_100ms'])} |",
        f"| real-time streams, default model ({res['capacity_default']['model']}) | {res['capacity_default']['max_streams']} | >= 32: {ok(t['default_ge_32_streams'])} |",
        f"| real-time streams, the whole ensemble embedding the audio ({res['capacity_ensemble']['model']}) | {res['capacity_ensemble']['max_streams']} | (for comparison) |",
        f"| real-time streams, bl1_2s library | {res['capacity_bl1_2s']['max_streams']} | >= 64: {ok(t['bl1_2s_ge_64_streams'])} |",
        f"| memory per stream | {res['mb_per_stream']} MB | <= 5 MB: {ok(t['le_5mb_per_stream'])} |", "",
        "A capacity level passes when the p99 latency is <= 250 ms and no window was dropped; a level that fails is "
        "run once more before the ladder stops (other jobs share the 2 cores: the load average of each attempt is listed, "
        "and the load generator itself takes part of the CPU). The default is "
        "`scorestream serve` as shipped: the library holds the ensemble's sheet embeddings, the audio is embedded by "
        "the `bl1_2s` member alone (configs/tracker.toml `audio_model`), one window per 0.2 s per stream.", "",
    ]
    for key, what in (("capacity_default", "default"), ("capacity_ensemble", "ensemble audio"),
                      ("capacity_bl1_2s", "bl1_2s library")):
        c = res[key]
        lines += [f"## {what}: audio {c['model']}, library {c.get('library_model')}", "",
                  "| streams | attempt | p50 ms | p99 ms | dropped | windows/s | mean batch | MB/stream | load avg | pass |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for lv in c["levels"]:
            lines.append(f"| {lv['streams']} | {lv.get('attempt', 1)} | {lv['latency_p50_ms']} | {lv['latency_p99_ms']} | "
                         f"{lv['dropped_windows']} | {lv['windows_per_s']} | {lv['mean_batch']} | {lv['mb_per_stream']} | "
                         f"{lv.get('load_avg_1min', '')} | {'yes' if lv['passes'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
