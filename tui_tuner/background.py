"""`run` / `resume` without --headless: the engine starts as a background process and the app (or nothing,
with --detach) attaches to it, so the sweep outlives this terminal."""

from __future__ import annotations

import argparse
import contextlib
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tui_tuner.daemon import ENGINE_LOG, STORAGE_ENV, TOKEN_ENV, last_error, spawn_engine, wait_until_serving

if TYPE_CHECKING:
    from tui_tuner.preset import Preset


def listening_hint(url: str, token: str) -> str:
    port = url.rpartition(":")[2]
    return (f"control API on {url}; its token (shown this once): {token}\n"
            f"  from another machine: ssh -L {port}:127.0.0.1:{port} THIS_BOX, then "
            f"TUI_TUNER_TOKEN={token} tui-tuner attach http://127.0.0.1:{port}")


def engine_argv(args: argparse.Namespace) -> tuple[Path, Preset, list[str]]:
    """Check what the user asked for here, where errors reach them as one line before anything runs, and build
    the engine's command line from it: (run dir, preset, argv)."""
    from tui_tuner.engine.errors import SweepError
    from tui_tuner.engine.run_dir import RunDir, RunDirError
    from tui_tuner.preset import Preset, PresetError, resolve_preset_path

    if args.listen:
        from tui_tuner.api.server import parse_listen

        parse_listen(args.listen)  # a bad address is the user's one line here, not an engine that died
    tail = [f"--listen={args.listen}"] if args.listen else []
    if getattr(args, "n_trials", None) is not None:
        tail += ["--n-trials", str(args.n_trials)]
    if args.cmd == "worker":
        from tui_tuner.worker import open_worker, run_dir_of

        run_dir = run_dir_of(args)
        preset = open_worker(args).preset  # its one-line errors here; the engine opens it again
        if args.concurrency is not None:
            tail += ["--concurrency", str(args.concurrency)]
        return run_dir, preset, ["worker", "--study", args.study, f"--run-dir={run_dir}", *tail]
    if args.cmd == "resume":
        run_dir = Path(args.run_dir)
        layout = RunDir(run_dir)
        try:
            layout.read_meta()
        except RunDirError as e:
            raise SweepError(str(e)) from None
        preset = Preset.load(layout.preset, check_paths=False)
        if args.resume_paused:
            tail.append("--resume-paused")
        return run_dir, preset, ["resume", str(run_dir), *tail]
    path = resolve_preset_path(args.preset)
    preset = Preset.load(path, args.overrides)
    if args.n_trials is not None:
        preset = Preset.from_dict(preset.model_dump(), str(path), [f"study.n_trials={args.n_trials}"])
    run_dir = Path(args.run_dir or Path("runs") / preset.study_name)
    if RunDir(run_dir).meta.exists():
        raise PresetError(f"{run_dir} already holds a run: `tui-tuner resume {run_dir}` or pass --run-dir")
    sets = [f"--set={o}" for o in args.overrides]
    # --storage goes to the engine through STORAGE_ENV (see start_in_background), never its argv
    join = ["--join"] if getattr(args, "join", False) else []
    return run_dir, preset, ["run", str(path.absolute()), f"--run-dir={run_dir}", *sets, *join, *tail]


DETACH_WAIT_S = 5.0  # --detach waits this long for the model to load, to report a quick failure as one line


def wait_loaded(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float) -> bool:
    """True once the engine has loaded (left its 'loading' phase), False if it is still loading after `timeout`;
    EngineFailed with its one line if it died meanwhile."""
    from tui_tuner.api.client import ApiClient, CommandError, NotRunning
    from tui_tuner.daemon import EngineFailed

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = ApiClient(run_dir, timeout=2.0)
        try:
            if client.request("GET", "/status")["phase"] != "loading":
                return True
        except (NotRunning, CommandError):
            if proc.poll() is not None:
                raise EngineFailed(last_error(run_dir) or f"the engine exited with code {proc.returncode}: see "
                                   f"{run_dir / ENGINE_LOG}") from None
        finally:
            client.close()
        time.sleep(0.1)
    return False


def refuse_if_running(run_dir: Path) -> None:
    from tui_tuner.api.client import ApiClient, NotRunning
    from tui_tuner.engine.errors import SweepError

    client = ApiClient(run_dir, timeout=2.0)
    try:
        info = client.request("GET", "/info")
    except NotRunning:
        return
    finally:
        client.close()
    raise SweepError(f"{run_dir} is running already (engine pid {info.get('pid')}): tui-tuner attach {run_dir}")


def start_in_background(args: argparse.Namespace) -> int:
    from tui_tuner.report import say

    run_dir, preset, argv = engine_argv(args)
    refuse_if_running(run_dir)
    token = secrets.token_urlsafe(24) if args.listen else None

    # Secrets reach the engine through its environment, never its argv: `ps` shows argv to every user.
    secret = {k: v for k, v in ((TOKEN_ENV, token), (STORAGE_ENV, getattr(args, "storage", None))) if v}

    def spawn() -> subprocess.Popen[bytes]:
        return spawn_engine(argv, run_dir, secret)

    import sys

    if args.detach:
        proc = spawn()
        wait_until_serving(proc, run_dir)
        loaded = wait_loaded(proc, run_dir, DETACH_WAIT_S)
        state = "started" if loaded else f"is loading (still, after {DETACH_WAIT_S:.0f}s)"
        lines = [f"sweep {preset.study_name} {state} in the background (engine pid {proc.pid})",
                 f"  run dir: {run_dir}", f"  attach:  tui-tuner attach {run_dir}",
                 f"  status:  tui-tuner ctl {run_dir} status", f"  stop:    tui-tuner ctl {run_dir} stop",
                 f"  log:     {run_dir / ENGINE_LOG}"]
        if token:
            lines.append(listening_hint(f"http://{args.listen}", token))
        say("\n".join(lines), sys.stdout)
        return 0
    from tui_tuner.api.client import RemoteSweep
    from tui_tuner.daemon import EngineFailed
    from tui_tuner.ui.app import run_remote_app

    remote = RemoteSweep(run_dir, preset=preset, connect=False)
    # The engine starts once the app has painted (load runs after the first screen): its imports would take
    # the CPU from the app's first paint.
    procs: list[subprocess.Popen[bytes]] = []
    spawned = threading.Event()

    def died() -> str | None:
        proc = procs[0]
        if proc.poll() is None:
            return None
        return last_error(run_dir) or f"the engine exited with code {proc.returncode}: see {run_dir / ENGINE_LOG}"

    def load() -> None:
        try:
            procs.append(spawn())
        finally:
            spawned.set()
        proc = procs[0]
        wait_until_serving(proc, run_dir)
        remote.connect()
        try:
            remote.wait_loaded(died)
        except ValueError as e:
            # Its socket goes a moment before the engine exits: wait for the exit, so the user gets the
            # engine's own error (a bad data file) rather than "the engine is gone".
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            raise EngineFailed(died() or str(e)) from None

    hint = listening_hint(f"http://{args.listen}", token) if token else None
    if hint:
        say(hint, sys.stderr)
    code = run_remote_app(remote, load=load)
    spawned.wait(10)  # a hangup a moment after launch: the engine must still be started, as "detached" says
    if hint:  # the app's screen covered it: again, now that the shell is back
        say(hint, sys.stderr)
    return code
