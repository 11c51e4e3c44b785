"""The engine side of the control API: a Starlette app over a Sweep, served by uvicorn on a thread, on
`<run_dir>/control.sock` (0600) and, only when asked, on a loopback TCP port that needs a bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tui_tuner.api import registry
from tui_tuner.api.federation import Federation
from tui_tuner.api.wire import (
    API_VERSION,
    PEER_HEADER,
    PREFIX,
    dumps,
    event_to_wire,
    fork_plan_to_wire,
    insight_to_wire,
    snapshot_bytes,
    system_to_wire,
    trial_to_wire,
)
from tui_tuner.engine.events import Event
from tui_tuner.engine.storage_url import shown

if TYPE_CHECKING:
    from tui_tuner.engine.snapshot import TrialSnapshot
    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.engine.system import SystemSampler

MAX_WAIT_S = 25.0  # longest a long-poll for events is held open
MAX_BODY = 64 * 1024  # a command's JSON body; anything bigger is not a command
log = logging.getLogger("tui_tuner.api")


class ApiRequestError(HTTPException):
    """A request the engine refuses, with the one line a client prints."""


def reply(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json")


# A finished sweep's engine stays up while a client watches, and this long after the last one left: the app keeps
# showing the results (and can fork a finished trial) instead of closing the moment the budget is spent.
LINGER_S = 5.0


class Api:
    """The routes. Reads run on the event loop (a snapshot is well under a millisecond); commands that may wait
    on a trial thread (fork checkpoints first) run in Starlette's thread pool; stop runs on its own thread."""

    def __init__(self, sweep: Sweep, started_at: float) -> None:
        self.sweep = sweep
        self.started_at = started_at
        self._system: SystemSampler | None = None
        self._system_lock = threading.Lock()  # guards _system's lazy start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set (on the loop) when the sweep emits an event
        self._unsubscribe = sweep.subscribe(self._on_event)
        self.stop_thread: threading.Thread | None = None
        self.closing = False  # the server is shutting down: long-polls answer at once
        self._generation = 0  # bumped on every wake: a long-poll that saw it move returns "changed"
        self._wire: dict[int, tuple[int, bytes]] = {}  # trial number -> (version, its wire form)
        # Clients seen: requests in flight (a long poll is one) and when the last one ended. Only the loop thread
        # writes them; the engine's main thread reads them to keep a finished sweep up while it is watched.
        self.in_flight = 0
        self.last_seen = -math.inf

    def attached(self, within: float = LINGER_S) -> bool:
        """A client is watching: a request is in flight, or one ended less than `within` seconds ago (every
        client polls several times a second)."""
        return self.in_flight > 0 or time.monotonic() - self.last_seen < within

    # -- plumbing --------------------------------------------------------------------------------
    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()

    def _on_event(self, _ev: Event | None = None) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
        self._generation += 1

    def _changed_now(self) -> None:
        """A command changed the sweep (a pause asked for, concurrency): wake every long-poll, so other
        clients fetch the new snapshot now rather than at their next tick."""
        self._on_event()

    def close(self) -> None:
        self._unsubscribe()
        if self._system is not None:
            self._system.stop()

    def _encoded(self, t: TrialSnapshot) -> bytes:
        """A trial's wire form, encoded once per version however many clients ask (only the loop thread calls
        this, so the cache needs no lock)."""
        hit = self._wire.get(t.number)
        if hit is None or hit[0] != t.version:
            hit = self._wire[t.number] = (t.version, dumps(trial_to_wire(t)))
        return hit[1]

    # -- reads -----------------------------------------------------------------------------------
    async def info(self, _request: Request) -> Response:
        s = self.sweep
        return reply({"api": API_VERSION, "pid": os.getpid(), "run_dir": str(s.run_dir.absolute()),
                      "preset": s.preset.model_dump(mode="json"), "started_at": self.started_at,
                      "storage": shown(s.storage_url) if s.storage_url else None})

    async def status(self, _request: Request) -> Response:
        snap = self.sweep.snapshot()
        return reply({"api": API_VERSION, "pid": os.getpid(), "run_dir": str(self.sweep.run_dir.absolute()),
                      "study": snap.study_name, "phase": snap.phase, "counts": snap.counts,
                      "n_trials": snap.n_trials, "concurrency": snap.concurrency, "best_trial": snap.best_trial,
                      "best_value": snap.best_value, "uptime": time.time() - self.started_at,
                      "halted": snap.halted})

    async def snapshot(self, request: Request) -> Response:
        known = _known_versions(request.query_params.get("known", ""))
        # local=1: only this engine's trials (what another worker of a shared study merges into its view)
        source = getattr(self.sweep, "local", self.sweep) if request.query_params.get("local") else self.sweep
        body = snapshot_bytes(source.snapshot(), known, self._encoded, resumable=self.sweep.resumable)
        return Response(body, media_type="application/json")

    async def series(self, request: Request) -> Response:
        n = _int(request.path_params["n"], "trial")
        key, pts = _series_args(request)
        return reply(self._call(self.sweep.series, n, key, pts, command=False))

    async def series_many(self, request: Request) -> Response:
        """Several trials' series in one reply ({"N": points}): a chart of every trial costs one round trip."""
        key, pts = _series_args(request)
        numbers = [_int(x, "trials") for x in filter(None, request.query_params.get("trials", "").split(","))]
        return reply({str(n): self._call(self.sweep.series, n, key, pts, command=False) for n in numbers})

    async def lr_plan(self, request: Request) -> Response:
        n = _int(request.path_params["n"], "trial")
        pts = _int(request.query_params.get("points", "200"), "points", low=1)
        return reply(self.sweep.lr_plan(n, pts))

    async def insight(self, _request: Request) -> Response:
        """Param importances and per-param points (the engine caches them per finished-trial count; a fresh
        evaluation takes a while, so it runs off the loop)."""
        from starlette.concurrency import run_in_threadpool

        return reply(insight_to_wire(await run_in_threadpool(self._call, self.sweep.insight, command=False)))

    async def events(self, request: Request) -> Response:
        """Events after `since`; with `wait` (seconds) held open until there is one (a long poll), so a client
        sees another client's command as soon as the engine acts on it."""
        since = _int(request.query_params.get("since", "0"), "since", low=0)
        wait = min(float(_number(request.query_params.get("wait", "0"), "wait")), MAX_WAIT_S)
        deadline, generation = time.monotonic() + wait, self._generation
        while True:
            changed = self._changed
            evs = self.sweep.events_since(since)
            left = deadline - time.monotonic()
            moved = self._generation != generation
            if evs or moved or left <= 0 or changed is None or self.closing:
                # The phase rides along: an engine that just finished may be gone before the next snapshot.
                return reply({"events": [event_to_wire(e) for e in evs], "changed": moved or bool(evs),
                              "phase": self.sweep.snapshot().phase})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    async def system(self, _request: Request) -> Response:
        with self._system_lock:
            if self._system is None:  # the first client that shows the System panel starts the sampler
                from tui_tuner.engine.system import SystemSampler

                self._system = SystemSampler().start()
        return reply(system_to_wire(self._system.latest()))

    # -- commands --------------------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any, command: bool = True, **kw: Any) -> Any:
        """Call the sweep; its refusal is the client's one line (409). A command wakes every client after."""
        from tui_tuner.engine.sweep import SweepError

        try:
            out = fn(*args, **kw)
        except SweepError as e:  # also PresetError and the params' one-line errors: the user's to fix
            raise ApiRequestError(409, str(e)) from None
        if command:
            self._changed_now()
        return out

    async def trial_command(self, request: Request) -> Response:
        n = _int(request.path_params["n"], "trial")
        verb = request.path_params["verb"]
        fns = {"pause": self.sweep.pause, "resume": self.sweep.resume_trial, "kill": self.sweep.kill}
        if verb not in fns:
            raise ApiRequestError(404, f"unknown trial command {verb!r} (pause, resume, kill, fork)")
        await _body(request)  # the whole request first: one cut off mid-body must change nothing
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(self._call, fns[verb], n)
        return reply({"trial": n, "done": verb})

    async def fork(self, request: Request) -> Response:
        n, step, params = await _fork_args(request)
        from starlette.concurrency import run_in_threadpool

        child = await run_in_threadpool(self._call, self.sweep.fork, n, step=step, params=params)
        return reply({"trial": child, "parent": n})

    async def check_fork(self, request: Request) -> Response:
        """The fork's plan, or its refusal (409), checked without acting: a read, so it wakes no client."""
        n, step, params = await _fork_args(request)
        points = _int(request.query_params.get("points", "200"), "points", low=1)
        return reply(fork_plan_to_wire(self._call(self.sweep.check_fork, n, step, params, points, command=False)))

    async def enqueue(self, request: Request) -> Response:
        params = _params(await _body(request))
        from starlette.concurrency import run_in_threadpool

        return reply({"trial": await run_in_threadpool(self._call, self.sweep.enqueue, params)})

    async def concurrency(self, request: Request) -> Response:
        value = (await _body(request)).get("value")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiRequestError(400, f"value: want an integer, got {value!r}")
        self._call(self.sweep.set_concurrency, value)
        return reply({"concurrency": self.sweep.concurrency})

    async def stop(self, request: Request) -> Response:
        """Every trial checkpoints and becomes interrupted; answered at once (the stop takes a step or so per
        trial), clients watch the snapshot's phase turn 'stopped'."""
        await _body(request)
        if self.stop_thread is None:
            self.stop_thread = threading.Thread(target=self.sweep.stop, name="tui-tuner-api-stop", daemon=True)
            self.stop_thread.start()
        return reply({"stopping": True}, 202)

    def routes(self) -> list[Route]:
        p = PREFIX
        return [
            Route(f"{p}/info", self.info), Route(f"{p}/status", self.status), Route(f"{p}/snapshot", self.snapshot),
            Route(f"{p}/events", self.events), Route(f"{p}/system", self.system),
            Route(f"{p}/series", self.series_many), Route(f"{p}/insight", self.insight),
            Route(f"{p}/trials/{{n}}/series", self.series), Route(f"{p}/trials/{{n}}/lr_plan", self.lr_plan),
            Route(f"{p}/trials/{{n}}/fork", self.fork, methods=["POST"]),
            Route(f"{p}/trials/{{n}}/check_fork", self.check_fork, methods=["POST"]),
            Route(f"{p}/trials/{{n}}/{{verb}}", self.trial_command, methods=["POST"]),
            Route(f"{p}/trials", self.enqueue, methods=["POST"]),
            Route(f"{p}/concurrency", self.concurrency, methods=["PUT"]),
            Route(f"{p}/stop", self.stop, methods=["POST"]),
        ]


