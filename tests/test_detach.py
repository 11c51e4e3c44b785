"""Detach, attach, ls and ctl against real background engines (subprocesses, tmux): the sweep outlives its terminal."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import tiny_preset_dict
from tests.test_signals import NEEDS_TMUX, SHELL
from tui_tuner.api.client import ApiClient, CommandError, NotRunning
from tui_tuner.api.registry import connect_path
from tui_tuner.preset import dump_toml

pytestmark = pytest.mark.slow
LONG = 100_000  # steps: trials that are still running whenever a test looks
ACTIVE = ("starting", "running")


# -- helpers --------------------------------------------------------------------------------------------------
def _until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `pred` until it returns something truthy (returned); AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def _alive(pid: int) -> bool:
    """Alive and not a zombie (an engine whose parent exited may wait to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _lock_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / ".lock").read_text().strip())
    except (OSError, ValueError):
        return None


def _preset(where: Path, steps: int = LONG, n_trials: int = 2, concurrency: int = 2) -> Path:
    path = where / f"preset-{steps}-{n_trials}-{concurrency}.toml"
    path.write_text(dump_toml(tiny_preset_dict(params={"max_steps": steps, "eval_interval": 50},
                                               study={"n_trials": n_trials, "concurrency": concurrency},
                                               checkpoints={"interval": 50, "keep": 2})))
    return path


def _api(run_dir: Path, method: str = "GET", path: str = "/snapshot", **kw: Any) -> Any:
    """One request in this process (cheaper than a CLI run when polling); None when nothing answers."""
    client = ApiClient(run_dir, timeout=5.0)
    try:
        return client.request(method, path, **kw)
    except (NotRunning, CommandError):
        return None
    finally:
        client.close()


def _trials(run_dir: Path) -> dict[int, dict[str, Any]]:
    snap = _api(run_dir)
    return {t["number"]: t for t in snap["trials"]} if snap else {}


