"""Checkpoint directories on disk: where they go, listing and pruning them (torch-free: the engine reads these)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

INFO_FILE = "checkpoint.json"


# What wrote a checkpoint. "best" ones (an eval beat the trial's best between periodic checkpoints) are kept
# only while they are the best, so they never push periodic fork points out of the last-`keep` window.
CheckpointKind = Literal["periodic", "best", "final", "stop", "now"]


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    eval_loss: float | None
    time: float
    kind: CheckpointKind = "periodic"


def checkpoint_dir(trial_dir: Path, step: int) -> Path:
    return trial_dir / "checkpoints" / f"step-{step}"


def list_checkpoints(trial_dir: Path) -> list[CheckpointInfo]:
    root = trial_dir / "checkpoints"
    out = []
    if root.is_dir():
        for d in root.iterdir():
            info_file = d / INFO_FILE
            if d.name.startswith("step-") and not d.name.endswith(".old") and info_file.is_file():
                info = json.loads(info_file.read_text())
                out.append(CheckpointInfo(info["step"], d, info.get("eval_loss"), info["time"],
                                          info.get("kind", "periodic")))
    return sorted(out, key=lambda c: c.step)


def prune_checkpoints(trial_dir: Path, keep: int, keep_best: bool) -> None:
    """Keep the last `keep` checkpoints (not counting those written only for a new best eval) and, optionally,
    the one with the best eval loss."""
    ckpts = list_checkpoints(trial_dir)
    keep_set = {c.step for c in [c for c in ckpts if c.kind != "best"][-keep:]}
    scored = [c for c in ckpts if c.eval_loss is not None]
    if keep_best and scored:
        keep_set.add(min(scored, key=lambda c: c.eval_loss).step)
    for c in ckpts:
        if c.step not in keep_set:
            shutil.rmtree(c.path, ignore_errors=True)
