"""The study gateway: every Optuna call the engine makes, under one lock, and the user-attr schema it writes.

User attrs of a trial (the engine's record in the study; `export`, optuna-dashboard and `resume` read them):

| attr | set when | meaning |
|---|---|---|
| origin | asked | "sampler", "enqueue", "fork", or "pbt" (a PBT clone: a fork the strategy made) |
| worker | asked / enqueued | the engine (worker) that runs it: only it pops the trial from the queue or resumes it |
| by_user | enqueued / forked | the user asked for it: exempt from pruning unless study.prune_user_trials |
| parent_trial, fork_step, fork_checkpoint | forked | lineage; the checkpoint path is relative to the run dir |
| overrides | enqueued / forked | fixed (non-searched) params changed for this trial only |
| stopped_by_user, stopped_at_step | killed | Optuna PRUNED by the user |
| pruned_at_step, pruned_reason | pruned | Optuna PRUNED by the pruner, PBT, or promotion; the reason in words |
| pbt_replaces, pbt_step, pbt_changes | PBT clone | the member it replaced, at which step, and each explored |
| | | param's [donor's value, new value]; parent_trial/fork_step name the donor and its checkpoint |
| pbt_replaced_by | PBT replaced it | the clone that took its place in the population |
| parked_at_step, rung_eval | promotion: reached t1 | its eval at promote.t1; RUNNING while parked (samplers see it |
| | | as COMPLETE at rung_eval) |
| promoted, promoted_rank | promotion: continued | it runs on to max_steps under its own number |
| early_stopped_at_step, early_stop_reason | early stopped | Optuna COMPLETE with its best eval loss: |
| | | early_stopping_patience evals in a row did not improve on it |
| error, failed_at_step | failed | Optuna FAIL; the traceback is in trials/<n>/error.log |
| ask_failed | the sampler failed creating it | Optuna FAIL; not counted in the budget |
| cancelled_by_user | cancelled | a queued trial removed before it ran: Optuna FAIL (samplers skip FAIL trials, so a |
| | | trial that never ran teaches them nothing; PRUNED would read as "a bad configuration") |
| cancelled_reason | cancelled by resume | a queued fork whose checkpoint is lost with its parent's: Optuna FAIL |
| interrupted_at_step, interrupted_checkpoint | interrupted | a sweep stop ended it; it stays RUNNING in Optuna |
| | | (never told, so the sampler never learns from an interruption) and `resume` continues it |
| paused | paused / resumed | True while paused: a resume brings it back paused |
| continues, interrupted_before_start | (0.1.0 only) | a stop told PRUNED then; resume continued it as a fork |

Study user attrs: `concurrency` (the live value, restored by resume; `concurrency:<worker>` for a worker of a
shared study: concurrency is per worker); `elapsed_s` (seconds the study has run over all its sessions, kept
when study.timeout is set: a resume counts the timeout on from there); `preset` (the resolved preset as TOML,
written by the run that created the study: `tui-tuner worker` runs the same search space and fixed params);
`worker:<id>` (a worker's host, pid, API addresses and heartbeat: engine/workers.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tui_tuner.engine.lifecycle import TrialState
from tui_tuner.engine.promotion import PROMOTED_ATTR, RUNG_ATTR
from tui_tuner.engine.sampler_view import Shown, ViewSampler, first_shown, parked_at_rung, pruned_at_last_eval
from tui_tuner.engine.storage_url import shown
from tui_tuner.engine.study import make_pruner, make_sampler, make_storage, sample_params, trial_params
from tui_tuner.format import error_line
from tui_tuner.params import TrialParams
from tui_tuner.preset import Preset

log = logging.getLogger(__name__)

CONCURRENCY_ATTR = "concurrency"
WORKER_ATTR = "worker"
PRESET_ATTR = "preset"
ELAPSED_ATTR = "elapsed_s"


def from_checkpoint(attrs: dict[str, Any]) -> bool:
    """The trial starts from a copy of another's checkpoint (a fork, a PBT clone), not from step 0."""
    return attrs.get("origin") in ("fork", "pbt") and isinstance(attrs.get("fork_step"), int)


def counts_against_budget(t: FrozenTrial) -> bool:
    """A sampler trial spent from study.n_trials: not one still queued, not one the sampler failed to create
    (ask_failed), not a 0.1.0 trial stopped before it started (it is queued again and counts then)."""
    a = t.user_attrs
    return (a.get("origin") == "sampler" and t.state != OptunaState.WAITING
            and not a.get("interrupted_before_start") and not a.get("ask_failed"))


