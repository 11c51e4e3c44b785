"""One view of a study that several workers share: what a worker's API serves in place of its own sweep.
This worker's trials come from its engine; another live worker's from that worker's API (live loss, LR,
memory); the rest (finished, or their worker gone) from the study itself. A command for another worker's
trial is sent to that worker: a fork runs where the parent's checkpoint is."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import socket
import threading
import zlib
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tui_tuner.api.client import ApiClient, CommandError, NotRunning
from tui_tuner.api.wire import fork_plan_from_wire, snapshot_from_wire
from tui_tuner.engine.errors import SweepError
from tui_tuner.engine.fork_plan import ForkPlan
from tui_tuner.engine.lifecycle import TrialState
from tui_tuner.engine.snapshot import STATES, SweepSnapshot, TrialSnapshot
from tui_tuner.engine.study_gateway import WORKER_ATTR, state_of
from tui_tuner.engine.workers import BEAT_ATTR, LOST_ATTR, WorkerView

if TYPE_CHECKING:
    from tui_tuner.engine.sweep import Sweep

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how often other workers' trials are fetched: their own engines refresh at 2-5 Hz
PEER_TIMEOUT_S = 3.0


class Federation:
    """The Sweep interface the API serves (snapshot, series, lr_plan, trial commands), over every worker of
    the study; everything else is the local sweep's (`local`). A refresher thread keeps the foreign trials, so
    a read never waits on another box. `_lock` guards `_foreign` and `_peers`."""

    def __init__(self, sweep: Sweep) -> None:
        self.local = sweep
        self._lock = threading.Lock()
        self._foreign: dict[int, tuple[TrialSnapshot, str]] = {}  # number -> (snapshot, its worker id)
        self._clients: dict[tuple[str, int], ApiClient] = {}  # per (worker, pid): a restarted one gets a new one
        self._caches: dict[str, dict[int, TrialSnapshot]] = {}  # per peer: snapshot deltas
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tui-tuner-federation", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(PEER_TIMEOUT_S * 2)  # a refresh in flight uses the clients
        for c in list(self._clients.values()):
            c.close()

    # -- reads -----------------------------------------------------------------------------------
    def snapshot(self) -> SweepSnapshot:
        snap = self.local.snapshot()
        with self._lock:
            foreign = [t for n, (t, _) in self._foreign.items() if self.local.registry.get(n) is None]
        beat = self.local.heartbeat
        # Without tokens: a client of this worker steers the others through it, never around it
        workers = tuple({k: v for k, v in dataclasses.asdict(w).items() if k != "token"}
                        for w in beat.peers) if beat is not None else ()
        if not foreign:
            return dataclasses.replace(snap, workers=workers)
        trials = tuple(sorted((*snap.trials, *foreign), key=lambda t: t.number))
        counts = {str(s): 0 for s in STATES}
        for t in trials:
            counts[t.state] += 1
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.eval_loss is not None
                and math.isfinite(t.eval_loss)]
        best = min(done, key=lambda t: t.eval_loss) if done else None  # type: ignore[arg-type,return-value]
        return dataclasses.replace(snap, trials=trials, counts=counts, workers=workers,
                                   best_trial=best.number if best else None,
                                   best_value=best.eval_loss if best else None)

    def series(self, n: int, key: str = "loss", max_points: int | None = 200) -> list[tuple[float, float]]:
        if self._is_local(n):
            return self.local.series(n, key, max_points)
        client = self._owner_client(n)
        if client is not None:
            with contextlib.suppress(CommandError, NotRunning):
                rows = client.request("GET", f"/trials/{n}/series", timeout=PEER_TIMEOUT_S, params={
                    "key": key, "max_points": "all" if max_points is None else max_points})
                return [(float(x), float(y)) for x, y in rows]
        if key != "eval_loss":
            return []  # only the eval reports are in the study; the training curve is on its worker's box
        t = self._stored(n)
        return sorted((float(s), float(v)) for s, v in t.intermediate_values.items()) if t else []

    def lr_plan(self, n: int, points: int = 200) -> list[tuple[int, float]]:
        if self._is_local(n):
            return self.local.lr_plan(n, points)
        client = self._owner_client(n)
        if client is None:
            return []
        with contextlib.suppress(CommandError, NotRunning):
            return [(int(x), float(y)) for x, y in client.request(
                "GET", f"/trials/{n}/lr_plan", params={"points": points}, timeout=PEER_TIMEOUT_S)]
        return []

    # -- commands: to the trial's own worker -------------------------------------------------------
    def pause(self, n: int) -> None:
        self._route(n, "pause", lambda: self.local.pause(n))

    def resume_trial(self, n: int) -> None:
        self._route(n, "resume", lambda: self.local.resume_trial(n))

    def kill(self, n: int) -> None:
        self._route(n, "kill", lambda: self.local.kill(n))

    def fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None) -> int:
        if self._is_local(n):
            return self.local.fork(n, step=step, params=params)
        body = self._send(n, f"/trials/{n}/fork", {"step": step, "params": params or {}}, timeout=660)
        return int(body["trial"])

    def check_fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None,
                   points: int = 200) -> ForkPlan:
        if self._is_local(n):
            return self.local.check_fork(n, step, params, points)
        return fork_plan_from_wire(self._send(n, f"/trials/{n}/check_fork", {"step": step, "params": params or {}},
                                              timeout=PEER_TIMEOUT_S, query={"points": points}))

    def _route(self, n: int, verb: str, here: Any) -> None:
        if self._is_local(n):
            here()
        else:
            self._send(n, f"/trials/{n}/{verb}", None)

    def _send(self, n: int, path: str, body: Any, timeout: float | None = None,
              query: dict[str, Any] | None = None) -> Any:
        worker = self._owner(n)
        client = self._client_for(worker) if worker is not None else None
        if client is None:
            raise SweepError(self._unreachable(n, worker))
        try:
            return client.request("POST", path, json=body, params=query, timeout=timeout)
        except NotRunning:
            raise SweepError(f"trial {n} runs on worker {worker.id} ({worker.host}), which no longer "  # type: ignore[union-attr]
                             "answers") from None

    def _unreachable(self, n: int, worker: WorkerView | None) -> str:
        if worker is None:
            return f"no trial {n} in this study"
        if not worker.alive:
            return f"trial {n} belongs to worker {worker.id} ({worker.host}), which is not running"
        return (f"trial {n} runs on worker {worker.id} on {worker.host}, which serves no --listen address: "
                f"attach there (tui-tuner attach {worker.run_dir})")

    # -- whose trial is it -----------------------------------------------------------------------
    def _is_local(self, n: int) -> bool:
        return self.local.registry.get(n) is not None

    def _owner(self, n: int) -> WorkerView | None:
        with self._lock:
            got = self._foreign.get(n)
        beat = self.local.heartbeat
        if got is None or beat is None:
            return None
        return next((w for w in beat.peers if w.id == got[1]), None)

    def _owner_client(self, n: int) -> ApiClient | None:
        w = self._owner(n)
        return self._client_for(w) if w is not None and w.alive else None

    def _client_for(self, w: WorkerView) -> ApiClient | None:
        """Its Unix socket on this box; its --listen URL (with its token) from another."""
        key = (w.id, w.pid)
        if key not in self._clients:
            if w.host == socket.gethostname() and w.run_dir:
                self._clients[key] = ApiClient(w.run_dir, timeout=PEER_TIMEOUT_S, peer=True)
            elif w.listen:
                url = w.listen.replace("://0.0.0.0:", f"://{w.host}:")
                self._clients[key] = ApiClient(url, token=w.token, timeout=PEER_TIMEOUT_S, peer=True)
            else:
                return None
        return self._clients[key]

    def _stored(self, n: int) -> FrozenTrial | None:
        trials = self.local.gateway.trials()
        return trials[n] if 0 <= n < len(trials) and trials[n].number == n else None

    # -- the refresher ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            if self.local.heartbeat is None:
                continue  # the study is not open yet
            try:
                self._refresh()
            except Exception as e:  # a read of the study failed: keep the last view, try again
                log.warning("could not refresh the other workers' trials: %s", e)

    def _refresh(self) -> None:
        beat = self.local.heartbeat
        assert beat is not None
        peers = [w for w in beat.peers if not w.me]
        live: dict[int, tuple[TrialSnapshot, str]] = {}
        for w in peers:
            if not w.alive or (client := self._client_for(w)) is None:
                continue
            try:
                d = client.request("GET", "/snapshot", params={"local": 1}, timeout=PEER_TIMEOUT_S)
            except (CommandError, NotRunning):
                continue
            snap = snapshot_from_wire(d, self._caches.setdefault(w.id, {}))
            live.update((t.number, (t, w.id)) for t in snap.trials)
        stale_after = self.local.preset.study.stale_after
        now = self.local.gateway.now()
        out: dict[int, tuple[TrialSnapshot, str]] = {}
        for t in self.local.gateway.trials():
            if self.local.gateway.mine(t):
                continue
            worker = str(t.user_attrs.get(WORKER_ATTR, ""))
            out[t.number] = live.get(t.number) or (stored_snapshot(t, now, stale_after), worker)
        with self._lock:
            self._foreign = out


def stored_snapshot(t: FrozenTrial, now: float, stale_after: float) -> TrialSnapshot:
    """Another worker's trial as the study holds it: its eval reports, params, lineage and last beat."""
    a = t.user_attrs
    beat = a.get(BEAT_ATTR) if isinstance(a.get(BEAT_ATTR), dict) else {}
    state = state_of(t)
    if t.state == OptunaState.RUNNING and not a.get(LOST_ATTR) and now - float(beat.get("t", 0)) < stale_after:
        state = TrialState.PAUSED if a.get("paused") else TrialState.RUNNING  # beating, its worker unreachable
    evals = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
    # The last beat, or the last eval report when later (a trial's final eval comes after its last beat)
    step = max(int(beat.get("step") or 0), max(t.intermediate_values, default=0))
    finite = [v for v in evals if math.isfinite(v)]
    error = a.get("error") or (a.get(LOST_ATTR) or {}).get("reason")
    if error is None and t.state == OptunaState.RUNNING and state is TrialState.INTERRUPTED:
        # not marked lost yet (the next beat of some worker does that): say why it shows interrupted
        error = f"its worker {a.get(WORKER_ATTR, '?')} stopped beating {now - float(beat.get('t', 0)):.0f}s ago"
    key = (t.state.value, state.value, step, len(evals), len(a), str(beat.get("t")))
    return TrialSnapshot(
        number=t.number, state=state, step=step, total_steps=beat.get("total"), params=dict(t.params),
        overrides=dict(a.get("overrides", {})), eval_loss=evals[-1] if evals else None,
        best_eval_loss=min(finite) if finite else None, parent=a.get("parent_trial"), fork_step=a.get("fork_step"),
        origin=a.get("origin", "sampler"), stopped_by_user=bool(a.get("stopped_by_user")), error=error,
        started_at=t.datetime_start.timestamp() if t.datetime_start else None,
        finished_at=t.datetime_complete.timestamp() if t.datetime_complete else None, user_attrs=dict(a),
        version=-(zlib.crc32(repr(key).encode()) + 1),  # negative: never a version its own worker sent
    )


