"""Shared fixtures: a session-wide model cache and tiny real sweeps."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_CACHE = Path(os.environ.setdefault("TUI_TUNER_CACHE", str(Path(__file__).parent.parent / ".cache-test")))
# Engines the tests start announce themselves here (and CLI subprocesses inherit it), not in the user's own
# runtime dir: `tui-tuner ls` in a test sees the test's engines only.
os.environ.setdefault("TUI_TUNER_RUNTIME_DIR", tempfile.mkdtemp(prefix="tui-tuner-rt-"))


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests assert CPU behaviour (exact resume, RSS memory, CPU tensors): on a GPU box `device = auto` must not
    pick CUDA for them; tests marked `gpu` see the real device."""
    if request.node.get_closest_marker("gpu") is None:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CLI subprocesses some tests start


def tiny_preset_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """A real preset for tests: the built-in tiny Llama + LoRA, short sequences, small evals."""
    base: dict[str, Any] = {
        "name": "test",
        "model": {"name": "builtin:tiny-llama"},
        "data": {"train": "builtin:progressions", "max_length": 40},
        "params": {"max_steps": 40, "eval_interval": 10, "batch_size": 8, "eval_batches": 2,
                   "learning_rate": 3e-3, "lora_r": 4},
        "search": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "study": {"n_trials": 2, "concurrency": 2, "pruner": "none"},
        "checkpoints": {"interval": 10, "keep": 10},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) and key != "search" else value
    return base


@pytest.fixture
def make_sweep(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from tui_tuner import Preset, Sweep

    sweeps: list[Sweep] = []

    def factory(run_dir: Path | None = None, **sections: dict[str, Any]) -> Sweep:
        sweep = Sweep(Preset.from_dict(tiny_preset_dict(**sections)), run_dir or tmp_path / "run")
        sweeps.append(sweep)
        return sweep

    yield factory
    for s in sweeps:
        s.stop(timeout=60)


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Like make_sweep, on the torch-free FakeBackend (or the one given)."""
    from tests.fake_backend import FakeBackend
    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.preset import Preset

    made: list[Any] = []

    def factory(run_dir: Path | None = None, backend: FakeBackend | None = None, storage: str | None = None,
                **sections):  # type: ignore[no-untyped-def]
        sweep = Sweep(Preset.from_dict(tiny_preset_dict(**sections)), run_dir or tmp_path / "run",
                      backend=backend or FakeBackend(), storage=storage)
        made.append(sweep)
        return sweep

    yield factory
    for s in made:
        s.stop(timeout=30)


def wait_for(pred: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """serve(sweep) -> a RemoteSweep talking to it over its control socket, as `tui-tuner attach` would."""
    from tui_tuner.api.client import RemoteSweep
    from tui_tuner.api.server import ApiServer

    made: list[tuple[Any, Any]] = []

    def factory(sweep: Any, **kw: Any) -> RemoteSweep:
        sweep.claim()
        server = ApiServer(sweep).start()
        remote = RemoteSweep(sweep.run_dir, refresh_s=0.1, **kw)
        made.append((server, remote))
        return remote

    yield factory
    for server, remote in made:
        remote.close()
        server.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A real PostgreSQL server for the session. Where none can be started the tests that need it skip, saying
    why; CI sets TUI_TUNER_REQUIRE_PG=1, and there they fail instead."""
    from tests.pg_server import PgServer, PgUnavailable

    try:
        server = PgServer().start()
    except (PgUnavailable, OSError, subprocess.TimeoutExpired) as e:
        if os.environ.get("TUI_TUNER_REQUIRE_PG"):
            pytest.fail(f"TUI_TUNER_REQUIRE_PG is set but PostgreSQL cannot start: {e}")
        pytest.skip(f"PostgreSQL cannot start here: {e}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_db()
