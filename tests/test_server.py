"""The streaming service: protocol state machine, micro-batcher on the real model, MQTT on a real
mosquitto, and a real ``scorestream serve`` on a library engraved and synthesized at test time.

No mocks, no timing assertions (the machine is a busy 2-core box): only generous timeouts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest_server import Mosquitto, ServerProcess, free_port, mosquitto, performance, server, test_library  # noqa: F401
from scorestream.streamer import protocol as P
from scorestream.streamer.metrics import ServerMetrics, parse_exposition

# ============================================================================ protocol (sans-I/O)

HELLO = {"type": "hello", "version": 1, "sample_rate": 44100, "channels": 2, "format": "int16", "mode": "identify"}


def _proto(**lim) -> P.ServerProtocol:
    return P.ServerProtocol(limits=P.Limits(**lim), now=0.0)


def _started(**lim) -> P.ServerProtocol:
    p = _proto(**lim)
    acts = p.on_text(json.dumps(HELLO), 0.1)
    assert [type(a) for a in acts] == [P.Start]
    ready = p.started(stream="s1")
    assert ready[0].message["type"] == "ready"
    return p


def _error(actions) -> tuple[str, str]:
    sends = [a.message for a in actions if isinstance(a, P.Send)]
    assert sends and sends[0]["type"] == "error", actions
    assert isinstance(actions[-1], P.Close)
    return sends[0]["code"], sends[0]["message"]


@pytest.mark.parametrize("patch, code", [
    ({"sample_rate": 0}, P.BAD_HELLO), ({"sample_rate": 5}, P.BAD_HELLO), ({"sample_rate": 1e9}, P.BAD_HELLO),
    ({"sample_rate": "44100"}, P.BAD_HELLO), ({"sample_rate": float("nan")}, P.BAD_HELLO),
    ({"channels": 0}, P.BAD_HELLO), ({"channels": 99}, P.BAD_HELLO), ({"format": "int24"}, P.BAD_HELLO),
    ({"mode": "dance"}, P.BAD_HELLO), ({"mode": "follow"}, P.BAD_HELLO), ({"encoding": "xml"}, P.BAD_HELLO),
    ({"stream": "a/b"}, P.BAD_HELLO), ({"piece": "../etc"}, P.BAD_HELLO), ({"version": 7}, P.UNSUPPORTED_VERSION),
    ({"colour": "red"}, P.BAD_HELLO), ({"results": "some"}, P.BAD_HELLO), ({"realtime": "yes"}, P.BAD_HELLO),
])
def test_hello_validation(patch, code):
    p = _proto()
    hello = {**HELLO, **patch}
    got, msg = _error(p.on_text(json.dumps(hello, allow_nan=True), 0.0))
    assert got == code
    assert msg and p.closed
    assert p.on_text(json.dumps(HELLO), 0.1) == []          # nothing after the close


def test_messages_before_and_after_hello():
    assert _error(_proto().on_binary(b"\x00\x01garbage", 0.0))[0] == P.NO_HELLO
    assert _error(_proto().on_text("not json at all", 0.0))[0] == P.BAD_JSON
    assert _error(_proto().on_text("[1, 2]", 0.0))[0] == P.BAD_JSON
    assert _error(_proto().on_text('{"type": "bye"}', 0.0))[0] == P.NO_HELLO
    p = _started()
    assert _error(p.on_text('{"samples": [1, 2, 3]}', 1.0))[0] == P.BAD_MESSAGE        # JSON where PCM is expected
    p = _started()
    assert _error(p.on_text(json.dumps(HELLO), 1.0))[0] == P.BAD_MESSAGE
    p = _started()
    assert _error(p.on_binary(b"\x00\x01\x02", 1.0))[0] == P.BAD_AUDIO                   # 3 bytes: no whole stereo int16 frame
    p = _proto()
    p.on_text(json.dumps({**HELLO, "format": "float32", "channels": 1}), 0.0)
    p.started(stream="s")
    assert _error(p.on_binary(np.array([0.1, np.nan], "<f4").tobytes(), 1.0))[0] == P.BAD_AUDIO


def test_pcm_decoding_and_throttle():
    p = _started(max_bytes_per_second=1000.0)
    x = np.arange(-50, 50, dtype="<i2")
    acts = p.on_binary(x.tobytes(), 0.2)
    assert isinstance(acts[0], P.Audio) and np.array_equal(acts[0].pcm, x)
    acts = p.on_binary(b"\x00" * 4000, 0.3)          # over the 2 s burst: throttled, not refused
    assert any(isinstance(a, P.Throttle) and a.seconds > 0 for a in acts)
    assert isinstance(acts[0], P.Audio)


def test_timeouts():
    p = _proto(hello_timeout_s=2.0)
    assert p.deadline() == 2.0
    assert p.on_tick(1.0) == []
    assert _error(p.on_tick(2.5))[0] == P.HELLO_TIMEOUT
    p = _started(idle_timeout_s=3.0)
    p.on_binary(b"\x00" * 8, 1.0)
    assert p.on_tick(9.0) == []                # still processing that message (backpressure): not idle
    p.reading(10.0)                            # ready for more from here
    assert p.on_tick(12.9) == []
    assert _error(p.on_tick(13.1))[0] == P.IDLE_TIMEOUT


def _result(t, events=()):
    return {"t": t, "state": "tracking", "piece": "a", "events": list(events)}


def test_coalescing_keeps_rate_and_events():
    p = _started(results_per_second=10.0)
    sent, events = [], []
    for i in range(200):                       # 200 results within 2 s of wall time
        now = 1.0 + i * 0.01
        ev = [{"kind": "page_turn", "t": now}] if i % 37 == 0 else []
        for a in p.on_result(_result(now, ev), now) + p.on_tick(now):
            if isinstance(a, P.Send):
                (sent if a.message["type"] == "result" else events).append((now, a.message))
    times = [t for t, _ in sent]
    assert len(sent) <= 21 and np.all(np.diff(times) >= 0.1 - 1e-9)
    assert len(events) == 6                    # every event goes out at once ...
    carried = [e for _, m in sent for e in m["result"]["events"]]
    assert len(carried) >= 5                   # ... and the result messages still carry them
    p.on_text('{"type": "bye"}', 3.0)
    acts = p.on_end(_result(2.99), {"windows": 200}, 3.0)
    kinds = [a.message["type"] for a in acts if isinstance(a, P.Send)]
    assert kinds[-2:] == ["result", "bye"] and acts[-1].code == P.CLOSE_NORMAL
    final = [a.message for a in acts if isinstance(a, P.Send) and a.message["type"] == "result"][-1]
    assert final["final"] is True


def test_results_all_sends_one_message_per_result():
    p = _proto()
    assert [type(a) for a in p.on_text(json.dumps({**HELLO, "results": "all"}), 0.0)] == [P.Start]
    ready = p.started(stream="s1")[0].message
    assert ready["results"] == "all" and ready["results_per_second"] is None
    sent = []
    for i in range(200):                       # 200 results within 2 s of wall time: all of them go out
        now = 1.0 + i * 0.01
        sent += [a.message for a in p.on_result(_result(now), now) + p.on_tick(now) if isinstance(a, P.Send)]
    assert [m["result"]["t"] for m in sent] == [1.0 + i * 0.01 for i in range(200)]
    p.on_text('{"type": "bye"}', 3.0)
    acts = p.on_end(_result(2.99), {}, 3.0)
    final = [a.message for a in acts if isinstance(a, P.Send) and a.message["type"] == "result"]
    assert len(final) == 1 and final[0]["final"] is True
    assert P.hello_message(sample_rate=44100, results="all")["results"] == "all"
    assert "results" not in P.hello_message(sample_rate=44100)


def test_shutdown_is_a_bye_with_1001_and_idempotent():
    p = _started()
    assert [type(a) for a in p.shutdown()] == [P.EndStream]
    assert p.shutdown() == []
    acts = p.on_end(None, {}, 1.0)
    assert acts[-1].code == P.CLOSE_GOING_AWAY
    assert p.on_end(None, {}, 1.0) == [] and p.fail(P.INTERNAL, "x") == []


def test_encodings_roundtrip():
    import msgpack

    msg = {"type": "result", "result": {"t": np.float64(1.5), "window": np.int64(3), "x": None}}
    assert P.decode_server_message(P.encode(msg, "json")) == {"type": "result", "result": {"t": 1.5, "window": 3, "x": None}}
    assert msgpack.unpackb(P.encode(msg, "msgpack"))["result"]["window"] == 3


def test_metrics_exposition_format():
    m = ServerMetrics()
    m.windows_total.inc(5)
    m.errors_total.inc(1, "bad_json")
    for v in (0.004, 0.03, 0.2, 9.0):
        m.latency.observe(v)
    text = m.render()
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or len(line.rsplit(" ", 1)) == 2
    d = parse_exposition(text)
    assert d["scorestream_windows_total"] == 5
    assert d['scorestream_errors_total{code="bad_json"}'] == 1
    assert d['scorestream_result_latency_seconds_bucket{le="+Inf"}'] == 4
    assert d['scorestream_result_latency_seconds_bucket{le="0.05"}'] == 2
    assert d["scorestream_result_latency_seconds_count"] == 4


# ============================================================================ batcher on the real model

@pytest.fixture(scope="module")
def embedder():
    from scorestream.models.embedder import load_embedder

    return load_embedder("bl1_2s+bl2_4s_at", intra_op_threads=1)


def test_batcher_matches_direct_embedding_and_drops_when_full(embedder):
    from scorestream.streamer.batcher import Batcher

    rng = np.random.default_rng(0)
    specs = rng.random((24, embedder.spec_bins, embedder.audio_frames), np.float32)
    direct = embedder.embed_audio(specs)

    async def go():
        m = ServerMetrics()
        b = Batcher(embedder.embed_audio, max_batch=8, max_delay_s=0.02, workers=2, metrics=m).start()
        streams = [b.stream(max_queued=64) for _ in range(3)]
        futs = [streams[i % 3].submit([specs[i]])[0] for i in range(24)]
        out = await asyncio.wait_for(asyncio.gather(*futs), 300)
        assert np.allclose(np.stack(out), direct, atol=1e-4)
        assert m.windows_total.value() == 24 and m.batch_size.count >= 3
        # a full queue drops its oldest windows (live streams) ...
        small = b.stream(max_queued=2)
        with b._cv:                        # hold the workers off so the queue fills
            fs = small.submit(list(specs[:5]), on_full="drop")
        res = await asyncio.wait_for(asyncio.gather(*fs), 300)
        assert [r is None for r in res] == [True, True, True, False, False]
        assert small.dropped == 3 and m.dropped_windows_total.value() == 3
        # ... or refuses, so the caller waits for room (files: backpressure)
        with pytest.raises(OverflowError):
            with b._cv:
                small.submit(list(specs[:3]), on_full="error")
        await asyncio.wait_for(small.wait_room(2), 300)
        small.close()
        await b.close()
        await b.close()                    # idempotent

    asyncio.run(go())


# ============================================================================ MQTT publisher on a real broker

async def _collect(port: int, topic: str, n: int, timeout: float = 60.0, into: list | None = None) -> list:
    """Up to ``n`` messages ``(topic, payload, retain)`` on ``topic`` (appended to ``into`` as they come)."""
    import aiomqtt

    got = [] if into is None else into
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout):
                async for m in c.messages:
                    got.append((str(m.topic), json.loads(m.payload), m.retain))
                    if len(got) >= n:
                        break
        except TimeoutError:
            pass
    return got


async def _retained(port: int, topic: str, want=lambda payload: True, timeout: float = 60.0):
    """The message the broker *retains* on ``topic`` (delivered on subscribing, with the retain flag).

    A fresh subscription gets the stored message flagged retained; a publish that reaches the broker
    while we subscribe arrives live (flag clear) instead. Either way the broker stores it, so a live
    copy means: subscribe again. Returns ``(payload, retain)`` of the first retained message that
    satisfies ``want``, or the last one seen (``None`` when nothing came) after ``timeout``."""
    import aiomqtt

    last = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        async with aiomqtt.Client("127.0.0.1", port) as c:
            await c.subscribe(topic, qos=1)
            try:
                async with asyncio.timeout(min(5.0, max(0.1, end - time.monotonic()))):
                    async for m in c.messages:
                        last = (json.loads(m.payload), m.retain)
                        if m.retain and want(last[0]):
                            return last
                        break                    # a live copy, or an older retained state: subscribe again
            except TimeoutError:
                pass
        await asyncio.sleep(0.2)
    return last


def test_mqtt_publisher_survives_broker_restart(mosquitto):
    from scorestream.streamer.mqtt import MqttPublisher

    async def go():
        m = ServerMetrics()
        pub = MqttPublisher("127.0.0.1", mosquitto.port, backoff_s=(0.2, 1.0), max_queue=50, metrics=m).start()
        pub.piece("s1", {"state": "tracking", "piece": "a"})
        for i in range(3):
            pub.position("s1", {"t": i})
        end = time.monotonic() + 60
        while pub.published < 4 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        assert pub.published >= 4 and pub.connected
        got = await _retained(mosquitto.port, "scorestream/s1/piece")
        assert got is not None and got[0]["piece"] == "a" and got[1] is True     # retained
        mosquitto.kill()
        for i in range(200):                     # broker gone: never blocks, bounded queue, drops counted
            pub.position("s1", {"t": 100 + i})
            await asyncio.sleep(0.005)
        assert len(pub._q) <= 50 and m.mqtt_dropped_total.value() > 0
        mosquitto.start()                        # back (no persistence: retained state lost) ...
        end = time.monotonic() + 60
        while time.monotonic() < end and (not pub.connected or pub._q):
            await asyncio.sleep(0.1)
        assert pub.connected and not pub._q
        got = await _retained(mosquitto.port, "scorestream/s1/piece")      # ... and re-published, retained
        assert got is not None and got[0]["piece"] == "a" and got[1] is True
        await pub.close()
        await pub.close()

    asyncio.run(go())


# ============================================================================ the real server

def _stream(url, wav, **kw):
    from scorestream.clients.client import stream_file

    return asyncio.run(stream_file(str(wav), url, **kw))


def _tracked(results):
    return [r for r in results if r["state"] == "tracking"]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_session_identifies_and_positions_advance(server, performance, encoding):
    wav = performance("schumann-polonaise-1", seconds=45)
    msgs = []
    s = _stream(server.url, wav, encoding=encoding, on_message=msgs.append)
    assert s.ready["stream"] and s.bye is not None and s.close_code == 1000
    assert s.bye["dropped_windows"] == 0 and s.bye["windows"] > 100
    tr = _tracked(s.results)
    assert tr, s.results[-5:]
    assert tr[-1]["piece"] == "schumann-polonaise-1"
    assert s.results[-1]["piece"] == "schumann-polonaise-1"
    assert any(e["kind"] == "identified" and e["piece"] == "schumann-polonaise-1" for e in s.events)
    prog = [r["progress"] for r in tr if r["piece"] == "schumann-polonaise-1" and r["progress"] is not None]
    assert len(prog) >= 3 and prog[-1] > prog[0] + 0.2          # moves forward through the piece
    assert all(r["format"] == 1 for r in s.results)
    assert [m["type"] for m in msgs][0] == "ready" and [m["type"] for m in msgs][-1] == "bye"


def test_follow_mode_and_unknown_piece(server, performance):
    from scorestream.clients.client import ServerError

    wav = performance("bach-bwv66.6")
    s = _stream(server.url, wav, mode="follow", piece="bach-bwv66.6")
    assert _tracked(s.results) and all(r["piece"] in (None, "bach-bwv66.6") for r in s.results)
    with pytest.raises(ServerError) as ei:
        _stream(server.url, wav, mode="follow", piece="no-such-piece")
    assert ei.value.code == P.UNKNOWN_PIECE


def test_mqtt_position_and_retained_piece(test_library, performance, mosquitto):
    srv = ServerProcess(test_library, "--mqtt", mosquitto.address)
    try:
        wav = performance("mozart-k545-1")     # identified (a 4-part chorale is outside what the model reads)

        async def go():
            from scorestream.clients.client import stream_file

            live: list = []
            sub = asyncio.create_task(_collect(mosquitto.port, "scorestream/choir/#", 10_000, timeout=600, into=live))
            await asyncio.sleep(1.0)
            s = await stream_file(str(wav), srv.url, stream="choir", realtime=False)
            end = time.monotonic() + 60          # the live subscriber gets the stream's end too
            while time.monotonic() < end and not any(t.endswith("/piece") and d["state"] == "ended" for t, d, _ in live):
                await asyncio.sleep(0.2)
            sub.cancel()
            try:
                await sub
            except asyncio.CancelledError:
                pass
            late = await _retained(mosquitto.port, "scorestream/choir/piece", lambda d: d.get("state") == "ended")
            return s, live, late

        s, live, late = asyncio.run(go())
        positions = [d for t, d, _ in live if t == "scorestream/choir/position"]
        pieces = [d for t, d, _ in live if t == "scorestream/choir/piece"]
        assert positions and positions[-1]["t"] == s.results[-1]["t"] and "state" in positions[-1]   # QoS 0: the stream's results
        assert any(d["state"] == "tracking" and d["piece"] == "mozart-k545-1" for d in pieces), pieces
        assert pieces[-1]["state"] == "ended"
        assert late is not None and late[1] is True and late[0]["state"] == "ended", late     # retained
        assert late[0]["piece"] == "mozart-k545-1"
        m = srv.metrics()
        assert m["scorestream_mqtt_published_total"] >= len(s.results)
    finally:
        srv.stop()


def test_mqtt_subscriber_sees_positions_and_broker_death_mid_stream(test_library, performance, mosquitto):
    srv = ServerProcess(test_library, "--mqtt", mosquitto.address)
    try:
        wav = performance("schumann-polonaise-1", seconds=30)

        async def go():
            import aiomqtt

            from scorestream.clients.client import stream_file

            positions, pieces = [], []

            async def sub():
                async with aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
                    await c.subscribe("scorestream/live/#", qos=1)
                    async for m in c.messages:
                        (positions if str(m.topic).endswith("/position") else pieces).append(json.loads(m.payload))

            t = asyncio.create_task(sub())
            await asyncio.sleep(1.0)
            st = asyncio.create_task(stream_file(str(wav), srv.url, stream="live", realtime=True, chunk_s=0.1))
            end = time.monotonic() + 60
            while not positions and time.monotonic() < end:
                await asyncio.sleep(0.1)
            mosquitto.kill()                                   # the broker dies mid-stream
            try:
                await t
            except Exception:  # noqa: BLE001 - the subscriber loses its broker too
                pass
            s = await asyncio.wait_for(st, 300)                # ... the stream goes on to the end
            return positions, pieces, s

        positions, pieces, s = asyncio.run(go())
        assert positions and "t" in positions[0] and "state" in positions[0]
        assert s.bye is not None and s.close_code == 1000 and s.bye["audio_seconds"] >= 29
        assert srv.alive()
        status, _, body = srv.get("/healthz")
        assert status == 200 and json.loads(body)["mqtt"] == "reconnecting"
    finally:
        srv.stop()


def test_live_stream_skips_late_audio_and_goes_on(server, performance):
    """A live stream whose audio stalls and then arrives in a burst (a network hiccup) is more than
    --max-lag (1 s) behind its own pace: the late windows are skipped and counted, the stream goes on.
    A file (realtime false) sent the same way loses nothing."""
    import soundfile as sf

    from scorestream.clients.client import Client

    x, sr = sf.read(str(performance("schumann-polonaise-1", seconds=30)), dtype="float32")
    n = int(0.1 * sr)

    async def go(live: bool):
        c = Client(server.url, sample_rate=sr, live=live)
        await c.connect()
        t0 = time.monotonic()
        sent = 0.0
        for i in range(0, 9 * sr, n):
            if 3 * sr <= i < 6 * sr:
                pass                                # 3 s stall: this audio comes in a burst at 6 s
            elif live:
                wait = t0 + sent - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if i == 3 * sr:
                await asyncio.sleep(3.0)
            await c.send(x[i:i + n])
            sent += n / sr
        return await c.finish()

    live = asyncio.run(go(True))
    assert live.bye is not None and live.close_code == 1000
    assert live.bye["dropped_windows"] > 0 and live.results[-1]["dropped_windows"] == live.bye["dropped_windows"]
    assert live.bye["windows"] + live.bye["dropped_windows"] >= 40           # 9 s of audio, 0.2 s per window
    f = asyncio.run(go(False))
    assert f.bye is not None and f.bye["dropped_windows"] == 0


# ---------------------------------------------------------------------------- bad input

async def _raw(url, *sends, hello=None, timeout=60.0, **kw):
    """Connect, send frames, return every message received and the close code."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    got = []
    ws = await connect(url, open_timeout=60, max_size=None, **kw)
    try:
        if hello is not None:
            await ws.send(json.dumps(hello))
            got.append(P.decode_server_message(await asyncio.wait_for(ws.recv(), timeout)))
        for s in sends:
            await ws.send(s)
        async with asyncio.timeout(timeout):
            async for m in ws:
                got.append(P.decode_server_message(m))
    except ConnectionClosed:
        pass
    finally:
        try:
            await ws.close()
        except AttributeError:
            # CPython 3.11's selector transport: when the server closes while a large send is still
            # being written, the transport can finish closing itself and then be abort()ed by the
            # client's close (``'NoneType' object has no attribute 'call_soon'``). The connection is
            # closed either way; what the server sent is in ``got`` and the close code is known.
            pass
    return got, ws.close_code, ws.close_reason


