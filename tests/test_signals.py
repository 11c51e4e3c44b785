"""Signals on real runs: headless SIGTERM/SIGHUP stop gracefully; the app detaches on either (the sweep trains on)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tiny_preset_dict, wait_for
from tui_tuner.preset import dump_toml

pytestmark = pytest.mark.slow
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGHUP, id="SIGHUP")]


def _preset(tmp_path: Path, steps: int = 100000) -> Path:
    path = tmp_path / "p.toml"  # long trials: both still run when the signal comes
    path.write_text(dump_toml(tiny_preset_dict(params={"max_steps": steps}, study={"n_trials": 2})))
    return path


def _resume_finishes_them_under_their_numbers(run_dir: Path, were_running: set[int], steps: int) -> None:
    """The stopped trials are RUNNING in the study, each marked interrupted (none unaccounted for, none told);
    `resume` continues them from their checkpoints under the same numbers to the end."""
    import optuna
    from optuna.trial import TrialState

    from tui_tuner.engine.sweep import Sweep

    again = Sweep.open(run_dir)
    backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))
    storage = optuna.storages.JournalStorage(backend)
    stored = optuna.load_study(study_name="test", storage=storage).trials
    assert {t.number for t in stored if t.state == TrialState.RUNNING} == were_running
    assert all("interrupted_at_step" in t.user_attrs for t in stored if t.state == TrialState.RUNNING)
    again.start()
    try:
        assert again.wait(240)
        assert [(t.number, t.state, t.step) for t in again.trials()] == [(n, "complete", steps)
                                                                         for n in sorted(were_running)]
    finally:
        again.stop()


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _running(run_dir: Path) -> set[int]:
    """Trials that have started and not ended, by the events file."""
    on: set[int] = set()
    for e in _events(run_dir):
        if e["event"] == "started":
            on.add(e["trial"])
        elif e["event"] in ("interrupted", "complete", "pruned", "killed", "failed"):
            on.discard(e["trial"])
    return on


def _both_stepping(run_dir: Path) -> bool:
    """Both trials have run a step: a stop now checkpoints each (a trial stopped before its first step has
    nothing new to save and restarts from step 0), as `_assert_stopped_gracefully` expects."""
    on = _running(run_dir)
    metrics = [run_dir / "trials" / str(n) / "metrics.jsonl" for n in on]
    return len(on) == 2 and all(m.exists() and m.stat().st_size > 0 for m in metrics)


def _env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: this checkout, no GPU, and a runtime dir of the test's own (engines announce
    themselves there for `ls`)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CUDA_VISIBLE_DEVICES": "",
            "TUI_TUNER_RUNTIME_DIR": str(tmp_path / "runtime")}


def _assert_stopped_gracefully(run_dir: Path, were_running: set[int]) -> None:
    events = _events(run_dir)
    interrupted = {e["trial"] for e in events if e["event"] == "interrupted"}
    assert were_running <= interrupted, events[-6:]
    assert events[-1]["event"] == "sweep_stopped", events[-3:]
    for n in were_running:  # checkpointed, so `resume` continues it where it stopped
        assert list((run_dir / "trials" / str(n) / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("sig", SIGNALS)
def test_headless_run_stops_gracefully_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "tui_tuner.cli", "run", str(_preset(tmp_path, steps=600)), "--headless",
           "--run-dir", str(run_dir)]
    with (tmp_path / "err").open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env(tmp_path))
        try:
            wait_for(lambda: _both_stepping(run_dir), timeout=120, what="both trials stepping")
            were_running = _running(run_dir)
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            proc.kill()
    assert rc == 128 + sig
    _assert_stopped_gracefully(run_dir, were_running)
    assert "Traceback" not in (tmp_path / "err").read_text()
    _resume_finishes_them_under_their_numbers(run_dir, were_running, steps=600)


def test_headless_second_signal_exits_at_once_with_the_resume_hint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "tui_tuner.cli", "run", str(_preset(tmp_path)), "--headless", "--run-dir",
           str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        wait_for(lambda: _both_stepping(run_dir), timeout=120, what="both trials stepping")
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # at once: the first one's stop is still under way
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    # Either the stop was quick enough to finish, or the second signal cut it short with the hint.
    assert "sweep stopped" in out or f"continue with `tui-tuner resume {run_dir}`" in err, (out, err)


# On CI .ci/run installs tmux, so there a missing tmux fails the tests instead of skipping them.
NEEDS_TMUX = pytest.mark.skipif(shutil.which("tmux") is None and not os.environ.get("CI"), reason="needs tmux")


# -- the TUI, in tmux -------------------------------------------------------------------------------------------
# A shell in a tmux pane passes the hangup on to its foreground job and exits; this stands in for it and
# records the job's exit code.
SHELL = textwrap.dedent("""
    import signal, subprocess, sys
    job = subprocess.Popen(sys.argv[2:])
    open(sys.argv[1] + ".pid", "w").write(str(job.pid))
    signal.signal(signal.SIGHUP, lambda *_: job.send_signal(signal.SIGHUP))
    rc = job.wait()
    open(sys.argv[1], "w").write(str(rc))