def state_of(t: FrozenTrial) -> TrialState:
    """The engine's state of a stored trial (as a dead run left it: a RUNNING trial is interrupted, by a stop or
    a crash). Clients of a live sweep read the engine's own state instead."""
    a = t.user_attrs
    match t.state:
        case OptunaState.WAITING:
            return TrialState.WAITING
        case OptunaState.RUNNING:
            parked = "parked_at_step" in a and not a.get(PROMOTED_ATTR)  # promotion: waits at its first rung
            return TrialState.PARKED if parked else TrialState.INTERRUPTED
        case OptunaState.COMPLETE:
            return TrialState.COMPLETE
        case OptunaState.PRUNED:
            if a.get("stopped_by_user"):
                return TrialState.KILLED
            # 0.1.0 told a stopped trial PRUNED; a trial this engine prunes after a stop and a resume carries
            # the old interrupted_at_step too, but also its pruned_at_step.
            legacy_stop = "interrupted_at_step" in a and "pruned_at_step" not in a
            return TrialState.INTERRUPTED if legacy_stop else TrialState.PRUNED
        case _:
            cancelled = a.get("cancelled_by_user") or a.get("cancelled_reason")
            return TrialState.CANCELLED if cancelled else TrialState.FAILED


def repair_torn_journal(path: Path) -> str | None:
    """A crash or a full disk mid-append leaves the journal ending in a partial record (no newline, or a line
    that is not JSON, as zeros after a crash on a delayed-allocation filesystem): Optuna would append after it,
    and no later load could parse the study. Keep a copy, cut the damaged tail back to the last whole record,
    and say what was done in one line (None when the journal is whole). Only the run-dir lock's holder may call
    this: a live writer's half-written append looks the same."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    keep = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
    while keep:  # whole lines that do not parse, at the end: cut them too (only at the end: see above)
        start = data.rfind(b"\n", 0, keep - 1) + 1
        try:
            json.loads(data[start:keep])
            break
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            keep = start
    if keep == len(data):
        return None
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    shutil.copyfile(path, backup)
    with path.open("r+b") as f:
        f.truncate(keep)
        os.fsync(f.fileno())
    return (f"{path} ended in a damaged record ({len(data) - keep} bytes, from a crash or a full disk): cut it, "
            f"the study is intact up to its last whole record (copy kept as {backup.name})")


class StorageError(RuntimeError):
    """The study's storage failed (disk full, I/O error on the journal): the sweep halts and its running trials
    are interrupted, never failed, since their training was fine."""


def is_storage_fault(e: BaseException) -> bool:
    """An error of the storage itself: an OSError (journal), Optuna's StorageInternalError, or any SQLAlchemy
    error (an RDB --storage). sqlalchemy is only looked up once something imported it: the engine must not pay
    for importing it when the journal is used."""
    if isinstance(e, (OSError, optuna.exceptions.StorageInternalError)):
        return True
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(e, sa_exc.SQLAlchemyError)


def by_user(attrs: dict[str, Any]) -> bool:
    """Runs made before the attr existed: enqueued and forked trials were the user's."""
    return bool(attrs.get("by_user", attrs.get("origin") in ("enqueue", "fork")))