def _warm(server, wav, n: int = 24) -> float:
    """Run enough streams at once that every batch is full, so the model's memory arena has grown to
    its size (bounded by max_batch x workers); then the resident size to come back to."""
    from scorestream.clients.client import stream_file

    async def go():
        await asyncio.gather(*[stream_file(str(wav), server.url, stream=f"warm{i}") for i in range(n)])

    asyncio.run(go())
    time.sleep(7)                    # the server trims its heap 5 s after streams end
    return server.rss_mb()


def _codes(got):
    return [m.get("code") for m in got if m.get("type") == "error"]


HELLO1 = {"type": "hello", "version": 1, "sample_rate": 22050, "channels": 1, "format": "int16", "mode": "identify"}


def test_bad_input_gets_clear_errors_and_server_stays_up(server, performance):
    url = server.url
    rss0 = _warm(server, performance("bach-bwv66.6"))

    async def go():
        got, code, _ = await _raw(url, os.urandom(3000))                          # garbage bytes first
        assert _codes(got) == [P.NO_HELLO] and code == P.CLOSE_PROTOCOL
        got, code, _ = await _raw(url, "\x00\xffnot json")
        assert _codes(got) == [P.BAD_JSON]
        got, _, _ = await _raw(url, json.dumps({"pcm": [1, 2, 3]}), hello=HELLO1)  # JSON where PCM is expected
        assert got[0]["type"] == "ready" and _codes(got) == [P.BAD_MESSAGE]
        got, _, _ = await _raw(url, b"\x01\x02\x03", hello=HELLO1)                 # half a sample
        assert _codes(got) == [P.BAD_AUDIO] and "whole number" in got[-1]["message"]
        for rate in (0, 3, 10_000_000, "fast"):                                     # wrong / absurd sample rates
            got, _, _ = await _raw(url, json.dumps({**HELLO1, "sample_rate": rate}))
            assert _codes(got) == [P.BAD_HELLO] and "sample_rate" in got[0]["message"]
        got, code, reason = await _raw(url, b"\x00" * (10 << 20), hello=HELLO1)     # a 10 MB frame
        assert code == 1009                                                         # "message too big", read no further
        # 1,000 malformed messages (each answered by an error and a clean close), 50 connections at a time
        bad = [os.urandom(17), "{", '{"type": "dance"}', "[]", json.dumps({**HELLO1, "channels": -1})]
        codes = []
        for k in range(0, 1000, 50):
            res = await asyncio.gather(*[_raw(url, bad[i % len(bad)]) for i in range(k, k + 50)])
            codes += [c for g, _, _ in res for c in _codes(g)]
        assert len(codes) == 1000 and set(codes) <= {P.NO_HELLO, P.BAD_JSON, P.BAD_HELLO}

    asyncio.run(go())
    assert server.alive()
    assert server.get("/healthz")[0] == 200
    m = server.metrics()
    assert m['scorestream_errors_total{code="bad_json"}'] >= 200
    time.sleep(7)
    assert server.rss_mb() < rss0 + 60, (rss0, server.rss_mb())


