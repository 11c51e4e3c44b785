"""Workers on several boxes (here: processes on one box) sharing one study in a real PostgreSQL: the budget is
the study's, a worker killed -9 is noticed and its trials continue when it restarts, and a client attached to
either worker sees and steers both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import tiny_preset_dict
from tests.test_detach import _alive, _api
from tui_tuner.preset import dump_toml

pytestmark = pytest.mark.slow


class Workers:
    """The processes a test starts (`run` on one, `worker` on the others), all ended at the test's end."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CUDA_VISIBLE_DEVICES": "",
                    "TUI_TUNER_HEADLESS": "1"}
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str | Path) -> subprocess.Popen[str]:
        log = open(self.root / f"out-{len(self.procs)}.log", "w")  # noqa: SIM115 - the child's; closed at exit
        proc = subprocess.Popen([sys.executable, "-m", "tui_tuner.cli", *map(str, args), "--storage", self.url],
                                stdout=log, stderr=subprocess.STDOUT, text=True, env=self.env,
                                stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def creator(self, run_dir: Path, **sections: Any) -> subprocess.Popen[str]:
        preset = self.root / "p.toml"
        preset.write_text(dump_toml(tiny_preset_dict(**sections)))
        return self.start("run", preset, "--headless", "--run-dir", run_dir)

    def worker(self, run_dir: Path, *extra: str) -> subprocess.Popen[str]:
        return self.start("worker", "--study", "test", "--run-dir", run_dir, "--headless", *extra)

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="test", storage=self.url.replace("postgresql://", "postgresql+psycopg://"))

    def output(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.root.glob("out-*.log")))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path, pg_url)
    try:
        yield w
    finally:
        w.close()


def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _study_exists(w: Workers) -> bool:
    try:
        w.study()
        return True
    except KeyError:
        return False


def test_two_workers_spend_exactly_the_studys_budget(workers: Workers, tmp_path: Path) -> None:
    a = workers.creator(tmp_path / "a", params={"max_steps": 150}, study={"n_trials": 7, "concurrency": 2})
    until(lambda: _study_exists(workers), 60, "the study")
    b = workers.worker(tmp_path / "b", "--concurrency", "2")
    assert a.wait(240) == 0 and b.wait(240) == 0, workers.output()
    trials = workers.study().trials
    assert len(trials) == 7 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}, workers.output()
    by_worker = {t.user_attrs["worker"] for t in trials}
    assert len(by_worker) == 2, by_worker  # both ran trials; together exactly the budget


def _worker_id(run_dir: Path) -> str:
    import json

    return until(lambda: (run_dir / "sweep.json").exists() and json.loads((run_dir / "sweep.json").read_text())
                 ["worker"], 60, f"{run_dir} created")


def _trials_of(w: Workers, worker: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in w.study().trials if t.user_attrs.get("worker") == worker]


def test_a_killed_worker_is_noticed_and_its_restart_continues_its_trials(workers: Workers, tmp_path: Path) -> None:
    slow = {"params": {"max_steps": 2000}, "study": {"n_trials": 4, "concurrency": 1, "stale_after": 4},
            "checkpoints": {"interval": 10}}
    workers.creator(tmp_path / "a", **slow)
    b_dir = tmp_path / "b"
    until(lambda: _study_exists(workers), 60, "the study")
    b = workers.worker(b_dir)
    b_id = _worker_id(b_dir)

    def b_checkpointed() -> optuna.trial.FrozenTrial | None:
        return next((t for t in _trials_of(workers, b_id) if (t.user_attrs.get("beat") or {}).get("checkpoint")),
                    None)

    victim = until(b_checkpointed, 90, "a checkpointed trial on worker b")
    os.kill(b.pid, signal.SIGKILL)
    b.wait(10)
    killed_at = time.monotonic()
    # The other worker notices within stale_after (4 s) plus a beat: interrupted, with why, not RUNNING-and-alive
    lost = until(lambda: workers.study().trials[victim.number].user_attrs.get("worker_lost"), 30, "marked lost")
    assert time.monotonic() - killed_at < 4 + 4, "noticed late"
    assert f"its worker {b_id} stopped beating" in lost["reason"]
    assert workers.study().trials[victim.number].state == optuna.trial.TrialState.RUNNING  # resumable as itself
    assert "lost_interrupted" in (tmp_path / "a" / "events.jsonl").read_text()
    def seen_by_a() -> dict[str, Any]:  # worker a's one view, refreshed once a second
        return next(t for t in _api(tmp_path / "a")["trials"] if t["number"] == victim.number)
    until(lambda: seen_by_a()["state"] == "interrupted", 10, "worker a's view shows it interrupted")
    assert "stopped beating" in seen_by_a()["error"]

    restarted = workers.worker(b_dir)
    step0 = victim.user_attrs["beat"]["checkpoint"]

    def continued() -> bool:
        t = workers.study().trials[victim.number]
        beat = t.user_attrs.get("beat") or {}
        return t.user_attrs.get("worker_lost") is None and beat.get("step", 0) > step0
    until(continued, 90, "the restarted worker continues the trial")
    events = (b_dir / "events.jsonl").read_text()
    assert f"trial {victim.number} resumes from checkpoint step" in events
    assert restarted.poll() is None and _alive(restarted.pid)


def test_a_client_of_either_worker_sees_both_and_pauses_a_trial_on_the_other(workers: Workers,
                                                                            tmp_path: Path) -> None:
    from tui_tuner.api.client import CommandError, RemoteSweep

    long = {"params": {"max_steps": 3000}, "study": {"n_trials": 4, "concurrency": 1}, "checkpoints": {"interval": 20}}
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    workers.creator(a_dir, **long)
    until(lambda: _study_exists(workers), 60, "the study")
    workers.worker(b_dir)
    b_id = _worker_id(b_dir)
    until(lambda: (b_dir / "control.sock").exists() and (a_dir / "control.sock").exists(), 60, "both APIs")

    client = RemoteSweep(a_dir)  # what `tui-tuner attach` on worker a's box uses
    try:
        def both_running() -> Any:
            snap = client.snapshot()
            running = [t for t in snap.trials if t.state == "running"]
            return snap if len({t.user_attrs.get("worker") for t in running}) == 2 else None
        snap = until(both_running, 90, "a running trial on each worker, seen from worker a")
        assert {w["id"] for w in snap.workers} == {b_id, _worker_id(a_dir)}
        assert all(w["alive"] and "token" not in w for w in snap.workers)
        theirs = next(t for t in snap.trials if t.user_attrs.get("worker") == b_id and t.state == "running")
        until(lambda: client.series(theirs.number, "loss"), 30, "worker b's live curve through worker a")

        client.pause(theirs.number)  # sent to worker a, carried out by worker b
        at_b = lambda: next(t for t in _api(b_dir)["trials"] if t["number"] == theirs.number)  # noqa: E731
        until(lambda: at_b()["state"] == "paused", 30, "the trial paused on worker b")
        until(lambda: next(t for t in client.snapshot().trials if t.number == theirs.number).state == "paused",
              30, "worker a's view shows it paused")
        client.resume_trial(theirs.number)
        until(lambda: at_b()["state"] == "running", 30, "resumed on worker b")
        plan = client.check_fork(theirs.number, params={"learning_rate": 1e-3})  # checked by worker b
        assert plan.now and plan.peak_lr == 1e-3 and plan.total_steps == 3000
        with pytest.raises(CommandError, match="lora_r"):  # worker b's own refusal, through worker a
            client.check_fork(theirs.number, params={"lora_r": 64})
    finally:
        client.close()
