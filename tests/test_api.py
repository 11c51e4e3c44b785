"""The control API without torch: a fake-trainer sweep served on its socket, driven by RemoteSweep and raw
requests — reads and deltas, every command, refusals as one-line errors, garbage, the token, stale sockets."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import wait_for

from tui_tuner.api import registry
from tui_tuner.api.client import ApiClient, CommandError, NotRunning, RemoteSweep
from tui_tuner.api.server import ApiServer
from tui_tuner.api.wire import dumps, snapshot_bytes, snapshot_from_wire, trial_to_wire
from tui_tuner.engine.sweep import Sweep

LONG = {"max_steps": 100_000}


@pytest.fixture
def served(fake_sweep: Callable[..., Sweep], serve: Callable[..., RemoteSweep]) -> tuple[Sweep, RemoteSweep]:
    sweep = fake_sweep(params=LONG, study={"n_trials": 3, "concurrency": 2}).start()
    wait_for(lambda: sum(t.state == "running" for t in sweep.trials()) == 2, what="two trials running")
    return sweep, serve(sweep)


def uds(sweep: Sweep) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sweep.run_dir / "control.sock")),
                        base_url="http://engine/v1")


def test_the_remote_snapshot_is_the_engines(served):
    sweep, remote = served
    wait_for(lambda: remote.snapshot().trials and remote.snapshot().trials[0].step > 5, what="progress")
    local, there = sweep.snapshot(), remote.snapshot()
    assert [(t.number, t.state, t.params) for t in there.trials] == [(t.number, t.state, t.params)
                                                                     for t in local.trials]
    assert there.study_name == local.study_name and there.concurrency == 2
    assert remote.preset == sweep.preset and remote.run_dir == sweep.run_dir
    assert remote.series(0, "loss", 50) and remote.lr_plan(0, 20)
    assert [e.kind for e in remote.events_since(0)][:1] == [e.kind for e in sweep.events_since(0)][:1]
    # the header's and the ETA's inputs (issue 14) reach a remote client too
    assert there.slots_used in (1, 2) and any(t.steps_per_s and t.steps_per_s > 0 for t in there.trials)


def test_unchanged_trials_are_sent_as_their_version_only(fake_sweep):
    sweep = fake_sweep(params={"max_steps": 5}, study={"n_trials": 3, "concurrency": 3}).start()
    assert sweep.wait(30)
    snap = sweep.snapshot()
    full = json.loads(snapshot_bytes(snap, {}, lambda t: dumps(trial_to_wire(t))))
    delta = json.loads(snapshot_bytes(snap, {t.number: t.version for t in snap.trials},
                                      lambda t: dumps(trial_to_wire(t))))
    assert all(t.get("same") for t in delta["trials"]) and len(json.dumps(delta)) < len(json.dumps(full)) / 2
    cache: dict[int, Any] = {}
    assert snapshot_from_wire(full, cache) == snap
    assert snapshot_from_wire(delta, cache) == snap  # rebuilt from the client's cache


def test_every_command_reaches_the_engine(served):
    sweep, remote = served
    remote.pause(0)
    wait_for(lambda: sweep.trial(0).state == "paused", what="pause over the API")
    assert remote.snapshot().trials[0].pause_requested  # the client saw its own command at once
    remote.resume_trial(0)
    wait_for(lambda: sweep.trial(0).state == "running", what="resume")
    remote.set_concurrency(3)
    assert sweep.concurrency == 3 and remote.concurrency == 3
    child = remote.fork(1, params={"learning_rate": 1e-3})
    assert sweep.trial(child).parent == 1 and sweep.trial(child).params.get("learning_rate", 1e-3) == 1e-3
    n = remote.enqueue({"learning_rate": 5e-4})
    assert sweep.trial(n).params == {"learning_rate": 5e-4}
    remote.kill(0)
    wait_for(lambda: sweep.trial(0).state == "killed", what="kill")


@pytest.mark.parametrize(("call", "message"), [
    (lambda r: r.pause(99), "no trial 99"),
    (lambda r: r.set_concurrency(0), "concurrency"),
    (lambda r: r.enqueue({"learning_rate": -1}), "learning_rate"),
    (lambda r: r.enqueue({"no_such_param": 1}), "no_such_param"),
])
def test_a_refused_command_is_the_engines_one_line(served, call, message):
    sweep, remote = served
    with pytest.raises(CommandError, match=message) as e:
        call(remote)
    assert "\n" not in str(e.value)
    assert sweep.snapshot().phase == "running" and sweep.trial(0).state == "running"


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), [
    ("POST", "/trials", b"{not json", 400, "not JSON"),
    ("POST", "/trials", b"[1, 2]", 400, "JSON object"),
    ("POST", "/trials", json.dumps({"params": {"learning_rate": [1]}}).encode(), 400, "params"),
    ("PUT", "/concurrency", json.dumps({"value": "3"}).encode(), 400, "integer"),
    ("POST", "/trials/zero/pause", b"", 400, "trial"),
    ("POST", "/trials/0/explode", b"", 404, "unknown trial command"),
    ("POST", "/trials/0/fork", json.dumps({"step": "latest"}).encode(), 400, "step"),
    ("GET", "/events?wait=soon", b"", 400, "wait"),
    ("GET", "/trials/0/series?key=bogus", b"", 409, "unknown metric"),
    ("GET", "/series?key=bogus&trials=0", b"", 409, "unknown metric"),
    ("GET", "/no/such/route", b"", 404, "Not Found"),
    ("DELETE", "/stop", b"", 405, "Method Not Allowed"),
    ("POST", "/trials", b"x" * 70_000, 413, "over"),
])
def test_malformed_requests_get_a_json_error_and_change_nothing(served, method, path, body, status, says):
    sweep, _remote = served
    before = [(t.number, t.state) for t in sweep.trials()]
    with uds(sweep) as c:
        r = c.request(method, path, content=body)
    assert r.status_code == status and says in r.json()["error"]
    assert [(t.number, t.state) for t in sweep.trials()] == before


def test_garbage_and_dropped_connections_do_not_disturb_the_engine(served):
    sweep, remote = served
    path = str(sweep.run_dir / "control.sock")
    for payload in (b"\x00\xffGARBAGE\r\n\r\n", b"GET /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Le",
                    b"POST /v1/trials HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"par"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(payload)
        s.close()  # mid-request
    step = sweep.trial(0).step
    wait_for(lambda: sweep.trial(0).step > step, what="training goes on")
    assert len(sweep.trials()) == 2  # the half-sent enqueue did nothing
    assert ApiClient(sweep.run_dir).request("GET", "/status")["phase"] == "running"
    remote.pause(1)  # and commands still work
    wait_for(lambda: sweep.trial(1).state == "paused", what="pause after garbage")


def test_the_socket_is_owner_only_and_announced(served):
    sweep, _remote = served
    mode = stat.S_IMODE(os.stat(sweep.run_dir / "control.sock").st_mode)
    assert mode == 0o600
    assert [e["run_dir"] for e in registry.entries() if e["pid"] == os.getpid()] == [str(sweep.run_dir.absolute())]


def test_a_command_in_one_client_reaches_another_clients_listener_fast(served, serve):
    sweep, a = served
    b = RemoteSweep(sweep.run_dir, refresh_s=5.0)  # a slow refresh: only the events long-poll can be quick
    try:
        seen: list[float] = []
        b.subscribe(lambda ev: seen.append(time.monotonic()) if ev.kind == "paused" else None)
        t0 = time.monotonic()
        a.pause(0)
        wait_for(lambda: bool(seen), timeout=5, what="the pause event in the other client")
        assert seen[0] - t0 < 0.5
        assert b.snapshot().trials[0].state == "paused"  # its snapshot was refreshed behind the event
    finally:
        b.close()


def test_a_stale_socket_is_replaced_and_closing_removes_it(fake_sweep, tmp_path):
    sweep = fake_sweep(params=LONG)
    sweep.claim()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sweep.run_dir / "control.sock"))  # a crashed engine's: bound, nobody listening
    stale.close()
    with pytest.raises(NotRunning, match="no sweep here"):
        ApiClient(sweep.run_dir).request("GET", "/info")
    server = ApiServer(sweep).start()
    assert ApiClient(sweep.run_dir).request("GET", "/info")["pid"] == os.getpid()
    server.close()
    assert not (sweep.run_dir / "control.sock").exists()
    assert not [e for e in registry.entries() if e["pid"] == os.getpid()]


def test_a_run_dir_too_deep_for_af_unix_gets_a_symlink_to_a_short_socket(fake_sweep, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    sweep = fake_sweep(deep, params=LONG).start()
    server = ApiServer(sweep).start()
    try:
        link = deep / "control.sock"
        assert link.is_symlink() and len(os.fsencode(os.readlink(link))) <= registry.MAX_SOCKET_PATH
        remote = RemoteSweep(deep)
        assert remote.snapshot().study_name == sweep.preset.study_name
        remote.close()
    finally:
        server.close()
    assert not link.exists() and not link.is_symlink()


def test_tcp_listening_needs_the_token(fake_sweep):
    sweep = fake_sweep(params=LONG).start()
    server = ApiServer(sweep, listen="127.0.0.1:0").start()
    try:
        url = server.tcp_url
        assert url and url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/v1/info").status_code == 401
        assert httpx.get(f"{url}/v1/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        remote = RemoteSweep(url, token=server.token)
        assert remote.run_dir == sweep.run_dir.absolute()
        remote.set_concurrency(1)
        assert sweep.concurrency == 1
        remote.close()
    finally:
        server.close()


def test_a_non_finite_metric_crosses_the_wire_as_itself(fake_sweep, serve, monkeypatch):
    import dataclasses

    from tests.fake_backend import FakeTrainer  # the module conftest's fake_sweep builds from

    step = FakeTrainer.step
    monkeypatch.setattr(FakeTrainer, "step", lambda self: dataclasses.replace(step(self), grad_norm=math.inf))
    sweep = fake_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    remote = serve(sweep)

    def grad_norm() -> float | None:
        trials = remote.snapshot().trials
        return trials[0].grad_norm if trials else None

    wait_for(lambda: grad_norm() == math.inf, timeout=10, what="an infinite grad norm on the client")


def test_when_the_engine_goes_the_client_says_so(fake_sweep, serve):
    sweep = fake_sweep(params={"max_steps": 30}, study={"n_trials": 1, "concurrency": 1}).start()
    server = ApiServer(sweep).start()
    remote = RemoteSweep(sweep.run_dir, refresh_s=0.1)
    gone: list[str] = []
    remote.subscribe(lambda ev: gone.append(ev.message) if ev.kind == "engine_gone" else None)
    assert sweep.wait(30)
    wait_for(lambda: remote.snapshot().phase == "finished", timeout=5, what="the finished phase")
    server.close()
    wait_for(lambda: bool(gone), timeout=15, what="engine_gone")
    assert remote.gone == "the sweep finished" and remote.snapshot().phase == "finished"
    assert remote.series(0) == []  # no error for a chart drawn after the engine left
    remote.close()


def test_stop_over_the_api_interrupts_every_running_trial(served):
    sweep, remote = served
    remote.stop(timeout=30)
    assert remote.snapshot().phase == "stopped"
    assert {t.state for t in sweep.trials()} <= {"interrupted", "waiting"}
    assert remote.resumable


def test_a_chart_of_every_trial_is_one_request_and_reads_wake_nobody(served):
    sweep, remote = served
    sweep.backend.gate.clear()  # every trial holds between steps: no event can wake the poll below
    time.sleep(0.3)
    b = ApiClient(sweep.run_dir)
    woke: list[Any] = []
    import threading

    def poll() -> None:  # another client's long-poll, from a sequence number past every event
        woke.append(b.request("GET", "/events", params={"since": 10**9, "wait": 1.5}, timeout=5))

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.2)
    calls: list[str] = []
    real = remote.client.request
    remote.client.request = lambda method, path, **kw: (calls.append(path), real(method, path, **kw))[1]
    first, second = remote.series(0, "loss", 50), remote.series(1, "loss", 50)
    assert first and second and calls == ["/series"]  # both trials in one round trip
    t.join()
    assert woke and woke[0]["changed"] is False  # a read is not a command: nobody refetches for it
    sweep.backend.gate.set()
    b.close()


def test_a_vanished_engine_never_raises_into_the_ui(fake_sweep):
    sweep = fake_sweep(params=LONG).start()
    server = ApiServer(sweep).start()
    remote = RemoteSweep(sweep.run_dir, refresh_s=0.1)
    wait_for(lambda: bool(remote.series(0, "loss", 20)), timeout=10, what="a first series")
    kept = remote.series(0, "loss", 20)
    server.close()
    time.sleep(1.1)  # past the cache's freshness: the next call goes to the (gone) engine
    assert remote.series(0, "loss", 20) == kept  # the last copy, not an exception on the app's thread
    assert remote.lr_plan(0, 20) == [] or remote.lr_plan(0, 20)
    remote.close()


def test_a_bad_listen_address_is_one_line_and_leaves_no_socket(fake_sweep):
    from tui_tuner.api.server import ListenError

    sweep = fake_sweep(params=LONG)
    sweep.claim()
    for bad in ("127.0.0.1:99999", "nohost", "127.0.0.1:http"):
        with pytest.raises(ListenError, match="--listen"):
            ApiServer(sweep, listen=bad).start()
        assert not (sweep.run_dir / "control.sock").exists()


def test_gpu_placement_fields_cross_the_wire_both_ways():
    from tui_tuner.engine.snapshot import GpuView, SweepSnapshot, TrialSnapshot

    t = TrialSnapshot(number=3, state="waiting", step=0, total_steps=10, params={}, overrides={}, steps_per_s=2.5,
                      need_bytes=30 << 30, wait_reason="waiting for GPU memory: needs 30.0G, most free 24.0G on cuda:6")
    snap = SweepSnapshot(study_name="s", sampler="tpe", pruner="none", concurrency=2, n_trials=4, started_at=0.0,
                         elapsed=1.0, finished=False, trials=(t,), slots_used=1,
                         gpus=(GpuView(0, 80 << 30, 20 << 30, 0, (1, 2)), GpuView(1, 80 << 30, 5 << 30, 75 << 30)))
    wire = json.loads(snapshot_bytes(snap, {}, lambda x: dumps(trial_to_wire(x))))
    assert wire["gpus"][0] == {"index": 0, "total": 80 << 30, "free": 20 << 30, "foreign": 0, "trials": [1, 2]}
    assert snapshot_from_wire(wire, {}) == snap
