"""--storage postgresql://: a real server (tests/pg_server.py), bad URLs as one line, a sweep run, resumed and
exported on it, and a pool that survives the server dropping its connections."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import optuna
import psycopg
import pytest

from tests.conftest import tiny_preset_dict
from tests.test_cli import _one_line
from tui_tuner.cli import main
from tui_tuner.preset import dump_toml


def _preset(tmp_path: Path, **sections: dict) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(dump_toml(tiny_preset_dict(**sections)))
    return path


def _bad_urls(pg) -> list[tuple[str, str]]:
    return [
        (pg.url("t1", password="wrong"), 'password authentication failed for user "postgres"'),
        (pg.url("no_such_db"), 'database "no_such_db" does not exist'),
        (f"postgresql://postgres@127.0.0.1:{_closed_port()}/x", "Connection refused"),
        ("postgresql://postgres@no-such-host.invalid/x", "failed to resolve host 'no-such-host.invalid'"),
        ("mysql://root@localhost/x", "no database driver for mysql://"),
        ("bogus://x", "unknown database kind 'bogus'"),
    ]


def _closed_port() -> int:
    from tests.pg_server import _free_port

    return _free_port()  # free: nothing listens there


def test_bad_storage_urls_are_one_line_exit_2_and_write_nothing(pg_server, tmp_path, capsys):
    pg_server.create_db()  # t1 exists: its wrong-password case fails on the password, not the name
    preset = _preset(tmp_path)
    for i, (url, says) in enumerate(_bad_urls(pg_server)):
        run_dir = tmp_path / f"run{i}"
        assert main(["run", str(preset), "--headless", "--run-dir", str(run_dir), "--storage", url]) == 2, url
        err = capsys.readouterr().err
        _one_line(err, says)
        assert "wrong" not in err and pg_server.url("t1").split(":")[2].split("@")[0] not in err  # no password
        assert not run_dir.exists(), url


def test_a_sweep_on_postgresql_runs_resumes_and_exports(pg_url, tmp_path, capsys):
    preset = _preset(tmp_path, params={"max_steps": 20}, study={"n_trials": 2, "concurrency": 2})
    run_dir = tmp_path / "run"
    assert main(["run", str(preset), "--headless", "--run-dir", str(run_dir), "--storage", pg_url]) == 0
    study = optuna.load_study(study_name="test", storage=pg_url.replace("postgresql://", "postgresql+psycopg://"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert not (run_dir / "optuna.journal").exists()  # the study is in the database, not beside the run
    meta = run_dir / "sweep.json"
    assert json.loads(meta.read_text())["storage"] == pg_url  # resume needs it, password and all...
    assert stat.S_IMODE(meta.stat().st_mode) == 0o600  # ...so only its owner reads it

    assert main(["resume", str(run_dir), "--headless", "--n-trials", "3"]) == 0
    assert len(study.trials) == 3 and study.trials[2].state == optuna.trial.TrialState.COMPLETE
    capsys.readouterr()
    assert main(["export", str(run_dir)]) == 0
    rows = (run_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",complete," in r for r in rows[1:])


def test_eight_trial_threads_share_the_pool(pg_url, fake_sweep):
    from tui_tuner.engine.storage_url import EXTRA_CONNECTIONS

    sweep = fake_sweep(storage=pg_url, params={"max_steps": 30}, study={"n_trials": 8, "concurrency": 8}).start()
    assert sweep.gateway.storage._backend.engine.pool.size() == 8 + EXTRA_CONNECTIONS  # in optuna's cache wrapper
    assert sweep.wait(120)
    trials = sweep.trials()
    sweep.stop()
    assert [t.state for t in trials] == ["complete"] * 8, [(t.number, t.state, t.error) for t in trials]


def test_connections_the_server_dropped_while_idle_are_replaced(pg_url, tmp_path):
    """Over a run of hours a server restart, an idle timeout or a NAT drops the pooled connections: the next
    call must reconnect, not halt the sweep with 'server closed the connection unexpectedly'."""
    from tui_tuner.engine.study import make_storage

    storage = make_storage(tmp_path, pg_url, threads=2)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'tui-tuner'").fetchone()[0]
    assert killed >= 1
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as the postgres user only when tests run as root")
def test_the_server_runs_unprivileged(pg_server):
    assert (pg_server.data / "postmaster.pid").stat().st_uid != 0


@pytest.mark.slow
def test_a_detached_engine_gets_the_url_and_its_password_never_through_argv(pg_url, tmp_path):
    """`ps` shows every process's argv to every user of the box: the password must not be there, nor in
    engine.log; the engine still opens the study on PostgreSQL."""
    from tests.test_detach import Box, _api

    box = Box(tmp_path)
    try:
        run_dir = tmp_path / "run"
        pid = box.detach("run", _preset(tmp_path, params={"max_steps": 400}), "--run-dir", run_dir,
                         "--storage", pg_url)
        password = pg_url.split(":")[2].split("@")[0]
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password not in (run_dir / "engine.log").read_text()
        assert _api(run_dir, path="/info")["storage"] == pg_url.replace(password, "***")
    finally:
        box.close()


def test_a_lost_workers_trials_are_interrupted_or_failed_by_the_others(pg_url, fake_sweep):
    """Another worker's RUNNING trials whose beat is older than stale_after: interrupted with the reason when
    they have a checkpoint to continue from, failed with it when they have none; fresh ones are left alone."""
    import time as _time

    from tui_tuner.engine.workers import BEAT_ATTR, LOST_ATTR

    sweep = fake_sweep(storage=pg_url, params={"max_steps": 5}, study={"n_trials": 1, "concurrency": 1,
                                                                       "stale_after": 3}).start()
    assert sweep.wait(30)
    study, now = sweep.study, sweep.gateway.now()
    beats = {"stale_ckpt": {"t": now - 60, "step": 40, "checkpoint": 30},
             "stale_none": {"t": now - 60, "step": 4, "checkpoint": None},
             "fresh": {"t": now + 600, "step": 9, "checkpoint": 5}}
    numbers = {}
    for name, beat in beats.items():
        t = study.ask()
        t.set_user_attr("worker", "other-box-1")
        t.set_user_attr(BEAT_ATTR, beat)
        numbers[name] = t.number
    deadline = _time.monotonic() + 10  # the heartbeat thread sweeps every stale_after / 6 s
    while _time.monotonic() < deadline and LOST_ATTR not in study.trials[numbers["stale_ckpt"]].user_attrs:
        _time.sleep(0.1)
    trials = study.trials
    lost = trials[numbers["stale_ckpt"]]
    assert lost.state == optuna.trial.TrialState.RUNNING
    assert "other-box-1 stopped beating" in lost.user_attrs[LOST_ATTR]["reason"]
    assert "checkpoint at step 30" in lost.user_attrs[LOST_ATTR]["reason"]
    failed = trials[numbers["stale_none"]]
    assert failed.state == optuna.trial.TrialState.FAIL and "before the trial's first checkpoint" in \
        failed.user_attrs["error"]
    assert trials[numbers["fresh"]].state == optuna.trial.TrialState.RUNNING
    assert LOST_ATTR not in trials[numbers["fresh"]].user_attrs
    kinds = [e.kind for e in sweep.events_since(0)]
    assert "lost_interrupted" in kinds and "lost_failed" in kinds