def _all_running(run_dir: Path, n: int) -> dict[int, dict[str, Any]] | None:
    """The trials once `n` of them are running and have taken a step."""
    trials = _trials(run_dir)
    running = {k: t for k, t in trials.items() if t["state"] == "running" and t["step"] > 0}
    return running if len(running) >= n else None


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _journal(run_dir: Path) -> list[Any]:
    import optuna

    backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))
    storage = optuna.storages.JournalStorage(backend)
    return optuna.load_study(study_name="test", storage=storage).trials


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class Box:
    """This module's engines: one runtime dir (what `ls` reads), the CLI, tmux on a private server, and a
    cleanup that ends every engine and session started here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "runtime"
        self.tmux_server = f"tui-tuner-test-{os.getpid()}"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CUDA_VISIBLE_DEVICES": "",
                    "TUI_TUNER_RUNTIME_DIR": str(self.runtime)}
        self.env.pop("TUI_TUNER_HEADLESS", None)
        self.run_dirs: list[Path] = []
        self.pids: set[int] = set()
        self.sessions: list[str] = []

    def cli(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tui_tuner.cli", *map(str, args)], capture_output=True,
                              text=True, env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)

    def track(self, run_dir: Path) -> Path:
        self.run_dirs.append(run_dir)
        return run_dir

    def detach(self, *args: str | Path) -> int:
        """`run PRESET --run-dir RUN --detach` or `resume RUN --detach`: the engine's pid."""
        self.track(Path(args[args.index("--run-dir") + 1] if "--run-dir" in args else args[1]))
        done = self.cli(*args, "--detach")
        assert done.returncode == 0, done.stderr
        pid = int(done.stdout.split("engine pid ")[1].split(")")[0])
        self.pids.add(pid)
        return pid

    # -- tmux --------------------------------------------------------------------------------------------------
    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.tmux_server, *args], capture_output=True, text=True, check=check)

    def pane(self, name: str, *argv: str | Path) -> str:
        """A new 80x24 session running `argv` with this box's environment (set on the command line: a tmux
        server started earlier would hand a pane its own)."""
        keep = ("PYTHONPATH", "CUDA_VISIBLE_DEVICES", "TUI_TUNER_RUNTIME_DIR", "TUI_TUNER_CACHE", "HOME", "PATH")
        cmd = ["env", "-u", "TUI_TUNER_HEADLESS", *(f"{k}={self.env[k]}" for k in keep if k in self.env),
               *map(str, argv)]
        session = f"{name}-{len(self.sessions)}"
        self.sessions.append(session)
        self.tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", " ".join(cmd))
        return session

    def screen(self, session: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", session, check=False).stdout

    # -- cleanup -----------------------------------------------------------------------------------------------
    def end(self, run_dir: Path, grace: float = 30.0) -> None:
        """Ask the engine at `run_dir` to stop; SIGKILL it if it has not exited after `grace` seconds."""
        pid = _lock_pid(run_dir)
        _api(run_dir, "POST", "/stop")
        deadline = time.monotonic() + grace
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid:
            _kill(pid)

    def close(self) -> None:
        for s in self.sessions:
            self.tmux("kill-session", "-t", s, check=False)
        for run_dir in self.run_dirs:
            self.end(run_dir)
        for pid in self.pids:
            _kill(pid)
        self.tmux("kill-server", check=False)
        with contextlib.suppress(OSError):  # the server's socket file outlives it
            (Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / self.tmux_server).unlink()


def _kill(pid: int) -> None:
    """SIGKILL an engine still alive (only if it is one of ours: a tui_tuner process)."""
    with contextlib.suppress(OSError):
        if _alive(pid) and b"tui_tuner" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    b = Box(tmp_path_factory.mktemp("detach"))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def fresh(box: Box, tmp_path: Path) -> Iterator[Box]:
    """The module's box, and every engine a test starts in its tmp dir is ended when the test ends."""
    before = len(box.run_dirs), len(box.sessions)
    yield box
    for s in box.sessions[before[1]:]:
        box.tmux("kill-session", "-t", s, check=False)
    for run_dir in box.run_dirs[before[0]:]:
        box.end(run_dir)


@pytest.fixture(scope="module")
def shared(box: Box) -> Path:
    """One detached engine with two long trials, shared by the checks that leave it running (stopped by the
    last test, `ctl stop`, or by the box at the end)."""
    run_dir = box.root / "shared"
    box.detach("run", _preset(box.root), "--run-dir", run_dir)
    _until(lambda: _all_running(run_dir, 2), 120, "both shared trials running")
    return run_dir


# -- a, d: the terminal goes away, the sweep does not -----------------------------------------------------------
@NEEDS_TMUX
def test_sighup_detaches_the_tui_and_two_attached_clients_see_each_others_pause(fresh: Box, tmp_path: Path) -> None:
    box, run_dir, rc_file = fresh, fresh.track(tmp_path / "run"), tmp_path / "rc"
    (tmp_path / "shell.py").write_text(SHELL)
    tui = box.pane("tui", sys.executable, tmp_path / "shell.py", rc_file, sys.executable, "-m", "tui_tuner.cli",
                   "run", _preset(tmp_path), "--run-dir", run_dir)
    _until(lambda: _all_running(run_dir, 2), 120, "both trials running")
    assert "conc 2" in box.screen(tui)  # the app, not a headless client
    engine = _lock_pid(run_dir)
    assert engine is not None and engine != int((tmp_path / "rc.pid").read_text())

    box.tmux("kill-session", "-t", tui)  # the terminal goes away: SIGHUP
    _until(rc_file.exists, 30, "the app to exit")
    assert int(rc_file.read_text()) == 0  # detached, not stopped

    # The engine trains on: steps grow in `ctl status --json`, and so do the trials' metrics files.
    metrics = run_dir / "trials" / "0" / "metrics.jsonl"
    size = metrics.stat().st_size
    first = json.loads(box.cli("ctl", run_dir, "status", "--json").stdout)
    steps = {t["number"]: t["step"] for t in first["trials"]}
    time.sleep(2)
    later = json.loads(box.cli("ctl", run_dir, "status", "--json").stdout)
    assert _alive(engine) and later["phase"] == "running"
    assert all(t["state"] == "running" and t["step"] > steps[t["number"]] for t in later["trials"]), later["trials"]
    _until(lambda: metrics.stat().st_size > size, 30, "metrics.jsonl to grow")

    # Two new terminals attach: both show the same trials; `p` in one pauses the selected trial, the other sees it.
    a = box.pane("attach-a", sys.executable, "-m", "tui_tuner.cli", "attach", run_dir)
    b = box.pane("attach-b", sys.executable, "-m", "tui_tuner.cli", "attach", run_dir)

    def rows(session: str) -> dict[int, str]:
        out = {}
        for line in box.screen(session).splitlines():
            words = line.split()  # number, state, device, step/total, ...
            if len(words) >= 4 and words[0].isdigit() and words[1] in ("running", "paused") and "/" in words[3]:
                out[int(words[0])] = words[1]
        return out

    for s in (a, b):
        _until(lambda s=s: set(rows(s)) == {0, 1} and set(rows(s).values()) == {"running"}, 60,
               f"{s} to show both trials running")
    box.tmux("send-keys", "-t", a, "p")
    _until(lambda: any(t["state"] == "paused" for t in _trials(run_dir).values()), 20, "a trial to pause")
    status = json.loads(box.cli("ctl", run_dir, "status", "--json").stdout)["trials"]
    assert [t["state"] for t in status].count("paused") == 1, status
    paused = next(t["number"] for t in status if t["state"] == "paused")
    seen = time.monotonic()
    _until(lambda: rows(b).get(paused) == "paused", 5, "the other client to show the pause", every=0.1)
    assert time.monotonic() - seen < 2.5
    assert rows(a).get(paused) == "paused" and rows(b)[1 - paused] == "running"


# -- c: --detach returns at once, the sweep finishes without anyone ---------------------------------------------
def test_detach_returns_at_once_and_the_sweep_finishes_on_its_own(fresh: Box, tmp_path: Path) -> None:
    # A run dir whose socket path is too long for AF_UNIX: control.sock is a link into the runtime dir.
    run_dir = tmp_path / ("long-" * 16) / "run"
    t0 = time.monotonic()
    pid = fresh.detach("run", _preset(tmp_path, steps=30), "--run-dir", run_dir)
    assert time.monotonic() - t0 < 15
    link = run_dir / "control.sock"
    if link.is_symlink():
        assert connect_path(link).parent == fresh.runtime
    assert stat.S_ISSOCK(os.stat(link).st_mode) and os.stat(link).st_mode & 0o777 == 0o600
    _until(lambda: not _alive(pid), 50, "the sweep to finish and its engine to exit", every=0.5)
    done = fresh.cli("ctl", run_dir, "status")
    assert done.returncode == 3 and f"not running: tui-tuner resume {run_dir}" in done.stderr
    assert not link.exists() and not link.is_symlink()
    trials = _journal(run_dir)
    assert len(trials) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), trials
    assert "Traceback" not in (run_dir / "engine.log").read_text()


