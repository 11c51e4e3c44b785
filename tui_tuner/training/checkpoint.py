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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tui_tuner.training.checkpoint_files import (  # noqa: F401  (re-exported: the engine and tests use them)
    INFO_FILE,
    CheckpointInfo,
    CheckpointKind,
    checkpoint_dir,
    file_digests,
    list_checkpoints,
    prune_checkpoints,
)
from tui_tuner.training.model import RNG_LOCK, adalora_state, load_adalora_state

if TYPE_CHECKING:
    from tui_tuner.training.finetune import FineTune

STATE_FILE = "trainer_state.pt"


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
            "optimizer_name": ft.params.optimizer,  # restore refuses state of another optimizer
            "scaler": ft.scaler.state_dict() if ft.scaler else None,
            "data": ft.stream.state(),
            "params": ft.params.model_dump(),
            "rng": _rng_state(),
        }
        torch.save(state, tmp / STATE_FILE)
        info = {"step": ft.step_count, "eval_loss": eval_loss, "time": time.time(), "method": ft.method,
                "optimizer": ft.params.optimizer, "kind": kind,
                "files": file_digests(tmp)}  # resume verifies what it continues from
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
    check_optimizer(state, ft.params.optimizer, ckpt)
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
    with RNG_LOCK:  # never while another trial's model is being built from its seed: that would change its init
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    ft.apply_params(ft.params)
    return state


def saved_optimizer(state: dict[str, Any]) -> str:
    """The optimizer a checkpoint's state is of; checkpoints from before the choice existed are AdamW's."""
    return state.get("optimizer_name") or (state.get("params") or {}).get("optimizer") or "adamw"


def check_optimizer(state: dict[str, Any], wanted: str, ckpt: Path) -> None:
    # torch loads one optimizer's state dict into another without complaint (the group layout matches):
    # the moments would silently become, say, SGD momentum.
    saved = saved_optimizer(state)
    if saved != wanted:
        raise ValueError(f"{ckpt}: this checkpoint holds {saved} optimizer state; the trial's optimizer is "
                         f"{wanted} (params.optimizer): start it from a fresh trial instead")


def _rng_state() -> dict[str, Any]:
    with RNG_LOCK:  # a model being built holds the generator at its own seed: that is not this trial's state
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
        }