class StudyGateway:
    """Owns the optuna.Study. `lock` (an RLock) serialises every call into it: trial objects and samplers are
    not thread-safe, and a sampler's ask must see the tells before it. Lock order: this lock, then the registry
    lock; never the other way round."""

    def __init__(self, preset: Preset, journal: Path, storage_url: str | None, worker_id: str = ""):
        self.preset = preset
        self.worker_id = worker_id  # this engine's id in the study (trials it runs carry it: WORKER_ATTR)
        self.sampled = 0  # sampler trials the study had spent (every worker's) at the last ask
        self.lock = threading.RLock()
        self._journal = journal
        self._url = storage_url
        self._storage: optuna.storages.BaseStorage | None = None
        self._asking: tuple[int, int] | None = None  # (number, trial id) of the trial an ask is creating
        self.study: optuna.Study

    def connect(self) -> None:
        """Open the storage only (a bad --storage URL fails here, before the run dir is written)."""
        if self._url:
            self._storage = make_storage(self._journal.parent, self._url, self.preset.study.concurrency)

    def clear_stale_journal_lock(self) -> bool:
        """Remove the journal's lock file a killed process left (JournalFileBackend retries on it for ~30 s).
        Only the run-dir lock's holder may call this: no other process can be writing the journal then."""
        lock = Path(str(self._journal) + ".lock")
        if self._url or not os.path.lexists(lock):
            return False
        lock.unlink()
        return True

    def repair_torn_journal(self) -> str | None:
        """See `repair_torn_journal`; a --storage URL has no journal file to repair."""
        return None if self._url else repair_torn_journal(self._journal)

    @property
    def where(self) -> str:
        """The storage, as the user named it (the --storage URL, or the run dir's journal path)."""
        return f"--storage {shown(self._url)}" if self._url else str(self._journal)

    def existing_trials(self) -> int | None:
        """How many trials the storage already holds in a study of this sweep's name; None when it holds no
        such study (before `open`, which would create it)."""
        with self.lock, self._storage_call("read the study"):
            self._storage = self._storage or make_storage(self._journal.parent, None)
            try:
                study_id = self._storage.get_study_id_from_name(self.preset.study_name)
            except KeyError:
                return None
            return len(self._storage.get_all_trials(study_id, deepcopy=False))

    def open(self, max_resource: int) -> None:
        with self.lock:
            storage = self._storage or make_storage(self._journal.parent, None)
            self.study = optuna.create_study(
                study_name=self.preset.study_name, storage=storage, sampler=self._sampler(0),
                pruner=make_pruner(self.preset, max_resource), direction="minimize", load_if_exists=True)
            offset = len(self.study.get_trials(deepcopy=False))
            if offset:
                # A resumed sweep must not replay the proposals its seed made before.
                self.study.sampler = self._sampler(offset)

    def _sampler(self, seed_offset: int) -> optuna.samplers.BaseSampler:
        """The preset's sampler; under promotion it sees parked trials as complete at their rung eval, and GP
        (which reads COMPLETE trials only) sees pruned ones at their last eval."""
        sampler = make_sampler(self.preset, seed_offset=seed_offset)
        s = self.preset.study
        rules: list[Shown] = []
        if s.strategy == "promote":
            rules.append(parked_at_rung(RUNG_ATTR))
        if s.sampler == "gp":
            rules.append(pruned_at_last_eval)
        if rules:
            sampler = ViewSampler(sampler, first_shown(*rules))
        return self._track_asks(sampler)

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return self.study._storage

    # -- reads ---------------------------------------------------------------------------------
    def trials(self) -> list[FrozenTrial]:
        with self.lock:
            return self.study.get_trials(deepcopy=False)

    def finished_trials(self) -> list[FrozenTrial]:
        """The study's COMPLETE and PRUNED trials (every worker's, in a shared study); none before `open`."""
        with self.lock, self._storage_call("read the finished trials"):
            if not hasattr(self, "study"):  # a client asked while the sweep loads
                return []
            return self.study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE, OptunaState.PRUNED))

    @staticmethod
    def importances(complete: list[FrozenTrial], params: list[str]) -> dict[str, float]:
        """PED-ANOVA importances of `params` over these complete trials, unnormalised. On a throwaway in-memory
        study, outside `lock`: the evaluation takes a while and trial threads must not wait on it."""
        study = optuna.create_study(direction="minimize")
        study.add_trials(complete)
        # The evaluator itself, not get_param_importances: that one's `normalize` warns (experimental), and its
        # normalising would hide an all-zero result (nothing told apart) as equal shares.
        return optuna.importance.PedAnovaImportanceEvaluator().evaluate(study, params=params)

    def own_trials(self) -> list[FrozenTrial]:
        return [t for t in self.trials() if self.mine(t)]

    @property
    def concurrency_attr(self) -> str:
        return f"{CONCURRENCY_ATTR}:{self.worker_id}" if self.worker_id else CONCURRENCY_ATTR

    def study_attr(self, key: str) -> Any:
        with self.lock:
            return self.study.user_attrs.get(key)

    def handle(self, t: FrozenTrial) -> optuna.Trial:
        """A live trial object for a stored RUNNING trial (an interrupted one being continued)."""
        with self.lock:  # building one reads the storage and calls the sampler's before_trial
            asking = self._asking
            try:
                return optuna.Trial(self.study, t._trial_id)
            finally:
                self._asking = asking  # before_trial marked it as being asked: it is not

    # -- the scheduler's calls -----------------------------------------------------------------
    def ask(self, budget: int) -> tuple[optuna.Trial, dict[str, Any]] | None:
        """The next trial: one of this worker's enqueued WAITING trials first, else a sampler proposal while the
        study has spent fewer than `budget` sampler trials (over every worker); None when the budget is spent.
        With user attrs. Not `study.ask`: that would pop another worker's queued fork, whose checkpoint is on
        another box."""
        with self.lock, self._storage_call("ask"), self._study_wide():
            self._asking = None  # set by the sampler's before_trial hook once the trial exists
            study = self.study
            study._thread_local.cached_all_trials = None  # samplers' per-thread trial cache: sync it (as ask does)
            trial_id = self._pop_own_waiting()
            if trial_id is None:
                trials = self.storage.get_all_trials(study._study_id, deepcopy=False)
                self.sampled = sum(counts_against_budget(t) for t in trials)
                if self.sampled >= budget:
                    return None
                trial_id = self.storage.create_new_trial(study._study_id)
            trial = optuna.Trial(study, trial_id)
            attrs = dict(trial.user_attrs)
            for key, value in (("origin", "sampler"), (WORKER_ATTR, self.worker_id)):
                if key not in attrs:  # inside the study-wide lock: the next worker's count sees this trial
                    attrs[key] = value
                    trial.set_user_attr(key, value)
            return trial, attrs  # still being asked until `suggest` has its params

    def _pop_own_waiting(self) -> int | None:
        """Claim this worker's oldest WAITING trial (as Optuna's _pop_waiting_trial_id does, for ours only)."""
        for t in self.storage.get_all_trials(self.study._study_id, deepcopy=False, states=(OptunaState.WAITING,)):
            if not self.mine(t):
                continue
            try:
                if self.storage.set_trial_state_values(t._trial_id, state=OptunaState.RUNNING):
                    return t._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def _rdb_engine(self) -> Any:
        """The SQLAlchemy engine of an RDB storage, else None."""
        backend = getattr(self.storage, "_backend", self.storage)  # optuna wraps an RDBStorage in a cache
        return getattr(backend, "engine", None)

    def mine(self, t: FrozenTrial) -> bool:
        """The trial is this worker's to run (trials from before workers existed carry no worker: the run's)."""
        return t.user_attrs.get(WORKER_ATTR) in (None, self.worker_id)

    @contextlib.contextmanager
    def _study_wide(self) -> Iterator[None]:
        """Count-then-create of an ask as one step across every process on the study: a PostgreSQL advisory lock
        (released by the server if this process dies). Other storages have a single writer (the run-dir lock)."""
        engine = self._rdb_engine()
        if engine is None or engine.dialect.name != "postgresql":
            yield
            return
        from sqlalchemy import text

        key = int.from_bytes(hashlib.blake2b(self.preset.study_name.encode(), digest_size=8).digest(), "big",
                             signed=True)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()

    def suggest(self, trial: optuna.Trial, overrides: dict[str, Any]) -> TrialParams:
        """The asked trial's params. A sampler error raises with the trial still marked as being asked, so the
        halt it causes fails that trial (`fail_asked`); params that do not validate raise ValidationError."""
        with self.lock, self._storage_call(f"trial {trial.number}: suggest"):
            searched = sample_params(trial, self.preset)
            self._asking = None
        return trial_params(self.preset, searched, overrides)

    def enqueue(self, searched: dict[str, Any], attrs: dict[str, Any]) -> FrozenTrial:
        """Add a WAITING trial; the caller holds `lock` around this and whatever must happen before an ask can
        pop it (its checkpoint moved in place, its record registered)."""
        with self.lock:
            attrs = {WORKER_ATTR: self.worker_id, **attrs}
            self.study.enqueue_trial(searched, user_attrs=attrs, skip_if_exists=False)
            return self.study.get_trials(deepcopy=False, states=(OptunaState.WAITING,))[-1]

    def cancel_waiting(self, t: FrozenTrial | int, reason: str | None = None) -> None:
        """Mark a queued trial FAIL with cancelled_by_user, or with `cancelled_reason` when the engine cancels it
        (Optuna's tell refuses WAITING trials; the storage does not, and only the scheduler thread asks, or the
        resume before it starts, so no ask can pop it meanwhile)."""
        with self.lock:
            tid = t._trial_id if isinstance(t, FrozenTrial) else self.study.trials[t]._trial_id
            if reason is None:
                self.storage.set_trial_user_attr(tid, "cancelled_by_user", True)
            else:
                self.storage.set_trial_user_attr(tid, "cancelled_reason", reason)
            self.storage.set_trial_state_values(tid, OptunaState.FAIL)

    def fail_asked(self, msg: str) -> int | None:
        """The ask failed (the sampler broke): fail exactly the trial it had created, if any; its number."""
        asked, self._asking = self._asking, None
        if asked is None:
            return None
        number, trial_id = asked
        try:
            with self.lock:
                # The storage, not optuna.Trial: building a Trial would run the failing sampler again.
                self.storage.set_trial_user_attr(trial_id, "error", msg)
                self.storage.set_trial_user_attr(trial_id, "ask_failed", True)  # resume: not from the budget
                self.study.tell(number, state=OptunaState.FAIL, skip_if_finished=True)
        except Exception as e:  # the storage itself is broken: the halt still has to happen
            log.warning("could not mark trial %s failed after: %s (%s)", number, msg, error_line(e))
        return number

    def study_attrs(self) -> dict[str, Any]:
        with self.lock, self._storage_call("get_study_user_attrs"):
            return self.storage.get_study_user_attrs(self.study._study_id)

    def now(self) -> float:
        """The database server's clock (boxes' clocks differ; heartbeats compare across boxes); this box's for
        a journal or SQLite."""
        engine = self._rdb_engine()
        if engine is None or engine.dialect.name != "postgresql":
            return time.time()
        from sqlalchemy import text

        with self._storage_call("read the clock"), engine.connect() as conn:
            return float(conn.execute(text("SELECT extract(epoch from clock_timestamp())")).scalar_one())

    def set_trial_attr_by_id(self, trial_id: int, key: str, value: Any) -> None:
        """On a trial this process holds no Trial object for (another worker's)."""
        with self.lock, self._storage_call("set_trial_user_attr"):
            self.storage.set_trial_user_attr(trial_id, key, value)

    def fail_lost(self, t: FrozenTrial, why: str) -> bool:
        """Tell FAIL another worker's trial that cannot be continued; False if it finished meanwhile."""
        with self.lock, self._storage_call("fail a lost trial"):
            try:
                self.storage.set_trial_user_attr(t._trial_id, "error", why)
                return self.storage.set_trial_state_values(t._trial_id, OptunaState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                return False

    def set_study_attr(self, key: str, value: Any) -> None:
        with self.lock, self._storage_call("set_study_user_attr"):
            self.study.set_user_attr(key, value)

    # -- a trial thread's calls ----------------------------------------------------------------
    def report(self, trial: optuna.Trial, value: float, step: int) -> None:
        with self.lock, self._storage_call(f"trial {trial.number}: report"):
            trial.report(value, step)

    def should_prune(self, trial: optuna.Trial) -> bool:
        with self.lock, self._storage_call(f"trial {trial.number}: should_prune"):
            return trial.should_prune()

    def set_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        with self.lock, self._storage_call(f"trial {trial.number}: set_user_attr"):
            for k, v in attrs.items():
                trial.set_user_attr(k, v)

    def tell(self, trial: optuna.Trial, state: OptunaState, value: float | None = None) -> None:
        with self.lock, self._storage_call(f"trial {trial.number}: tell"):
            if state == OptunaState.COMPLETE:
                self.study.tell(trial, value, skip_if_finished=True)
            else:
                self.study.tell(trial, state=state, skip_if_finished=True)

    @contextlib.contextmanager
    def _storage_call(self, what: str) -> Iterator[None]:
        """An error out of the storage (the journal's disk is full, an I/O error, a database that is locked or
        gone) is the study's fault, not the trial's: raised as StorageError, so the trial ends interrupted and
        the sweep halts."""
        try:
            yield
        except Exception as e:
            if not is_storage_fault(e):
                raise
            where = shown(self._url) if self._url else str(self._journal)
            raise StorageError(f"storage {where}: {what} failed: {error_line(e)}") from e

    def _track_asks(self, sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
        """Record which trial an ask created (Optuna calls before_trial as soon as it exists), so a failing ask
        fails exactly that trial: with a shared --storage, other RUNNING trials may be another process's."""
        real = sampler.before_trial

        def before_trial(study: optuna.Study, trial: FrozenTrial) -> None:
            self._asking = (trial.number, trial._trial_id)
            real(study, trial)

        sampler.before_trial = before_trial  # type: ignore[method-assign]
        return sampler
