"""The demo's web app (ASGI, Starlette): the page, its state, a server-sent-event stream of
progress, and the few POSTs that steer training.

Security, for a server that trains on the user's machine:
* state-changing requests are POSTs with a JSON body (at most MAX_BODY bytes), and their
  Origin (or Referer) must be this server (same origin as the Host header), so another
  site open in the browser cannot steer it;
* the Host header must name this server (127.0.0.1, localhost, [::1] or --host), which
  defeats DNS rebinding;
* bad input answers 400 with one line in JSON ({"error": ...}); no traceback reaches a
  response; no path from a request is ever opened (the page's three files are read from
  the package when the app is made).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import traceback
from collections.abc import AsyncIterator
from importlib import resources
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import CnnkitError
from .check import MAX_SPEC_CHARS, check_model
from .session import DemoError, DemoSession

MAX_BODY = 16 * 1024          # bytes of a POST body: a spec of MAX_SPEC_CHARS fits with room
TICK = 0.25                   # seconds between progress events on a stream
HEARTBEAT = 10.0              # seconds between keep-alive comments on an idle stream
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
          "/static/demo.css": ("demo.css", "text/css; charset=utf-8")}
HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                      "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
           "Cache-Control": "no-store"}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


class Guard:
    """ASGI middleware: the Host check on every request, the same-origin and size checks on
    every request that is not a GET or HEAD."""

    def __init__(self, app: ASGIApp, allowed_hosts: set[str] | None, max_body: int = MAX_BODY) -> None:
        self.app, self.allowed_hosts, self.max_body = app, allowed_hosts, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal: Response | None = None
        if self.allowed_hosts is not None and host.lower() not in self.allowed_hosts:
            refusal = _error(f"unexpected Host header {host!r}; open the address cnnkit demo printed", 400)
        elif scope["method"] not in ("GET", "HEAD"):
            refusal = self._check_post(headers, host)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def _check_post(self, headers: dict[str, str], host: str) -> Response | None:
        origin = headers.get("origin")
        if origin is None and "referer" in headers:  # some clients send only a Referer
            ref = headers["referer"]
            origin = ref[:ref.find("/", ref.find("//") + 2)] if ref.count("/") >= 3 else ref
        if origin is None:
            return _error("a POST needs an Origin header naming this server (send it from the demo page)", 403)
        if origin.lower() not in (f"http://{host.lower()}", f"https://{host.lower()}"):
            return _error(f"cross-origin request refused: Origin {origin!r} is not this server "
                          f"(http://{host})", 403)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return _error(f"request body too large: at most {self.max_body} bytes", 413)
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error("a POST body must be JSON (Content-Type: application/json)", 415)
        return None


async def read_json(request: Request, limit: int = MAX_BODY) -> dict:
    """The request's JSON object, reading at most limit bytes (chunked bodies too)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise DemoError(f"request body too large: at most {limit} bytes", 413)
    try:
        data = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DemoError(f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DemoError(f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _field(data: dict, name: str) -> Any:
    if name not in data:
        raise DemoError(f"missing field {name!r} in the JSON body")
    return data[name]


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n".encode()


def create_app(session: DemoSession, *, host: str = "127.0.0.1", port: int | None = None,
               max_body: int = MAX_BODY) -> Starlette:
    """The Starlette app serving session. host/port decide which Host headers are accepted:
    a loopback host accepts the loopback names; a wildcard host ('0.0.0.0', '::') accepts any."""
    pages = {path: (resources.files(__package__).joinpath("static", name).read_bytes(), kind)
             for path, (name, kind) in STATIC.items()}
    allowed = _allowed_hosts(host, port)
    checking = asyncio.Lock()

    async def page(request: Request) -> Response:
        body, kind = pages[request.url.path]
        return Response(body, media_type=kind, headers=HEADERS)

    async def state(request: Request) -> Response:
        return JSONResponse(session.state(), headers=HEADERS)

    async def events(request: Request) -> Response:
        return StreamingResponse(_stream(session, request), media_type="text/event-stream",
                                 headers={**HEADERS, "X-Accel-Buffering": "no"})

    async def pause(request: Request) -> Response:
        await read_json(request, max_body)
        session.pause()
        return JSONResponse({"paused": True}, headers=HEADERS)

    async def resume(request: Request) -> Response:
        await read_json(request, max_body)
        session.resume()
        return JSONResponse({"paused": False}, headers=HEADERS)

    async def lr(request: Request) -> Response:
        value = _field(await read_json(request, max_body), "lr")
        return JSONResponse({"lr": session.set_lr(value)}, headers=HEADERS)

    async def select(request: Request) -> Response:
        value = _field(await read_json(request, max_body), "index")
        return JSONResponse({"index": session.select(value)}, headers=HEADERS)

    async def model(request: Request) -> Response:
        spec = _field(await read_json(request, max_body), "spec")
        if not isinstance(spec, str):
            raise DemoError(f"spec must be a string, got {type(spec).__name__}")
        if len(spec) > MAX_SPEC_CHARS:
            raise DemoError(f"the spec is {len(spec)} characters; the demo takes at most {MAX_SPEC_CHARS}")
        if checking.locked():
            raise DemoError("another model is being checked; try again in a moment", 409)
        async with checking:
            ds, cfg = session.dataset, session.base_config
            info = await run_in_threadpool(check_model, spec, ds.input_shape, len(ds.classes), cfg.batch_size)
        run = session.new_model(spec)
        return JSONResponse({"run": run, **info}, headers=HEADERS)

    async def refused(request: Request, exc: Exception) -> Response:
        return _error(str(exc), getattr(exc, "status", 400))

    async def crashed(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)  # the details go to the server's log only
        return _error("internal error; the server's log has the details", 500)

    routes = [Route(path, page, methods=["GET"]) for path in STATIC]
    routes += [Route("/api/state", state, methods=["GET"]), Route("/api/events", events, methods=["GET"]),
               Route("/api/pause", pause, methods=["POST"]), Route("/api/resume", resume, methods=["POST"]),
               Route("/api/lr", lr, methods=["POST"]), Route("/api/select", select, methods=["POST"]),
               Route("/api/model", model, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        session.start()
        try:
            yield
        finally:  # the server is stopping: stop training, saving a checkpoint (as Ctrl-C)
            await run_in_threadpool(session.close)

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={CnnkitError: refused, Exception: crashed})
    app.add_middleware(Guard, allowed_hosts=allowed, max_body=max_body)
    app.state.session = session
    return app


def _allowed_hosts(host: str, port: int | None) -> set[str] | None:
    """Host header values this server answers; None (any) for a wildcard bind."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host.lower(), *LOCAL_HOSTS} if host in ("127.0.0.1", "localhost", "::1") else {host.lower()}
    names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
    if port is None:
        return names
    return {f"{n}:{port}" for n in names} | ({*names} if port == 80 else set())


async def _stream(session: DemoSession, request: Request) -> AsyncIterator[bytes]:
    """Server-sent events for one page: 'reset' (everything, on connect and on a new run), then
    'points', 'epochs', 'status' and 'snapshot' as they change; each page keeps its own cursor."""
    run_id = status_v = snap_v = -1
    cursor = n_epochs = 0
    idle = 0.0
    while not session.closing.is_set():
        seen = session.changes(run_id, cursor, n_epochs, status_v, snap_v)
        if seen is None:
            st = session.state()
            run_id, status_v, snap_v = st["run_id"], st["status_version"], st["snapshot_version"]
            cursor = st["points"][-1][0] if st["points"] else 0
            n_epochs = len(st["epochs"])
            yield _sse("reset", st)
            idle = 0.0
        else:
            new, more, status, snap, versions = seen
            status_v, snap_v = versions
            changed_snap = snap is not session.UNCHANGED
            if new:
                cursor = new[-1][0]
                yield _sse("points", {"run_id": run_id, "points": new})
            if more:
                n_epochs += len(more)
                yield _sse("epochs", {"run_id": run_id, "epochs": more})
            if status is not None:
                yield _sse("status", status)
            if changed_snap:
                yield _sse("snapshot", snap)
            sent = bool(new or more or status is not None or changed_snap)
            idle = 0.0 if sent else idle + TICK
            if idle >= HEARTBEAT:
                idle = 0.0
                yield b": keep-alive\n\n"
        if await request.is_disconnected():
            break
        await asyncio.sleep(TICK)


class DemoServer:
    """uvicorn serving create_app(session) on host:port (port 0: any free port, see .url).

    run() blocks until Ctrl-C (or stop() from another thread); the app's shutdown then stops
    training and saves a checkpoint."""

    def __init__(self, session: DemoSession, host: str = "127.0.0.1", port: int = 8000) -> None:
        import socket

        import uvicorn

        self.session = session
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(128)   # connections made before uvicorn starts wait in the backlog, not refused
        except OSError as e:
            self.sock.close()
            raise DemoError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None
        self.port = self.sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        self.url = f"http://{shown}:{self.port}/"
        app = create_app(session, host=host, port=self.port)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # end the event streams, or shutdown waits on them
                session.closing.set()
                super().handle_exit(sig, frame)

        self.server = Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until stopped (blocking)."""
        self.server.run(sockets=[self.sock])

    def start(self) -> DemoServer:
        """Serve from a background thread (tests); returns once the server accepts requests."""
        import time

        self._thread = threading.Thread(target=self.run, name="cnnkit-demo-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DemoError("the demo server did not start")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60) -> None:
        """Stop serving (from another thread) and wait: training stops, its checkpoint is saved."""
        self.session.closing.set()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