def test_a_finished_sweep_stays_up_while_a_client_watches_and_exits_after(fresh: Box, tmp_path: Path) -> None:
    """The app attached to a sweep that spends its budget keeps its view (results, fork of a finished trial):
    the engine exits only once no client has asked anything for a while."""
    run_dir = tmp_path / "linger"
    pid = fresh.detach("run", _preset(tmp_path, steps=20), "--run-dir", run_dir)
    _until(lambda: (_api(run_dir) or {}).get("finished"), 60, "the sweep to finish while a client polls", every=0.3)
    watched_until = time.monotonic() + 4.0
    while time.monotonic() < watched_until:  # a client at 3 Hz, as the app is
        assert _api(run_dir) is not None and _alive(pid)
        time.sleep(0.3)
    _until(lambda: not _alive(pid), 30, "the engine to exit once nobody watches", every=0.5)
    assert "stays up while a client is attached" in (run_dir / "engine.log").read_text()


# -- e, f, i: the shared engine ----------------------------------------------------------------------------------
def test_socket_is_owner_only(shared: Path, box: Box) -> None:
    mode = os.stat(shared / "control.sock").st_mode
    assert stat.S_ISSOCK(mode) and mode & 0o777 == 0o600
    assert os.stat(box.runtime).st_mode & 0o777 == 0o700


