"""The app's SweepSource over the control API: `RemoteSweep` talks to an engine in another process, through
its Unix socket (or a forwarded TCP port with a token). The app cannot tell it from an in-process Sweep."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tui_tuner.api import registry
from tui_tuner.api.wire import (
    API_VERSION,
    PEER_HEADER,
    PREFIX,
    event_from_wire,
    fork_plan_from_wire,
    insight_from_wire,
    snapshot_from_wire,
    system_from_wire,
)
from tui_tuner.engine.errors import SweepError
from tui_tuner.engine.events import Event
from tui_tuner.engine.fork_plan import ForkPlan
from tui_tuner.engine.snapshot import Insight, SweepSnapshot, TrialSnapshot

if TYPE_CHECKING:
    from tui_tuner.engine.system import SystemSample
    from tui_tuner.preset import Preset

CHANGED = "changed"  # the kind of the client's own "redraw now" event (see RemoteSweep._changed_event)
POLL_WAIT_S = 10.0  # how long one events long-poll is held open by the engine
SERIES_FRESH_S = 1.0  # one chart redraw's worth: the app redraws a chart at most every 2 s
SERIES_TIMEOUT_S = 2.0  # the UI thread waits at most this for a series, then draws the last copy
INSIGHT_TIMEOUT_S = 10.0  # asked off the UI thread; a first evaluation over many trials takes a while


class NotRunning(SweepError):
    """Nothing answers at that run dir (never started, finished, or crashed)."""


class CommandError(SweepError):
    """The engine refused a request: the one line it gave."""


def not_running_message(run_dir: Path) -> str:
    from tui_tuner.engine.run_dir import RunDir

    if not RunDir(run_dir).meta.exists():
        return f"{run_dir}: no sweep here (no run was started in this directory)"
    return f"{run_dir}: not running: tui-tuner resume {run_dir}"


class ApiClient:
    """One engine's API: JSON in, JSON out, a one-line CommandError for anything refused."""

    def __init__(self, target: str | Path, token: str | None = None, timeout: float = 10.0,
                 peer: bool = False) -> None:
        self.target = str(target)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if peer:  # another worker's engine, not a person watching: it must not keep a finished engine up
            headers[PEER_HEADER] = "1"
        if self.target.startswith(("http://", "https://")):
            self.run_dir: Path | None = None
            transport = httpx.HTTPTransport()
            base = self.target.rstrip("/")
        else:
            self.run_dir = Path(self.target)
            sock = registry.connect_path(self.run_dir / "control.sock")
            transport = httpx.HTTPTransport(uds=str(sock))
            base = "http://engine"  # the host name is not used over a Unix socket
        try:
            self._http = httpx.Client(transport=transport, base_url=base + PREFIX, headers=headers, timeout=timeout)
        except httpx.InvalidURL as e:
            raise CommandError(f"{self.target}: not a usable address ({e}); want a run dir or http://HOST:PORT") \
                from None

    def request(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        try:
            r = self._http.request(method, path, json=json, params=params,
                                   timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, OSError) as e:
            raise self.gone(e) from None
        except httpx.TimeoutException:
            raise CommandError(f"{self.target}: the engine did not answer {method} {path} in time") from None
        try:
            body = r.json()
        except ValueError:
            raise CommandError(f"{self.target}: {method} {path}: HTTP {r.status_code}, not a JSON reply") from None
        if r.status_code >= 400:
            raise CommandError(body.get("error", f"HTTP {r.status_code}") if isinstance(body, dict)
                               else f"HTTP {r.status_code}")
        return body

    def gone(self, e: BaseException | None = None) -> NotRunning:
        if self.run_dir is not None:
            return NotRunning(not_running_message(self.run_dir))
        return NotRunning(f"{self.target}: no engine answers there ({type(e).__name__ if e else 'closed'})")

    def close(self) -> None:
        self._http.close()


class RemoteSweep:
    """A SweepSource for an engine in another process. `snapshot()` returns the newest copy a poller thread
    keeps (it never waits on the network); a command refreshes it at once, and so does every event the engine
    emits (a long poll), so a pause from another client shows within a refresh."""

    remote = True  # the app offers Detach on quit: the engine lives on without this client

    def __init__(self, target: str | Path, token: str | None = None, refresh_s: float = 0.5, *,
                 preset: Preset | None = None, connect: bool = True) -> None:
        """`connect=False` (with the `preset` the engine is starting from): usable at once, showing a sweep that
        is loading, until `connect()`; the app paints before the engine answers."""
        self.target, self.token, self.refresh_s = target, token, refresh_s
        self.client = ApiClient(target, token)
        self._lock = threading.Lock()  # guards _snap, _cache, _resumable, _events, _seq
        self._cache: dict[int, TrialSnapshot] = {}
        self._resumable = False
        self._events: list[Event] = []
        self._seq = 0
        self._listeners: list[Callable[[Event], None]] = []
        self._closed = threading.Event()
        self._kick = threading.Event()
        self.gone: str | None = None  # why the engine stopped answering, once it has
        self._phase: str | None = None  # the engine's phase as its last events reply gave it
        self._fetched_at = 0.0  # monotonic time of the newest snapshot fetched
        self._fetch_lock = threading.Lock()  # one snapshot fetch at a time: replies applied in order
        self._series: dict[tuple[str, int | None], tuple[float, dict[int, list[tuple[float, float]]]]] = {}
        self._plans: dict[tuple[int, int], list[tuple[int, float]]] = {}
        self._insight: Insight | None = None  # the last insight the engine gave
        self._moved = False  # the last events reply said the sweep changed (a command, an event)
        self.pid: int | None = None
        self.run_dir = self.client.run_dir or Path(str(target))
        if preset is not None:
            self.preset = preset
            self._snap = _placeholder(preset)
        if connect:
            self.connect()

    def connect(self) -> RemoteSweep:
        """Read the engine's info and its current state, then keep them fresh on two threads."""
        self.client.close()
        self.client = ApiClient(self.target, self.token)  # anew: control.sock may have become a symlink
        info = self.client.request("GET", "/info")
        if info.get("api") != API_VERSION:
            raise CommandError(f"{self.target}: engine speaks API v{info.get('api')}, this client v{API_VERSION}: "
                               "use the same tui-tuner version for both")
        from tui_tuner.preset import Preset

        self.preset = Preset.model_validate(info["preset"])
        if self.client.run_dir is None:
            self.run_dir = Path(info["run_dir"])
        self.pid = info["pid"]
        self._fetch_snapshot()
        self._seen_events(self._fetch_events(0, 0))
        for t in (threading.Thread(target=self._poll_snapshots, name="tui-tuner-poll", daemon=True),
                  threading.Thread(target=self._poll_events, name="tui-tuner-events", daemon=True)):
            t.start()
        return self

    def wait_loaded(self, alive: Callable[[], str | None] | None = None) -> None:
        """Until the engine has loaded the model and data (its phase leaves 'loading'); CommandError with why if
        it died meanwhile (`alive()` returns that reason, or None while it lives)."""
        while self.snapshot().phase == "loading" and not self.gone:
            if alive is not None and (why := alive()) is not None:
                raise CommandError(why)
            self._kick.set()
            time.sleep(0.1)
        if self.gone:
            raise CommandError((alive() if alive is not None else None) or self.gone)

    # -- the poller ------------------------------------------------------------------------------
    def _fetch_snapshot(self) -> SweepSnapshot:
        # Serialised: the poller, the events thread and a command all fetch, and an older reply applied after
        # a newer one would undo what the user just saw (and mix the cache's versions).
        with self._fetch_lock:
            with self._lock:
                known = ",".join(f"{n}.{t.version}" for n, t in self._cache.items())
            d = self.client.request("GET", "/snapshot", params={"known": known} if known else None)
            with self._lock:
                snap = snapshot_from_wire(d, self._cache)
                self._resumable = bool(d.get("resumable"))
                self._snap = snap
                self._fetched_at = time.monotonic()
            return snap

    def _fetch_events(self, since: int, wait: float) -> list[Event]:
        got = self.client.request("GET", "/events", params={"since": since, "wait": wait}, timeout=wait + 10)
        self._phase = got.get("phase")
        self._moved = bool(got.get("changed"))
        return [event_from_wire(r) for r in got["events"]]

    def _seen_events(self, evs: list[Event]) -> list[Event]:
        with self._lock:
            new = [e for e in evs if e.seq > self._seq]
            if new:
                self._events.extend(new)
                del self._events[:-2000]
                self._seq = new[-1].seq
        return new

    def _poll_snapshots(self) -> None:
        while not self._closed.is_set():
            # A refresh_s after the last fetch, whoever made it: one an event or a command caused counts.
            while not self._kick.wait(max(0.0, self._fetched_at + self.refresh_s - time.monotonic())):
                if time.monotonic() >= self._fetched_at + self.refresh_s:
                    break
            self._kick.clear()
            if self._closed.is_set():
                return
            try:
                self._fetch_snapshot()
            except NotRunning as e:
                self._lost(str(e))
                return
            except CommandError:
                continue  # a slow reply: try again at the next tick

    def _poll_events(self) -> None:
        while not self._closed.is_set():
            try:
                new = self._seen_events(self._fetch_events(self._seq, POLL_WAIT_S))
            except NotRunning as e:
                self._lost(str(e))
                return
            except CommandError:
                time.sleep(self.refresh_s)
                continue
            if new or self._moved:  # an event, or another client's command
                with contextlib.suppress(CommandError, NotRunning):
                    self._fetch_snapshot()  # the snapshot behind it, before listeners redraw from it
                for ev in new or [self._changed_event()]:
                    for fn in list(self._listeners):
                        fn(ev)

    def _changed_event(self) -> Event:
        """Not an engine event: tells the app to redraw now (it is neither logged nor counted)."""
        return Event(seq=self._seq, time=time.time(), kind=CHANGED, trial=None, message="")

    def _lost(self, why: str) -> None:
        if self.gone is None:
            with self._lock:
                self._snap = _ended(self._snap, self._phase)
                phase = self._snap.phase
            ended_itself = self._phase in ("finished", "stopping", "stopped")  # else it crashed or was killed
            self.gone = ("the sweep finished" if phase == "finished" else "the sweep was stopped") if ended_itself \
                else f"the engine is gone ({why})"
            for fn in list(self._listeners):  # an event of the client's own: the engine is gone
                fn(Event(seq=self._seq + 1, time=time.time(), kind="engine_gone", trial=None,
                         message=f"the engine stopped answering ({why})"))

    def close(self) -> None:
        """Leave (the engine goes on)."""
        self._closed.set()
        self._kick.set()
        self.client.close()

    # -- SweepSource: reads ----------------------------------------------------------------------
    def snapshot(self) -> SweepSnapshot:
        with self._lock:
            return self._snap

    def series(self, n: int, key: str = "loss", max_points: int | None = 200) -> list[tuple[float, float]]:
        """A trial's metric. The app asks on its UI thread, for every trial a chart shows: one request fetches
        them all (the trials of the current snapshot) and serves the rest of that redraw from a cache, and a
        slow or vanished engine costs at most SERIES_TIMEOUT_S once, then the last copy (never an error)."""
        cache_key = (key, max_points)
        now = time.monotonic()
        with self._lock:
            got = self._series.get(cache_key)
        if got is not None and (now - got[0] < SERIES_FRESH_S or self.gone) and n in got[1]:
            return got[1][n]
        if self.gone:
            return got[1].get(n, []) if got else []
        numbers = sorted({n, *(t.number for t in self.snapshot().trials)})
        try:
            rows = self.client.request("GET", "/series", timeout=SERIES_TIMEOUT_S, params={
                "key": key, "max_points": "all" if max_points is None else max_points,
                "trials": ",".join(map(str, numbers))})
        except (CommandError, NotRunning):
            return got[1].get(n, []) if got else []
        fresh = {int(k): [(float(x), float(y)) for x, y in v] for k, v in rows.items()}
        with self._lock:
            self._series[cache_key] = (now, fresh)
        return fresh.get(n, [])

    def lr_plan(self, n: int, points: int = 200) -> list[tuple[int, float]]:
        """The planned schedule: fixed once a trial has its params, so kept once fetched."""
        with self._lock:
            if (n, points) in self._plans:
                return self._plans[(n, points)]
        if self.gone:
            return []
        try:
            rows = self.client.request("GET", f"/trials/{n}/lr_plan", params={"points": points},
                                       timeout=SERIES_TIMEOUT_S)
        except (CommandError, NotRunning):
            return []
        plan = [(int(x), float(y)) for x, y in rows]
        if plan:
            with self._lock:
                self._plans[(n, points)] = plan
        return plan

    def insight(self) -> Insight:
        """The engine's param importances; the last copy (or why there is none) when it does not answer."""
        if not self.gone:
            try:
                got = insight_from_wire(self.client.request("GET", "/insight", timeout=INSIGHT_TIMEOUT_S))
            except (CommandError, NotRunning) as e:
                if self._insight is None:
                    return Insight(finished=0, complete=0, reason=f"no insight from the engine: {e}")
            else:
                self._insight = got
        return self._insight or Insight(finished=0, complete=0, reason=self.gone)

    def events_since(self, seq: int = 0) -> list[Event]:
        with self._lock:
            return [e for e in self._events if e.seq > seq]

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def system_sample(self) -> SystemSample | None:
        return None if self.gone else system_from_wire(self.client.request("GET", "/system"))

    @property
    def concurrency(self) -> int:
        return self.snapshot().concurrency

    @property
    def resumable(self) -> bool:
        with self._lock:
            return self._resumable

    @property
    def halted(self) -> str | None:
        return self.snapshot().halted

    def best(self) -> TrialSnapshot | None:
        snap = self.snapshot()
        return next((t for t in snap.trials if t.number == snap.best_trial), None)

    def wait(self, timeout: float | None = None) -> bool:
        """Until the engine has finished or stopped (or is gone); True if it has."""
        end = None if timeout is None else time.monotonic() + timeout
        while not (self.gone or self.snapshot().phase in ("finished", "stopped")):
            if end is not None and time.monotonic() >= end:
                return False
            self._kick.set()
            time.sleep(0.1)
        return True

    # -- SweepSource: commands -------------------------------------------------------------------
    def _command(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        out = self.client.request(method, path, json=body, timeout=timeout)
        with contextlib.suppress(CommandError, NotRunning):
            self._fetch_snapshot()  # this client sees its own command at once
        return out

    def pause(self, n: int) -> None:
        self._command("POST", f"/trials/{n}/pause")

    def resume_trial(self, n: int) -> None:
        self._command("POST", f"/trials/{n}/resume")

    def kill(self, n: int) -> None:
        self._command("POST", f"/trials/{n}/kill")

    def set_concurrency(self, k: int) -> None:
        self._command("PUT", "/concurrency", {"value": k})

    def enqueue(self, params: dict[str, Any]) -> int:
        return int(self._command("POST", "/trials", {"params": params})["trial"])

    def fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None) -> int:
        # A fork of a running trial waits for it to write a checkpoint: give it the engine's own patience.
        return int(self._command("POST", f"/trials/{n}/fork", {"step": step, "params": params or {}},
                                 timeout=660)["trial"])

    def check_fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None,
                   points: int = 200) -> ForkPlan:
        """What `fork` would do, or its refusal (CommandError), without acting."""
        return fork_plan_from_wire(self.client.request("POST", f"/trials/{n}/check_fork", params={"points": points},
                                                       json={"step": step, "params": params or {}},
                                                       timeout=SERIES_TIMEOUT_S))

    def stop(self, timeout: float | None = None) -> None:
        """Ask the engine to stop (every trial checkpoints and is interrupted) and wait until it has."""
        if self.gone:
            return
        with contextlib.suppress(NotRunning):
            self.client.request("POST", "/stop")
        self.wait(timeout)