""")


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a background engine whose parent exited may wait a while to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _engine_pid(run_dir: Path) -> int:
    return int((run_dir / ".lock").read_text())


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    """tmux on a server of this test's own: a server started earlier would give the pane its environment, not
    the test's. Killed at the end, and so is any background engine the test's app started."""
    label = f"tui-tuner-test-{os.getpid()}-{tmp_path.name}"
    cmd = ["tmux", "-L", label]
    try:
        yield cmd
    finally:
        subprocess.run([*cmd, "kill-server"], capture_output=True)
        with contextlib.suppress(OSError):  # the server's socket file outlives it
            (Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / label).unlink()
        run_dir = tmp_path / "run"
        with contextlib.suppress(OSError, ValueError):
            pid = _engine_pid(run_dir)
            if _alive(pid):
                subprocess.run([sys.executable, "-m", "tui_tuner.cli", "ctl", str(run_dir), "stop", "--no-wait"],
                               capture_output=True, env=_env(tmp_path), timeout=30)
                wait_for(lambda: not _alive(pid), timeout=30, what="the engine to stop")


def _start_tui(tmux: list[str], tmp_path: Path, run_dir: Path) -> str:
    """`tui-tuner run` in an 80x24 tmux pane, under SHELL (the job's exit code lands in tmp_path/rc), until
    both trials run; the session's name."""
    (tmp_path / "shell.py").write_text(SHELL)
    pane = " ".join([sys.executable, str(tmp_path / "shell.py"), str(tmp_path / "rc"), sys.executable, "-m",
                     "tui_tuner.cli", "run", str(_preset(tmp_path)), "--run-dir", str(run_dir)])
    env = _env(tmp_path)
    env.pop("TUI_TUNER_HEADLESS", None)
    subprocess.run([*tmux, "new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", pane], check=True, env=env)
    wait_for(lambda: _both_stepping(run_dir), timeout=120, what="both trials stepping")
    screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "tui"], capture_output=True, text=True).stdout
    assert "conc 2" in screen and "running" in screen  # it is the app, not the headless client
    return "tui"


@NEEDS_TMUX
@pytest.mark.parametrize("sig", SIGNALS)
def test_tui_in_tmux_detaches_on_a_signal(tmp_path: Path, tmux: list[str], sig: signal.Signals) -> None:
    """The terminal goes away (SIGHUP) or the app is terminated (SIGTERM): the app exits (0, or 143 as SIGTERM
    ends a process), the engine trains on until `ctl stop`, which stops it gracefully. A client that quits
    never affects the sweep."""
    run_dir, rc_file = tmp_path / "run", tmp_path / "rc"
    _start_tui(tmux, tmp_path, run_dir)
    engine, were_running = _engine_pid(run_dir), _running(run_dir)
    if sig == signal.SIGHUP:
        subprocess.run([*tmux, "kill-session", "-t", "tui"], check=True)
    else:
        os.kill(int((tmp_path / "rc.pid").read_text()), sig)
    wait_for(rc_file.exists, timeout=60, what="the app to exit")
    assert int(rc_file.read_text()) == (0 if sig == signal.SIGHUP else 128 + sig)
    metrics = [run_dir / "trials" / str(n) / "metrics.jsonl" for n in sorted(were_running)]
    sizes = [m.stat().st_size for m in metrics]
    time.sleep(1)
    wait_for(lambda: all(m.stat().st_size > n for m, n in zip(metrics, sizes, strict=True)), timeout=30,
             what="both trials to train on")
    assert _alive(engine) and _running(run_dir) == were_running
    stop = subprocess.run([sys.executable, "-m", "tui_tuner.cli", "ctl", str(run_dir), "stop"], capture_output=True,
                          text=True, env=_env(tmp_path), timeout=60)
    assert stop.returncode == 0, stop.stderr
    _assert_stopped_gracefully(run_dir, were_running)
    wait_for(lambda: not _alive(engine), timeout=30, what="the engine to exit")
    assert not (run_dir / "control.sock").exists()


@NEEDS_TMUX
def test_tui_start_failure_is_the_usual_one_line(tmp_path: Path, tmux: list[str]) -> None:
    """The app is up before the data loads: a bad data file still ends in one line on stderr and exit 2."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict(data={"train": str(bad)})))
    session = "bad"
    # stderr stays the terminal (Textual draws on it); the error is read off the screen the app leaves behind.
    pane = (f"{sys.executable} -m tui_tuner.cli run {preset} --run-dir {tmp_path / 'run'};"
            f" echo $? > {tmp_path / 'rc'}; sleep 60")
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "80", "-y", "24", pane], check=True,
                   env=_env(tmp_path))
    try:
        wait_for((tmp_path / "rc").exists, timeout=120, what="the app to exit")
        wait_for(lambda: (tmp_path / "rc").read_text().strip() != "", timeout=5, what="the exit code")
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-t", session], capture_output=True,
                                text=True).stdout
    finally:
        subprocess.run([*tmux, "kill-session", "-t", session], capture_output=True)
    assert (tmp_path / "rc").read_text().strip() == "2"
    lines = [x for x in screen.splitlines() if x.startswith("tui-tuner: error: ")]
    assert len(lines) == 1 and "bad.jsonl" in lines[0] and "Traceback" not in screen, screen