def test_garbage_and_half_requests_change_nothing(shared: Path, box: Box) -> None:
    path = str(connect_path(shared / "control.sock"))
    before = _trials(shared)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"\x00\xffGARBAGE\r\n\r\n")
        assert s.recv(4096).startswith((b"HTTP/1.1 400", b""))  # an error reply, or just closed
    for half in (b"", b"GET /v1/status HTTP/1.1\r\nHost: engine\r\nContent-Le", b"POST /v1/trials/0/pause HTTP/1."):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(half)  # and hang up mid-request
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://engine", timeout=10) as http:
        for method, route, body, code in (("PUT", "/v1/concurrency", b"{not json", 400),
                                          ("POST", "/v1/trials", b"[1, 2]", 400),
                                          ("PUT", "/v1/concurrency", b'{"value": "many"}', 400),
                                          ("GET", "/v1/no-such-route", None, 404),
                                          ("POST", "/v1/trials/0/frobnicate", None, 404),
                                          ("GET", "/v1/trials/zero/series", None, 400),
                                          ("GET", "/v2/status", None, 404)):
            r = http.request(method, route, content=body, headers={"content-type": "application/json"})
            assert r.status_code == code, (route, r.text)
            assert isinstance(r.json()["error"], str) and r.json()["error"], (route, r.text)
    done = box.cli("ctl", shared, "status")
    assert done.returncode == 0 and "running" in done.stdout, done.stderr
    after = _trials(shared)
    assert _alive(_lock_pid(shared) or 0) and after.keys() == before.keys()
    assert all(t["state"] == "running" and not t["pause_requested"] for t in after.values()), after
    assert all(after[n]["step"] > before[n]["step"] for n in after)  # training went on meanwhile
    assert _api(shared)["concurrency"] == 2


