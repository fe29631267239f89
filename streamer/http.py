"""Plain HTTP on the websocket port: health, metrics, the browser client and the page images.

Routes (GET only; anything else is 404/405):

* ``/healthz``                 -- ``{"status": "ok", …}`` (no token needed: load balancers probe it)
* ``/metrics``                 -- Prometheus text (token needed when the server has one)
* ``/``, ``/index.html``, ``/app.js``, ``/worklet.js``, ``/style.css`` -- the browser client
* ``/api/pieces``              -- the library's pieces as JSON (token)
* ``/pages/<piece>/<page>.png`` -- a page image of the library, read only (token); ``piece`` must be
  a library id and ``page`` a number, matched on the raw path, so ``..``, ``%2e%2e`` or ``/``
  inside the id never reach the file system; the file served is the one the library names, and
  it must lie inside the library folder.
* ``/ws``                      -- the websocket endpoint (token, origin)

:class:`Gate` decides about tokens and origins for every request (websocket or not).
The router is sans-I/O apart from reading files, which the server does off the event loop.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import scorestream.clients as _clients

WEB_ROOT = Path(_clients.__file__).resolve().parent / "web"     # package data of scorestream.clients
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
WS_PATH = "/ws"
_PAGE_RE = re.compile(r"^/pages/([A-Za-z0-9][A-Za-z0-9._-]{0,127})/([0-9]{1,4})\.png$")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Reply:
    """An HTTP answer: ``body`` bytes, or ``file`` to be read and sent (by the server, off the loop)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    route: str = "other"

    @classmethod
    def text(cls, status: int, text: str, route: str = "other") -> "Reply":
        return cls(status, (text.rstrip("\n") + "\n").encode(), route=route)

    @classmethod
    def json(cls, status: int, obj, route: str = "other") -> "Reply":
        return cls(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json", route=route)

    def all_headers(self) -> dict[str, str]:
        h = dict(_SECURITY_HEADERS)
        h.update(self.headers)
        h["Content-Type"] = self.content_type
        return h


@dataclass(frozen=True, kw_only=True)
class Gate:
    """Shared-secret token and allowed browser origins.

    ``token``: when set, websocket, metrics, API and page requests need ``Authorization: Bearer T``
    or ``?token=T``. ``origins``: a request that carries an ``Origin`` header (browsers do) is
    allowed when it is the server's own origin (same host and port as the ``Host`` header), when
    it is in this list, or when the list holds ``*``. Requests without ``Origin`` (non-browser
    clients) are not restricted by it."""

    token: str | None = None
    origins: tuple[str, ...] = ()

    def token_ok(self, headers, query: dict[str, list[str]]) -> bool:
        if not self.token:
            return True
        want = self.token.encode()
        auth = headers.get("Authorization") or ""
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), want):
            return True
        return any(hmac.compare_digest(t.encode(), want) for t in query.get("token", []))

    def origin_ok(self, headers) -> bool:
        origin = headers.get("Origin")
        if origin is None:
            return True
        origin = origin.strip().rstrip("/")
        if "*" in self.origins or origin in {o.rstrip("/") for o in self.origins}:
            return True
        host = (headers.get("Host") or "").strip()
        return bool(host) and origin in (f"http://{host}", f"https://{host}")

    def check(self, headers, query: dict[str, list[str]], *, needs_token: bool) -> Reply | None:
        """None when the request may go on, else the refusal."""
        if not self.origin_ok(headers):
            return Reply.text(403, f"origin {headers.get('Origin')!r} is not allowed; start the server with "
                                   "--origins ORIGIN to allow it", route="refused")
        if needs_token and not self.token_ok(headers, query):
            r = Reply.text(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN",
                           route="refused")
            r.headers["WWW-Authenticate"] = 'Bearer realm="scorestream"'
            return r
        return None


class Router:
    """Maps a request to a :class:`Reply` (or None: go on with the websocket handshake)."""

    def __init__(self, *, gate: Gate, metrics_text: Callable[[], str], health: Callable[[], dict],
                 pieces: Callable[[], list[dict]] | None = None,
                 page_image: Callable[[str, int], Path] | None = None, library_root: Path | None = None,
                 web_root: Path = WEB_ROOT) -> None:
        self.gate = gate
        self.metrics_text = metrics_text
        self.health = health
        self.pieces = pieces
        self.page_image = page_image
        self.library_root = library_root.resolve() if library_root is not None else None
        self.web_root = web_root

    def route(self, method: str, target: str, headers, *, upgrade: bool) -> Reply | None:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if path == WS_PATH:
            refused = self.gate.check(headers, query, needs_token=True)
            if refused is not None:
                return refused
            if not upgrade:
                return Reply.text(426, "this is the websocket endpoint: connect with a websocket client (see docs/protocol.md)",
                                  route="ws")
            return None
        if upgrade:
            return Reply.text(404, f"no websocket endpoint at {path!r}; connect to {WS_PATH}", route="ws")
        if method not in ("GET", "HEAD"):
            return Reply.text(405, f"{method} is not supported; this server only answers GET", route="other")
        if path == "/healthz":
            return Reply.json(200, self.health(), route="healthz")
        if path in STATIC:
            refused = self.gate.check(headers, query, needs_token=False)
            if refused is not None:
                return refused
            name, ctype = STATIC[path]
            f = self.web_root / name
            if not f.is_file():
                return Reply.text(404, f"the browser client is not installed ({f} missing)", route="static")
            return Reply(200, content_type=ctype, file=f, route="static")
        refused = self.gate.check(headers, query, needs_token=True)
        if refused is not None:
            return refused
        if path == "/metrics":
            from .metrics import CONTENT_TYPE

            return Reply(200, self.metrics_text().encode(), CONTENT_TYPE, route="metrics")
        if path == "/api/pieces":
            return Reply.json(200, {"pieces": self.pieces() if self.pieces else []}, route="api")
        if path.startswith("/pages/"):
            return self._page(path)
        return Reply.text(404, f"no such page {path!r}", route="other")

    def _page(self, path: str) -> Reply:
        m = _PAGE_RE.match(path)
        if m is None or self.page_image is None:
            return Reply.text(404, "page images are at /pages/<piece id>/<page number>.png", route="pages")
        piece, page = m.group(1), int(m.group(2))
        try:
            f = Path(self.page_image(piece, page)).resolve()
        except (KeyError, ValueError, LookupError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            return Reply.text(404, f"no page {page} of piece {piece!r} ({msg})", route="pages")
        if self.library_root is not None and not f.is_relative_to(self.library_root):
            return Reply.text(404, "page image outside the library", route="pages")
        if not f.is_file():
            return Reply.text(404, f"no page {page} of piece {piece!r}", route="pages")
        r = Reply(200, content_type="image/png", file=f, route="pages")
        r.headers["Cache-Control"] = "private, max-age=3600"
        return r