def test_vanishing_clients_slowloris_and_100_connections(server, performance):
    url = server.url
    wav = performance("bach-bwv66.6")
    import soundfile as sf

    audio, sr = sf.read(str(wav), dtype="int16")
    rss0 = _warm(server, wav)

    async def vanish():
        from websockets.asyncio.client import connect

        ws = await connect(url, open_timeout=60)
        await ws.send(json.dumps({**HELLO1, "sample_rate": sr}))
        await ws.recv()
        for i in range(0, 5 * sr, 2205):
            await ws.send(audio[i:i + 2205].tobytes())
        ws.transport.abort()                       # gone mid-stream, no close frame

    async def slowloris_tcp():
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")      # never finishes the request
        data = await asyncio.wait_for(r.read(), 60)      # the server hangs up (handshake timeout)
        w.close()
        return data

    async def one(i):
        from scorestream.clients.client import stream_chunks

        return await stream_chunks(url, [audio[j:j + 4410] for j in range(0, 2 * sr, 4410)], sample_rate=sr,
                                   format="int16", stream=f"crowd{i}")

    async def go():
        for _ in range(5):
            await vanish()
        got, code, _ = await _raw(url, timeout=60)                     # websocket, then nothing: hello timeout
        assert _codes(got) == [P.HELLO_TIMEOUT]
        got, code, _ = await _raw(url, hello=HELLO1, timeout=60)       # hello, then nothing: idle timeout
        assert _codes(got) == [P.IDLE_TIMEOUT]
        await asyncio.gather(*[slowloris_tcp() for _ in range(10)])
        res = await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(100)]), 600)   # 100 at once
        assert all(s.bye is not None and s.close_code == 1000 for s in res)

    asyncio.run(go())
    assert server.alive()
    end = time.monotonic() + 60
    while time.monotonic() < end and server.metrics()["scorestream_streams"] > 0:
        time.sleep(0.5)
    m = server.metrics()
    assert m["scorestream_streams"] == 0 and m["scorestream_queued_windows"] == 0
    time.sleep(7)
    assert server.rss_mb() < rss0 + 60, (rss0, server.rss_mb())


