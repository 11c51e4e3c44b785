"""Workers of one study: each engine's id, its entry in the study (host, pid, API, heartbeat), heartbeats of
its running trials, and the sweep of trials whose worker stopped beating.

Optuna's own heartbeat only runs inside `study.optimize`; the engine asks and tells, so it beats itself. Times
are the database server's clock where there is one (boxes' clocks differ), else this box's."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tui_tuner.engine.study_gateway import WORKER_ATTR, StorageError
from tui_tuner.format import error_line

if TYPE_CHECKING:
    from tui_tuner.engine.sweep import Sweep

log = logging.getLogger(__name__)

WORKER_PREFIX = "worker:"  # study user attr of each worker: WORKER_PREFIX + id
BEAT_ATTR = "beat"  # trial user attr: {"t": time, "step", "total": steps, "checkpoint": last checkpoint step|None}
LOST_ATTR = "worker_lost"  # trial user attr: why it was marked interrupted (its worker stopped beating)
BEATS_PER_STALE = 6  # beats within study.stale_after: a late beat or two never marks a live worker lost


def new_worker_id() -> str:
    """Unique per run dir (kept in its sweep.json), readable in a table: the host and 6 hex digits."""
    return f"{socket.gethostname().split('.')[0]}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerView:
    """A worker as every client sees it (from the study: any worker can list every other)."""

    id: str
    host: str
    pid: int
    run_dir: str
    socket: str | None  # its control API on its own box
    listen: str | None  # its --listen URL, reachable from other boxes
    token: str | None  # that URL's bearer token (anyone who can read the study can already steer it)
    beat: float  # its last heartbeat (database clock)
    phase: str
    concurrency: int
    running: tuple[int, ...]
    gpus: tuple[str, ...]
    alive: bool  # beat within study.stale_after
    me: bool = False


class WorkerBeat:
    """One thread per engine on a shared study: every stale_after / BEATS_PER_STALE seconds it writes this
    worker's entry and a beat on each of its running trials, then marks other workers' trials interrupted once
    their beat is older than stale_after (failed, with the reason, when they have no checkpoint to continue
    from). Trials of a lost worker continue when that worker restarts on its run dir (`tui-tuner worker`)."""

    def __init__(self, sweep: Sweep, api: dict[str, str | None] | None = None):
        self.sweep = sweep
        self.api = api or {}
        self.stale_after = sweep.preset.study.stale_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peers: tuple[WorkerView, ...] = ()
        self._gpus: list[str] | None = None  # this box's GPUs, read once (NVML)

    def start(self) -> WorkerBeat:
        self.beat()  # at once: other workers (and clients) see this one before its first trial
        self._thread = threading.Thread(target=self._loop, name="tui-tuner-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():  # a second stop (atexit after the sweep's own): its last beat is written
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.beat(phase="stopped")
        except Exception as e:  # the storage is gone: the others will see this worker go stale
            log.warning("could not record this worker's stop: %s", error_line(e))

    @property
    def peers(self) -> tuple[WorkerView, ...]:
        """Every worker of the study as of the last beat, this one included (`me`)."""
        return self._peers

    def _loop(self) -> None:
        while not self._stop.wait(self.stale_after / BEATS_PER_STALE):
            try:
                self.beat()
                self.sweep_lost()
            except StorageError as e:  # the trials' own calls halt the sweep on it; here, say it and go on
                log.warning("heartbeat: %s", e)
            except Exception as e:  # never die silently: a worker that stops beating looks dead to the others
                log.exception("heartbeat failed: %s", error_line(e))

    def beat(self, phase: str | None = None) -> None:
        s, g = self.sweep, self.sweep.gateway
        now = g.now()
        running = [r for r in s.registry.all() if r.active and r.trial is not None]
        if self._gpus is None:
            self._gpus = gpu_names()
        entry = {"host": socket.gethostname(), "pid": os.getpid(), "run_dir": str(s.run_dir.absolute()),
                 "gpus": self._gpus,
                 "beat": now, "phase": phase or s.snapshot().phase, "concurrency": s.scheduler.requested_concurrency,
                 "running": [r.number for r in running], **self.api}
        g.set_study_attr(WORKER_PREFIX + s.worker_id, entry)
        for r in running:
            last = r.checkpoints[-1].step if r.checkpoints else None
            attrs = {BEAT_ATTR: {"t": now, "step": r.step, "total": r.total, "checkpoint": last}}
            if r.user_attrs.get(LOST_ATTR):  # continued by its restarted worker: no longer lost
                attrs[LOST_ATTR] = None
                r.user_attrs[LOST_ATTR] = None
            g.set_attrs(r.trial, attrs)  # type: ignore[arg-type]
        self._peers = tuple(self._views(g.study_attrs(), now))

    def _views(self, attrs: dict[str, Any], now: float) -> list[WorkerView]:
        out = []
        for key, e in sorted(attrs.items()):
            if not key.startswith(WORKER_PREFIX) or not isinstance(e, dict):
                continue
            wid = key.removeprefix(WORKER_PREFIX)
            out.append(WorkerView(
                id=wid, host=e.get("host", "?"), pid=int(e.get("pid", 0)), run_dir=e.get("run_dir", ""),
                socket=e.get("socket"), listen=e.get("listen"), token=e.get("token"), beat=float(e.get("beat", 0)),
                phase=e.get("phase", "?"), concurrency=int(e.get("concurrency", 0)),
                running=tuple(e.get("running", ())), gpus=tuple(e.get("gpus", ())), me=wid == self.sweep.worker_id,
                alive=e.get("phase") != "stopped" and now - float(e.get("beat", 0)) < self.stale_after))
        return out

    def sweep_lost(self) -> list[int]:
        """Mark the RUNNING trials of workers that stopped beating: interrupted (their worker continues them
        when it restarts), or failed when they never wrote a checkpoint. The numbers marked."""
        g = self.sweep.gateway
        now = g.now()
        marked = []
        for t in g.trials():
            if t.state != OptunaState.RUNNING or g.mine(t) or t.user_attrs.get(LOST_ATTR):
                continue
            last = _last_beat(t)
            if last is None or now - last < self.stale_after:
                continue
            worker = t.user_attrs.get(WORKER_ATTR, "?")
            ckpt = (t.user_attrs.get(BEAT_ATTR) or {}).get("checkpoint")
            ago = f"{now - last:.0f}s"
            if ckpt is None:
                why = (f"its worker {worker} stopped beating {ago} ago before the trial's first checkpoint: "
                       "nothing to continue from")
                if g.fail_lost(t, why):
                    self.sweep.emit("lost_failed", t.number, f"trial {t.number} failed: {why}", worker=worker)
                    marked.append(t.number)
                continue
            why = (f"its worker {worker} stopped beating {ago} ago; it continues from its checkpoint at step "
                   f"{ckpt} when that worker restarts on its run dir")
            g.set_trial_attr_by_id(t._trial_id, LOST_ATTR, {"since": last, "marked_by": self.sweep.worker_id,
                                                             "reason": why})
            self.sweep.emit("lost_interrupted", t.number, f"trial {t.number} interrupted: {why}", worker=worker)
            marked.append(t.number)
        return marked


def gpu_names() -> list[str]:
    """This box's GPUs as `<index>: <name>` (as NVML numbers them); none on a CPU box."""
    from tui_tuner.engine.system import NvmlReader

    reader = NvmlReader()
    return [f"{g.index}: {g.name}" for g in reader.read()] if reader.ok else []


def _last_beat(t: FrozenTrial) -> float | None:
    """Its last heartbeat; a trial that never beat counts from its start (its worker died while it started)."""
    beat = t.user_attrs.get(BEAT_ATTR)
    if isinstance(beat, dict) and isinstance(beat.get("t"), (int, float)):
        return float(beat["t"])
    return t.datetime_start.timestamp() if t.datetime_start else None
