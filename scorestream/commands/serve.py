"""``scorestream serve``: the live streaming service (websocket + HTTP + MQTT), see docs/protocol.md."""

from __future__ import annotations

import argparse
import logging

from scorestream.core.errors import InputError


def make_engine(library: str, device: str = "cpu", config: str | None = None):
    """Open a library read-only and build the engine on ``device`` ("cpu" or "cuda") with the tracker
    settings of ``config`` (a TOML file on top of the shipped configs/tracker.toml)."""
    import onnxruntime as ort

    from scorestream.engine.engine import Engine, load_tracker_config
    from scorestream.engine.library import Library

    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError("--device cuda needs onnxruntime-gpu and an NVIDIA GPU: pip install 'scorestream[gpu]' "
                         "(it replaces the CPU onnxruntime), or use --device cpu")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    from scorestream.models.embedder import load_embedder

    lib = Library.open(library, check_model=False)
    embedder = load_embedder(lib.model_name, providers=providers, intra_op_threads=1)
    lib.check_model(embedder)
    return Engine(lib, embedder=embedder, tracker_config=load_tracker_config(config))


def _serve(a: argparse.Namespace) -> int:
    import asyncio

    from scorestream.streamer.protocol import Limits
    from scorestream.streamer.server import ServerConfig, run_server

    log = logging.getLogger("scorestream.serve")
    engine = make_engine(a.library, a.device, a.config)
    limits = Limits(max_message_bytes=a.max_message_bytes, max_bytes_per_second=a.max_bytes_per_second or None,
                    idle_timeout_s=a.idle_timeout or None, hello_timeout_s=a.hello_timeout or None,
                    max_streams=a.max_streams or None)
    origins = tuple(o for s in a.origins or [] for o in s.split(",") if o)
    cfg = ServerConfig(host=a.host, port=a.port, token=a.token, origins=origins, limits=limits, mqtt=a.mqtt,
                       mqtt_prefix=a.mqtt_prefix, workers=a.workers, max_batch=a.max_batch,
                       handshake_timeout_s=a.handshake_timeout or None, max_connections=a.max_connections or None,
                       max_lag_s=a.max_lag or None)
    if a.host not in ("127.0.0.1", "localhost", "::1") and not a.token:
        log.warning("serving on %s without --token: anyone who can reach this address can stream and read the library", a.host)

    def ready(server) -> None:
        host = "127.0.0.1" if a.host in ("0.0.0.0", "::") else a.host
        q = f"?token={a.token}" if a.token else ""
        print(f"scorestream: serving {len(engine.library.pieces()) if hasattr(engine, 'library') else '?'} pieces; "
              f"browser http://{host}:{server.port}/{q}  websocket ws://{host}:{server.port}/ws", flush=True)

    asyncio.run(run_server(engine, cfg, logger=log, on_ready=ready))
    return 0


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve live identification and score following over websockets (+ HTTP, MQTT)",
                       description="Serve a score library: clients stream PCM over a websocket (docs/protocol.md) and get "
                                   "piece, page, system and position live; the same port serves /healthz, /metrics, the "
                                   "browser client and the library's page images. SIGTERM/SIGINT stop it gracefully.")
    p.add_argument("--library", required=True, help="the score library folder (opened read-only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="also publish positions, pieces and events to this MQTT broker")
    p.add_argument("--mqtt-prefix", default="scorestream", help="MQTT topic prefix (default scorestream)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the embedding model runs (cuda needs the 'gpu' extra: onnxruntime-gpu)")
    p.add_argument("--config", default=None, metavar="TOML",
                   help="tracker settings on top of the shipped configs/tracker.toml (e.g. configs/tracker_scans.toml for a library "
                        "of scanned pages; the same file 'scorestream follow --config' reads)")
    p.add_argument("--token", help="shared secret clients must send (Authorization: Bearer T, or ?token=T)")
    p.add_argument("--origins", action="append", metavar="ORIGIN[,ORIGIN…]",
                   help="browser origins allowed besides the server's own (e.g. https://example.org); '*' allows any")
    p.add_argument("--workers", type=_positive_int, default=2, help="embedding threads (default 2)")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="windows per embedding batch (default 8; larger pays on a GPU)")
    p.add_argument("--max-streams", type=int, default=256, help="simultaneous streams (0: no limit; default 256)")
    p.add_argument("--max-message-bytes", type=_positive_int, default=1 << 20, help="largest websocket message (default 1 MiB)")
    p.add_argument("--max-bytes-per-second", type=float, default=8e6,
                   help="PCM bytes/s per connection before it is throttled (0: no limit; default 8e6)")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="seconds without data before a stream is closed (0: never)")
    p.add_argument("--hello-timeout", type=float, default=10.0, help="seconds a new connection has to send its hello (0: no limit)")
    p.add_argument("--handshake-timeout", type=float, default=10.0,
                   help="seconds a new TCP connection has to complete its HTTP request (0: no limit)")
    p.add_argument("--max-lag", type=float, default=1.0, metavar="S",
                   help="live streams: skip windows more than S seconds behind the stream's pace, so latency stays "
                        "bounded when the server is overloaded (default 1.0; 0: never skip)")
    p.add_argument("--max-connections", type=int, default=1024, help="open connections at once (0: no limit)")
    p.set_defaults(func=_serve)