# ---------------------------------------------------------------------------- HTTP, security

def test_http_routes_and_page_traversal(server):
    status, h, body = server.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, h, body = server.get("/metrics")
    assert status == 200 and h["content-type"].startswith("text/plain; version=0.0.4")
    names = {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")}
    for n in ("scorestream_streams", "scorestream_windows_total", "scorestream_batch_size", "scorestream_queue_delay_seconds",
              "scorestream_dropped_windows_total", "scorestream_result_latency_seconds"):
        assert n in names
    status, h, body = server.get("/")
    assert status == 200 and b"scorestream" in body and h["content-type"].startswith("text/html")
    for f in ("/app.js", "/worklet.js", "/style.css"):
        assert server.get(f)[0] == 200
    pieces = json.loads(server.get("/api/pieces")[2])["pieces"]
    assert {p["id"] for p in pieces} >= {"bach-bwv66.6", "mozart-k545-1"}
    status, h, body = server.get("/pages/mozart-k545-1/2.png")
    assert status == 200 and h["content-type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.get("/pages/mozart-k545-1/99.png")[0] == 404
    for bad in ("/pages/../library.sqlite", "/pages/..%2f..%2flibrary.sqlite/1.png", "/pages/%2e%2e/1.png",
                "/pages/mozart-k545-1/../../library.sqlite", "/pages/mozart-k545-1/1.png/../../../etc/passwd",
                "/pages/.hidden/1.png", "/pages//etc/passwd/1.png", "/../library.sqlite", "/pages/a%00b/1.png"):
        status, _, body = server.get(bad)
        assert status in (400, 404), (bad, status)
        assert b"SQLite" not in body and b"root:" not in body
    assert server.get("/nope")[0] == 404


def test_token_and_origin(test_library, performance):
    srv = ServerProcess(test_library, "--origins", "https://allowed.example", token="s3cret")
    try:
        assert srv.get("/healthz")[0] == 200                      # load balancers need no token
        assert srv.get("/metrics")[0] == 401
        assert srv.get("/metrics?token=wrong")[0] == 401
        assert srv.get("/metrics?token=s3cret")[0] == 200
        assert srv.get("/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
        assert srv.get("/pages/bach-bwv66.6/1.png")[0] == 401
        assert srv.get("/pages/bach-bwv66.6/1.png?token=s3cret")[0] == 200
        assert srv.get("/", {"Origin": "https://evil.example"})[0] == 403
        assert srv.get("/", {"Origin": f"http://127.0.0.1:{srv.port}", "Host": f"127.0.0.1:{srv.port}"})[0] == 200

        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        async def status_of(url, **kw):
            try:
                async with connect(url, open_timeout=60, **kw) as ws:
                    await ws.send(json.dumps(HELLO1))
                    return json.loads(await ws.recv())["type"]
            except InvalidStatus as exc:
                return exc.response.status_code

        async def go():
            base = f"ws://127.0.0.1:{srv.port}/ws"
            assert await status_of(base) == 401
            assert await status_of(base + "?token=nope") == 401
            assert await status_of(base, additional_headers={"Authorization": "Bearer nope"}) == 401
            assert await status_of(base + "?token=s3cret") == "ready"
            assert await status_of(base, additional_headers={"Authorization": "Bearer s3cret"}) == "ready"
            assert await status_of(base + "?token=s3cret", origin="https://evil.example") == 403
            assert await status_of(base + "?token=s3cret", origin="https://allowed.example") == "ready"

        asyncio.run(go())
    finally:
        srv.stop()


def test_binds_loopback_by_default(server):
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout if shutil_which("ss") else ""
    if out:
        lines = [line for line in out.splitlines() if f":{server.port} " in line]
        assert lines and all("127.0.0.1:" in line for line in lines), lines


def shutil_which(x):
    import shutil

    return shutil.which(x)


# ---------------------------------------------------------------------------- shutdown

def test_sigterm_drains_every_stream(test_library, performance):
    srv = ServerProcess(test_library)
    wav = performance("schumann-polonaise-1", seconds=30)
    try:
        async def go():
            from scorestream.clients.client import stream_file

            tasks = [asyncio.create_task(stream_file(str(wav), srv.url, realtime=True, stream=f"d{i}")) for i in range(3)]
            end = time.monotonic() + 120
            while time.monotonic() < end:
                await asyncio.sleep(0.5)
                if srv.metrics()["scorestream_results_total"] >= 15:
                    break
            srv.proc.send_signal(signal.SIGTERM)
            return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 300)

        res = asyncio.run(go())
        for s in res:
            assert not isinstance(s, BaseException), s
            assert s.close_code == 1001 and s.bye is not None and s.bye["reason"] == "server shutting down"
            assert s.results and s.results[-1] is not None
        assert srv.proc.wait(120) == 0
        assert "server stopped" in srv.output()
    finally:
        srv.stop()


# ---------------------------------------------------------------------------- stream == follow

def test_stream_through_server_equals_follow_offline(server, performance, tmp_path):
    """The issue's check: for the same file, ``stream`` through the server and ``follow`` offline give
    the same results (same state and piece, positions within one snippet hop along the piece's strip)
    when no window is dropped. ``stream --jsonl`` asks the server for every result (hello
    ``results: all``), so both files hold one line per audio window, at the same times."""
    wav = performance("mozart-k545-1")
    lib = Path(server.proc.args[server.proc.args.index("--library") + 1])
    exe = [sys.executable, "-m", "scorestream.cli"]
    a, b = tmp_path / "stream.jsonl", tmp_path / "follow.jsonl"
    r = subprocess.run(exe + ["stream", str(wav), "--server", server.url, "--jsonl", str(a), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(exe + ["follow", str(wav), "--library", str(lib), "--jsonl", str(b), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    live = [json.loads(line) for line in a.read_text().splitlines()]
    off = {d["window"]: d for d in map(json.loads, b.read_text().splitlines())}
    assert live and off and all(d["dropped_windows"] == 0 for d in live)
    assert [d["window"] for d in live] == sorted(off), "stream --jsonl must hold one result per window, like follow"
    assert live[-1]["piece"] == off[max(off)]["piece"] == "mozart-k545-1"
    hop, width = _hop_px(lib), _strip_width(lib, "mozart-k545-1")
    compared = 0
    for d in live:
        o = off[d["window"]]
        assert d["t"] == o["t"]
        assert (d["state"], d["piece"]) == (o["state"], o["piece"]), (d, o)
        if d["state"] == "tracking":
            # progress is rounded to 1e-4 of the strip
            assert abs(d["progress"] - o["progress"]) * width <= hop + 1e-4 * width, (d, o)
            compared += 1
    assert compared >= 0.5 * len(live)


def _hop_px(lib: Path) -> float:
    import sqlite3

    con = sqlite3.connect(lib / "library.sqlite")
    try:
        return float(con.execute("SELECT value FROM meta WHERE key = 'hop_px'").fetchone()[0])
    finally:
        con.close()


def _strip_width(lib: Path, piece: str) -> int:
    import sqlite3

    con = sqlite3.connect(lib / "library.sqlite")
    try:
        return int(con.execute("SELECT strip_width FROM pieces WHERE id = ?", (piece,)).fetchone()[0])
    finally:
        con.close()
