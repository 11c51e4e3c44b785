"""The engine as a background process: spawn it (its own session, output to <run_dir>/engine.log) and wait
until its control API answers, or report the one line it died with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ENGINE_LOG = "engine.log"


class EngineFailed(ValueError):
    """The background engine exited before it answered (a ValueError: the CLI prints it in one line)."""


TOKEN_ENV = "TUI_TUNER_SERVE_TOKEN"  # the --listen token, read (and removed) once by the engine
STORAGE_ENV = "TUI_TUNER_STORAGE"  # a --storage URL: the flag's default, so the engine gets it without argv


def spawn_engine(argv: list[str], run_dir: Path, secret_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `tui-tuner <argv> --headless --as-engine` detached from this terminal: a new session (a hangup or
    Ctrl-C here never reaches it), stdin from /dev/null, stdout and stderr appended to engine.log. `secret_env`
    (the --listen token, a --storage URL with its password) goes to its environment only."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / ENGINE_LOG, "ab")  # noqa: SIM115 - handed to the child, closed here once it has it
    try:
        log.write(f"\n-- {time.strftime('%Y-%m-%d %H:%M:%S')} engine starting: tui-tuner {' '.join(argv)}\n"
                  .encode())
        log.flush()
        env = {**os.environ, **(secret_env or {}), "TUI_TUNER_HEADLESS": "1", "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([sys.executable, "-m", "tui_tuner.cli", *argv, "--headless", "--as-engine"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    finally:
        log.close()


def last_error(run_dir: Path) -> str | None:
    """The engine's own one-line error, from the end of its log."""
    try:
        tail = (run_dir / ENGINE_LOG).read_bytes()[-8192:].decode(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.removeprefix("tui-tuner: error: ") for line in tail if line.startswith("tui-tuner: error: ")]
    return errors[-1] if errors else None


def wait_until_serving(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float = 120.0) -> None:
    """Return once the engine answers on its socket; EngineFailed with its error if it exits first."""
    from tui_tuner.api.client import ApiClient, NotRunning

    deadline = time.monotonic() + timeout
    while True:
        if (code := proc.poll()) is not None:
            raise EngineFailed(last_error(run_dir) or f"the engine exited with code {code} before it started "
                               f"serving: see {run_dir / ENGINE_LOG}")
        client = ApiClient(run_dir, timeout=2.0)  # anew each time: control.sock may become a symlink
        try:
            client.request("GET", "/info")
            return
        except NotRunning:
            pass
        finally:
            client.close()
        if time.monotonic() > deadline:
            raise EngineFailed(f"the engine did not start serving within {timeout:.0f}s: see {run_dir / ENGINE_LOG}")
        time.sleep(0.05)
