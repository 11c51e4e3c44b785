"""Atomic checkpoints: weights in peft/transformers' standard format plus optimizer, step, data position, RNG."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from tui_tuner.format import json_problem, utf8_problem
from tui_tuner.training.model import adalora_state, load_adalora_state

if TYPE_CHECKING:
    from tui_tuner.training.finetune import FineTune

STATE_FILE = "trainer_state.pt"
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


def save(ft: FineTune, trial_dir: Path, eval_loss: float | None = None,
         kind: CheckpointKind = "periodic") -> CheckpointInfo:
    """Write to a temp dir and rename into place: a crash leaves a stray temp dir, never a half checkpoint."""
    final = checkpoint_dir(trial_dir, ft.step_count)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-step-{ft.step_count}-"))
    try:
        # peft writes adapter_model.safetensors + adapter_config.json; full models write model.safetensors.
        with _unpruned_adalora(ft):
            ft.model.save_pretrained(tmp)
        state = {
            "step": ft.step_count,
            "adalora": adalora_state(ft.model) if ft.method == "adalora" else None,
            "optimizer": ft.optimizer.state_dict(),
            "scaler": ft.scaler.state_dict() if ft.scaler else None,
            "data": ft.stream.state(),
            "params": ft.params.model_dump(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python": random.getstate(),
            },
        }
        torch.save(state, tmp / STATE_FILE)
        info = {"step": ft.step_count, "eval_loss": eval_loss, "time": time.time(), "method": ft.method,
                "kind": kind}
        (tmp / INFO_FILE).write_text(json.dumps(info))
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step (e.g. on demand after a periodic one)
            old = final.with_name(final.name + ".old")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo(ft.step_count, final, eval_loss, info["time"], kind)


@contextlib.contextmanager
def _unpruned_adalora(ft: FineTune) -> Iterator[None]:
    """Save AdaLoRA's adapter at its full initial rank, its pruned triplets included (their E is zero, so the
    adapter computes the same). With a rank pattern set, peft saves only the kept triplets: that adapter no longer
    fits a freshly built model, and it loses the pruned triplets' A and B, which training can still revive
    until the ranks freeze. The pattern goes into the training state instead."""
    if ft.method != "adalora":
        yield
        return
    cfg = ft.model.peft_config["default"]
    pattern, cfg.rank_pattern = cfg.rank_pattern, None
    try:
        yield
    finally:
        cfg.rank_pattern = pattern


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)


def restore(ft: FineTune, ckpt: Path) -> dict[str, Any]:
    """Load adapter/weights, optimizer, step and data position into a freshly built FineTune of the same shape.

    Hyperparameters are re-applied afterwards (`ft.apply_params`) because optimizer.load_state_dict
    brings back the saved LR, betas and weight decay."""
    state = load_state(ckpt)
    if ft.method in ("lora", "adalora"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(ckpt / "adapter_model.safetensors"), device=str(ft.device))
        try:
            result = set_peft_model_state_dict(ft.model, weights)
        except RuntimeError as e:  # torch lists every mismatched tensor, one line each
            raise ValueError(f"{ckpt}: adapter does not fit the model: {str(e).splitlines()[-1].strip()}") from None
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{ckpt}: adapter does not fit the model: {result.unexpected_keys[:3]}")
    if state.get("adalora"):
        load_adalora_state(ft.model, state["adalora"], ft.device)
    ft.optimizer.load_state_dict(state["optimizer"])
    if ft.scaler and state.get("scaler"):
        ft.scaler.load_state_dict(state["scaler"])
    ft.step_count = state["step"]
    ft.stream.restore(state["data"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    ft.apply_params(ft.params)
    return state


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