class RemoteSystem:
    """The System panel's source for a remote engine: the engine's GPUs, not this client's."""

    def __init__(self, sweep: RemoteSweep, interval: float = 2.0) -> None:
        self._sweep = sweep
        self._interval = interval
        self._latest: SystemSample | None = None
        self._stop = threading.Event()

    def start(self) -> RemoteSystem:
        threading.Thread(target=self._loop, name="tui-tuner-system", daemon=True).start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(CommandError, NotRunning):
                self._latest = self._sweep.system_sample()
            self._stop.wait(self._interval)

    def latest(self) -> SystemSample | None:
        return self._latest

    def stop(self) -> None:
        self._stop.set()


def _placeholder(preset: Preset) -> SweepSnapshot:
    s = preset.study
    return SweepSnapshot(study_name=preset.study_name, sampler=s.sampler, pruner=s.pruner, concurrency=s.concurrency,
                         n_trials=s.n_trials, started_at=time.time(), elapsed=0.0, finished=False, phase="loading",
                         loading="loading: starting the engine…")


def _ended(snap: SweepSnapshot, last_phase: str | None) -> SweepSnapshot:
    """The last snapshot, marked as over: finished if the engine said so last, else stopped."""
    import dataclasses

    phase = "finished" if "finished" in (snap.phase, last_phase) else "stopped"
    return dataclasses.replace(snap, phase=phase, finished=phase == "finished" or snap.finished)


def env_token() -> str | None:
    return os.environ.get("TUI_TUNER_TOKEN") or None
