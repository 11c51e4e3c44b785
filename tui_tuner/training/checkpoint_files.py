"""Checkpoint directories on disk: where they go, listing and pruning them (torch-free: the engine reads these)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from tui_tuner.format import json_problem, utf8_problem

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
                info = read_info(info_file)
                out.append(CheckpointInfo(info["step"], d, info.get("eval_loss"), info["time"],
                                          info.get("kind", "periodic")))
    return sorted(out, key=lambda c: c.step)


def read_info(info_file: Path) -> dict[str, Any]:
    """A checkpoint.json, checked: a damaged one is a ValueError naming the file (and line), not a KeyError or
    an unnamed decode error from wherever it is read (resume, fork, export)."""
    try:
        info = json.loads(info_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(utf8_problem(e, str(info_file))) from None
    except json.JSONDecodeError as e:
        raise ValueError(json_problem(e, str(info_file))) from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_file}: not a checkpoint record (a JSON object with 'step' and 'time')")
    checks = {"step": _is_int(info.get("step")), "time": _is_number(info.get("time")),
              "eval_loss": info.get("eval_loss") is None or _is_number(info["eval_loss"]),
              "kind": info.get("kind", "periodic") in get_args(CheckpointKind)}
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        got = ", ".join(f"{k} = {info[k]!r}" if k in info else f"{k} missing" for k in bad)
        raise ValueError(f"{info_file}: not a valid checkpoint record ({got})")
    return info


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


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


def file_digests(d: Path) -> dict[str, dict[str, int | str]]:
    """Size and sha256 of each file of a checkpoint dir (its checkpoint.json aside), recorded in checkpoint.json
    at save time so a resume can tell a damaged checkpoint (truncated, bit-rotted, a file deleted) from a good
    one before loading it."""
    out: dict[str, dict[str, int | str]] = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and f.name != INFO_FILE:
            out[f.name] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    return out


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_problem(d: Path) -> str | None:
    """None if the checkpoint in `d` is intact, else one line naming the damaged file. Checkpoints written
    before checkpoint.json recorded digests are checked for presence and non-empty files only."""
    info_file = d / INFO_FILE
    if not info_file.is_file():
        return f"{info_file}: missing"
    try:
        files = read_info(info_file).get("files")
    except ValueError as e:
        return str(e)
    if not isinstance(files, dict):  # an old checkpoint: no sizes or hashes to compare
        others = [f for f in d.iterdir() if f.name != INFO_FILE]
        if not others:
            return f"{d}: holds no checkpoint files"
        empty = next((f for f in sorted(others) if f.is_file() and f.stat().st_size == 0), None)
        return f"{empty}: empty" if empty is not None else None
    for name, want in sorted(files.items()):
        f = d / name
        if not f.is_file():
            return f"{f}: missing"
        size = f.stat().st_size
        if size != want.get("size"):
            return f"{f}: {size} bytes, {want.get('size')} were written"
        if want.get("sha256") and _sha256(f) != want["sha256"]:
            return f"{f}: sha256 differs from the one written at save time"
    return None