async def _fork_args(request: Request) -> tuple[int, int | None, dict[str, Any]]:
    n = _int(request.path_params["n"], "trial")
    body = await _body(request)
    step = body.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise ApiRequestError(400, f"step: want an integer or null, got {step!r}")
    return n, step, _params(body)


def _series_args(request: Request) -> tuple[str, int | None]:
    """(metric, max points: 0 or absent from the query means 200; `all` every point kept)."""
    raw = request.query_params.get("max_points", "200")
    return request.query_params.get("key", "loss"), None if raw == "all" else _int(raw, "max_points", low=1)


def _known_versions(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for item in filter(None, text.split(",")):
        n, _, v = item.partition(".")
        out[_int(n, "known")] = _int(v, "known")
    return out


def _int(text: Any, what: str, low: int | None = None) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ApiRequestError(400, f"{what}: want an integer, got {text!r}") from None
    if low is not None and value < low:
        raise ApiRequestError(400, f"{what}: want at least {low}, got {value}")
    return value


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiRequestError(400, f"{what}: want a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ApiRequestError(400, f"{what}: want a number of seconds >= 0, got {text!r}")
    return value


async def _body(request: Request) -> dict[str, Any]:
    import json

    from starlette.requests import ClientDisconnect

    if int(request.headers.get("content-length") or 0) > MAX_BODY:  # refused before a byte of it is read
        raise ApiRequestError(413, f"request body over {MAX_BODY} bytes")
    try:
        raw = await request.body()
    except ClientDisconnect:  # cut off mid-body: act on nothing (the reply goes nowhere)
        raise ApiRequestError(400, "the client went away mid-request") from None
    if len(raw) > MAX_BODY:
        raise ApiRequestError(413, f"request body over {MAX_BODY} bytes")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiRequestError(400, f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiRequestError(400, "body: want a JSON object")
    return body


def _params(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, str | int | float | bool) or v is None
                                               for v in params.values()):
        raise ApiRequestError(400, "params: want an object of name -> number, string, boolean or null")
    return params


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return reply({"error": exc.detail}, exc.status_code)


async def _crash(_request: Request, exc: Exception) -> Response:
    log.exception("API request failed")  # a bug of ours: the engine goes on, the client gets one line
    return reply({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)


class TokenGuard:
    """The TCP listener's gate: every request needs `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers", ())).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                await reply({"error": "missing or wrong token (Authorization: Bearer TOKEN)"}, 401)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


class Seen:
    """Counts each request in and out on the Api, for `Api.attached`."""

    def __init__(self, app: ASGIApp, api: Api) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or PEER_HEADER.encode() in dict(scope.get("headers", ())):
            await self.app(scope, receive, send)  # another worker's engine: not a client watching
            return
        self.api.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.api.in_flight -= 1
            self.api.last_seen = time.monotonic()


def make_app(api: Api) -> ASGIApp:
    return Seen(Starlette(routes=api.routes(), exception_handlers={HTTPException: _http_error, Exception: _crash}),
                api)


class ListenError(ValueError):
    """A --listen address that cannot be used (a ValueError: the CLI prints it as one line, exit 2)."""


def parse_listen(listen: str, any_port: bool = False) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 in brackets) -> (host, port), or ListenError naming what is wrong. Port 0 (any free
    one) only with `any_port`: a user must know the port to forward it."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise ListenError(f"--listen {listen}: want HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:8765")
    return host, int(port)


class ApiServer:
    """Serves one sweep until `close()`. The caller holds the run-dir lock, so a control.sock already there is
    a dead engine's and is replaced."""

    def __init__(self, sweep: Sweep, listen: str | None = None, token: str | None = None) -> None:
        self.sweep = sweep
        self.run_dir = Path(sweep.run_dir).absolute()
        self.link = self.run_dir / "control.sock"
        self.listen = listen
        self.token: str | None = (token or secrets.token_urlsafe(24)) if listen else None
        # A study other workers share: the API serves all of it (their trials, commands routed to them)
        self.federation = Federation(sweep) if sweep.storage_url else None
        self.api = Api(self.federation or sweep, time.time())
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._entry: Path | None = None
        self.socket_path = registry.socket_path_for(self.run_dir, os.getpid())
        self.tcp_address: tuple[str, int] | None = None
        self._log_handler: logging.Handler = logging.NullHandler()

    def start(self, timeout: float = 10.0) -> ApiServer:
        socks = [(self._bind_unix(), make_app(self.api))]
        if self.listen:
            try:
                tcp = self._bind_tcp(self.listen)
            except BaseException:
                socks[0][0].close()
                self.close()  # the Unix socket and its link go too: nothing serves this run
                raise
            self.tcp_address = tcp.getsockname()[:2]
            socks.append((tcp, TokenGuard(make_app(self.api), self.token or "")))
        self._log_handler = _log_to(self.run_dir / "engine.log")
        for _sock, app in socks:
            config = uvicorn.Config(app, http="httptools", log_config=None, access_log=False, lifespan="off",
                                    log_level="warning",
                                    timeout_graceful_shutdown=1)
            self._servers.append(uvicorn.Server(config))
        ready = threading.Event()

        async def serve() -> None:
            self.api.bind_loop(asyncio.get_running_loop())
            tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, (sock, _app) in
                     zip(self._servers, socks, strict=True)]
            while not all(s.started for s in self._servers) and not any(t.done() for t in tasks):
                await asyncio.sleep(0.01)
            ready.set()
            await asyncio.gather(*tasks)

        self._thread = threading.Thread(target=lambda: asyncio.run(serve()), name="tui-tuner-api", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or not all(s.started for s in self._servers):
            raise OSError(f"{self.socket_path}: the control API did not start")
        self._entry = registry.register(os.getpid(), self.run_dir, self.socket_path, self.tcp_url)
        # What a worker of a shared study advertises in it, so the others route commands for its trials here
        self.sweep.advertise.update(socket=str(self.socket_path), listen=self.tcp_url, token=self.token)
        return self

    @property
    def tcp_url(self) -> str | None:
        return f"http://{self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else None

    def _bind_unix(self) -> socket.socket:
        for old in {self.link, self.socket_path}:
            with contextlib.suppress(FileNotFoundError):
                if old.is_symlink() or old.is_socket():
                    old.unlink()  # a crashed engine's; we hold the run-dir lock, so it is nobody's now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        # Before listen(): nobody can connect in between. Owner only, as the issue asks and as ssh-agent does.
        os.chmod(self.socket_path, 0o600)
        if self.socket_path != self.link:
            self.link.symlink_to(self.socket_path)
        sock.listen(64)
        return sock

    @staticmethod
    def _bind_tcp(listen: str) -> socket.socket:
        host, port = parse_listen(listen, any_port=True)
        try:
            return socket.create_server((host, port))
        except OSError as e:
            raise ListenError(f"--listen {listen}: {e.strerror or e}") from None

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving (open long-polls answer first), remove the socket and the announcement."""
        self.api.closing = True
        self.api._on_event()  # every long-poll returns now, with the final phase, instead of being cancelled
        time.sleep(0.05)
        for s in self._servers:
            s.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.api.close()
        if self.federation is not None:
            self.federation.close()
        for name in ("uvicorn", "tui_tuner.api"):
            logging.getLogger(name).removeHandler(self._log_handler)
        self._log_handler.close()
        for path in (self._entry, self.link, self.socket_path):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()


def _log_to(log_path: Path) -> logging.Handler:
    """uvicorn's warnings (a garbage request, a client gone mid-reply) and our own go to engine.log, never to a
    terminal the app may be drawing on."""
    handler = logging.FileHandler(log_path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("uvicorn", "tui_tuner.api"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    return handler
