"""Startup time: median wall time of `tui-tuner --help`, and of `tui-tuner run tiny-demo` until its first screen."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET_S = 0.3
CLI = [sys.executable, "-m", "tui_tuner.cli"]


def help_time() -> float:
    t0 = time.perf_counter()
    subprocess.run([*CLI, "--help"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def first_paint_time(run_dir: Path, session: str) -> float:
    """From launching the app in an 80x24 tmux pane until the status line (the study name, then what is
    loading) is on the screen; polled every 10 ms, so the figure is at most that late."""
    cmd = " ".join([*CLI, "run", "tiny-demo", "--run-dir", str(run_dir)])
    t0 = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)
    pid = int(subprocess.run(["tmux", "display-message", "-p", "-t", session, "#{pane_pid}"], capture_output=True,
                             text=True).stdout)
    try:
        while time.perf_counter() - t0 < 60:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
            if "tiny-demo" in screen and ("loading" in screen or "conc" in screen):
                return time.perf_counter() - t0
            time.sleep(0.01)
        raise RuntimeError(f"no first screen after 60 s:\n{screen}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)  # the app detaches
        _wait_gone(pid)
        _stop_engine(run_dir)  # the background engine trains on without the app: its CPU is the next run's


def _stop_engine(run_dir: Path, timeout: float = 60) -> None:
    """Stop the run's background engine once it answers (it may still be starting) and wait until it is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run([*CLI, "ctl", str(run_dir), "stop"], capture_output=True).returncode == 0:
            return
        if not (run_dir / "engine.log").exists():
            return
        time.sleep(0.2)


def _wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ.pop("TUI_TUNER_HEADLESS", None)
    help_times = [help_time() for _ in range(args.runs)]
    med = statistics.median(help_times)
    print(f"tui-tuner --help: median {med * 1000:.0f} ms over {args.runs} runs "
          f"(min {min(help_times) * 1000:.0f}, max {max(help_times) * 1000:.0f}); "
          f"target <= {HELP_TARGET_S * 1000:.0f} ms"
          + ("" if med <= HELP_TARGET_S else "  MISSED"))
    if shutil.which("tmux") is None:
        print("first paint: skipped (needs tmux)")
        return
    # A session that outlives the runs: tmux's server exits with its last session, and a new session racing
    # that exit fails.
    holder = f"tui-tuner-startup-{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", holder, "sleep 3600"], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paints = [first_paint_time(Path(tmp) / f"run-{i}", f"{holder}-{i}") for i in range(args.runs)]
    finally:
        subprocess.run(["tmux", "kill-session", "-t", holder], capture_output=True)
    print(f"tui-tuner run tiny-demo, launch to first screen at 80x24: median {statistics.median(paints) * 1000:.0f} ms"
          f" over {args.runs} runs (min {min(paints) * 1000:.0f}, max {max(paints) * 1000:.0f})")


if __name__ == "__main__":
    main()
