"""Every path of a run directory, and the small files in it the engine reads back (sweep.json)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SWEEP_FILE = "sweep.json"
PRESET_FILE = "preset.toml"
EVENTS_FILE = "events.jsonl"
JOURNAL_FILE = "optuna.journal"
LOCK_FILE = ".lock"


class RunDirError(ValueError):
    """A run directory that cannot be used as one (one line, naming the path)."""


@dataclass(frozen=True)
class RunDir:
    """The layout of `<run_dir>`; the one place that knows file names (README: "The run directory")."""

    root: Path

    @property
    def preset(self) -> Path:
        return self.root / PRESET_FILE

    @property
    def meta(self) -> Path:
        return self.root / SWEEP_FILE

    @property
    def events(self) -> Path:
        return self.root / EVENTS_FILE

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    def trial(self, n: int) -> Path:
        return self.trials / str(n)

    def metrics(self, n: int) -> Path:
        return self.trial(n) / "metrics.jsonl"

    def error_log(self, n: int) -> Path:
        return self.trial(n) / "error.log"

    def trials_that_ran(self) -> list[Path]:
        """The metrics files of trials that ran at least one step (a study that lost them must not restart)."""
        if not self.trials.is_dir():
            return []
        return sorted(m for m in self.trials.glob("*/metrics.jsonl") if m.stat().st_size > 0)

    def clean_leftovers(self) -> list[str]:
        """Remove what a crash mid-write leaves (run-dir lock holder only): fork staging dirs and checkpoint
        temp dirs, never whole checkpoints. A `step-<k>.old` whose `step-<k>` is missing is the checkpoint a
        crash cut off mid re-save: it is put back, not removed. What was done, one item each."""
        done: list[str] = []
        if not self.trials.is_dir():
            return done
        for d in sorted(self.trials.glob(".staging-*")):
            shutil.rmtree(d, ignore_errors=True)
            done.append(f"removed {self.relative(d)}")
        for d in sorted(self.trials.glob("*/checkpoints/.tmp-step-*")):
            shutil.rmtree(d, ignore_errors=True)
            done.append(f"removed {self.relative(d)}")
        for d in sorted(self.trials.glob("*/checkpoints/step-*.old")):
            whole = d.with_name(d.name.removesuffix(".old"))
            if whole.exists():
                shutil.rmtree(d, ignore_errors=True)
                done.append(f"removed {self.relative(d)}")
            else:
                d.rename(whole)
                done.append(f"restored {self.relative(whole)} from {d.name}")
        return done

    def is_run(self) -> bool:
        return self.meta.is_file() and self.preset.is_file()

    def write_meta(self, storage: str | None, worker: str) -> None:
        """Owner-only: a --storage URL may hold the database password (`resume` needs it; ~/.pgpass avoids it).
        `worker`: this run's id in its study, kept so a restarted worker resumes its own trials."""
        fd = os.open(self.meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"storage": storage, "created": time.time(), "worker": worker}, f)

    def read_meta(self) -> dict[str, Any]:
        if not self.is_run():
            raise RunDirError(f"{self.root}: not a tui-tuner run directory (no {SWEEP_FILE} / {PRESET_FILE})")
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.meta}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise RunDirError(f"{self.meta}: expected a JSON object")
        return meta

    def relative(self, path: Path | str) -> str:
        """A path inside the run dir as stored in the study: relative, so a moved or copied run dir still works."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    def resolve(self, stored: str | None) -> Path | None:
        """Back from what `relative` stored; an absolute path written by 0.1.0 is mapped into this run dir by its
        `trials/<n>/checkpoints/step-<k>` tail when the original place is gone (the run dir was moved)."""
        if not stored:
            return None
        p = Path(stored)
        if not p.is_absolute():
            return self.root / p
        if p.exists():
            return p
        parts = p.parts
        if len(parts) >= 4 and parts[-4] == "trials" and parts[-2] == "checkpoints":
            return self.root.joinpath(*parts[-4:])
        return p


def stage_copy(src: Path, root: Path) -> Path:
    """Hard-link a checkpoint dir into a new `.staging-*` dir under `root` (no copy of the bytes; it survives the
    source's pruning), to be renamed into place; its parent is removed by the caller. OSError on failure, with
    nothing left behind."""
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=root)) / src.name
    try:
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
    except OSError:
        shutil.rmtree(tmp.parent, ignore_errors=True)
        raise
    return tmp


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)