def test_a_command_cut_off_mid_body_changes_nothing(shared: Path) -> None:
    path = str(connect_path(shared / "control.sock"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(b"POST /v1/trials/0/pause HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
    time.sleep(1.0)
    try:
        t = _trials(shared)[0]
        assert t["state"] == "running" and not t["pause_requested"], t
    finally:  # leave the shared engine as it was
        with contextlib.suppress(AssertionError):
            _until(lambda: _trials(shared)[0]["state"] == "paused" or not _trials(shared)[0]["pause_requested"], 10,
                   "the pause to settle")
        if _trials(shared)[0]["state"] == "paused":
            _api(shared, "POST", "/trials/0/resume")


@pytest.mark.parametrize("command", [["pause", "999"], ["kill", "999"], ["concurrency", "0"],
                                     ["fork", "999", "--set", "learning_rate=1e-3"],
                                     ["enqueue", "--set", "no_such_param=1"]])
def test_ctl_refuses_a_bad_command_in_one_line(shared: Path, box: Box, command: list[str]) -> None:
    done = box.cli("ctl", shared, *command)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert _one_line(done.stderr).startswith("tui-tuner: error: "), done.stderr
    if command[0] == "concurrency":
        assert _api(shared)["concurrency"] == 2


# -- g, h: ls and a crashed engine's socket -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def second(box: Box) -> Path:
    """Another detached engine (one trial at a time), killed -9 by the `ls` test."""
    run_dir = box.root / "second"
    box.detach("run", _preset(box.root, concurrency=1), "--run-dir", run_dir)
    _until(lambda: _all_running(run_dir, 1), 120, "the second engine's trial running")
    return run_dir


def _ls(box: Box) -> dict[str, str]:
    """`ls` as {run dir: pid}."""
    done = box.cli("ls")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if lines == ["no sweep is running on this box (for this user)"]:
        return {}
    assert lines[0].split()[:2] == ["run", "dir"], done.stdout
    return {str(Path(x.split()[0]).absolute()): x.split()[1] for x in lines[1:]}


def test_ls_lists_exactly_the_live_sweeps(shared: Path, second: Path, box: Box) -> None:
    pids = {str(shared): str(_lock_pid(shared)), str(second): str(_lock_pid(second))}
    assert _ls(box) == pids
    dead = int(pids[str(second)])
    os.kill(dead, signal.SIGKILL)  # a crash: no chance to remove its socket or announcement
    _until(lambda: not _alive(dead), 10, "the killed engine to die")
    assert (second / "control.sock").exists()  # stale
    reaped = not Path(f"/proc/{dead}").exists()  # an orphan's zombie may linger until init reaps it
    assert _ls(box) == {str(shared): pids[str(shared)]}
    if reaped:
        assert not (box.runtime / f"{dead}.json").exists()  # the dead one's announcement is cleared


def test_a_stale_socket_says_resume_and_resume_replaces_it(second: Path, box: Box) -> None:
    old = _lock_pid(second)
    if old and _alive(old):  # run on its own: crash it here
        os.kill(old, signal.SIGKILL)
        _until(lambda: not _alive(old), 10, "the killed engine to die")
    assert (second / "control.sock").exists()
    for args in (["ctl", second, "status"], ["attach", second]):
        done = box.cli(*args)
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        assert f"not running: tui-tuner resume {second}" in _one_line(done.stderr)
    pid = box.detach("resume", second)
    assert pid != old and _api(second, path="/info")["pid"] == pid
    done = box.cli("ctl", second, "status")
    assert done.returncode == 0, done.stderr
    assert stat.S_ISSOCK(os.stat(second / "control.sock").st_mode)
    _kill(pid)  # a graceful stop is the last test's; this one would first wait for the model to load


# -- b: ctl stop (the last test: it ends the shared engine) -------------------------------------------------------
def test_ctl_stop_ends_the_engine_with_every_trial_interrupted(shared: Path, box: Box) -> None:
    pid = _lock_pid(shared)
    assert pid is not None and _alive(pid)
    running = set(_until(lambda: _all_running(shared, 2), 60, "both shared trials running"))
    done = box.cli("ctl", shared, "stop")
    assert done.returncode == 0 and "stopped" in done.stdout, (done.stdout, done.stderr)
    _until(lambda: not _alive(pid), 20, "the engine to exit")
    assert not (shared / "control.sock").exists()
    gone = box.cli("ctl", shared, "status")
    assert gone.returncode == 3 and f"not running: tui-tuner resume {shared}" in gone.stderr
    ends = {e["trial"]: e["event"] for e in _events(shared) if e["event"] in
            ("interrupted", "complete", "pruned", "killed", "failed")}
    assert {n: ends.get(n) for n in running} == dict.fromkeys(running, "interrupted"), ends
    stored = {t.number: t for t in _journal(shared)}
    assert all(stored[n].state.name == "RUNNING" and "interrupted_at_step" in stored[n].user_attrs
               for n in running), stored  # not told to Optuna: `resume` continues them
    table = (shared / "engine.log").read_text().split("sweep stopped")[-1]
    assert all(any(line.split()[:2] == [str(n), "interrupted"] for line in table.splitlines()) for n in running), table
