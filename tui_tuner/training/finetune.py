"""One trial's fine-tune: a step at a time, so whoever drives it can pause, kill or checkpoint between steps."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import psutil
import torch
import torch.nn.functional as F

from tui_tuner.params import TrialParams
from tui_tuner.preset import PresetError
from tui_tuner.training import data as D
from tui_tuner.training.clipping import clip_by_component, component_groups
from tui_tuner.training.model import (
    adalora_orth_penalty,
    autocast_dtype,
    build_model,
    check_device,
    load_tokenizer,
    model_context,
    pick_device,
    sync_adalora_schedule,
)
from tui_tuner.training.model_dropout import apply_to_model
from tui_tuner.training.optimizers import apply_group_params, build_optimizer
from tui_tuner.training.schedules import lr_factor


@dataclass
class StepMetrics:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    step_time: float
    mem_bytes: int


@dataclass
class DataBundle:
    """Tokenised train/eval examples, shared read-only by every trial of a sweep."""

    train: list[D.Example]
    eval: list[D.Example]
    pad_id: int


def prepare_data(model_name: str, data_cfg: Any, trust_remote_code: bool = False,
                 device: str | None = None) -> tuple[Any, DataBundle]:
    """Tokenise and split the data once per sweep, checking what would otherwise fail every trial: the device
    (`device`, the preset's device.type, when given), data.max_length against the model's context, the rows."""
    if device is not None:
        check_device(device)
    tok = load_tokenizer(model_name, trust_remote_code)
    context = model_context(model_name, trust_remote_code)
    if context and data_cfg.max_length > context[1]:
        raise PresetError(f"data.max_length ({data_cfg.max_length}) is above the context of {model_name} "
                          f"({context[0]} = {context[1]} in its config): set data.max_length to {context[1]} "
                          "or less")
    rows = D.load_records(data_cfg.train)
    fmt = D.detect_format(rows, data_cfg.format, data_cfg.train)
    examples = D.tokenize(rows, fmt, tok, data_cfg.max_length, data_cfg.train)
    if data_cfg.eval:
        eval_rows = D.load_records(data_cfg.eval)
        eval_fmt = D.detect_format(eval_rows, data_cfg.format, data_cfg.eval)
        train, ev = examples, D.tokenize(eval_rows, eval_fmt, tok, data_cfg.max_length, data_cfg.eval)
    else:
        train, ev = D.train_eval_split(examples, data_cfg.eval_fraction, data_cfg.split_seed, data_cfg.train)
    return tok, DataBundle(train, ev, tok.pad_token_id)


def resolved_batch_size(params: TrialParams, n_train: int) -> int:
    return params.batch_size or D.default_batch_size(n_train)


def total_steps(params: TrialParams, n_train: int) -> int:
    if params.max_steps is not None:
        return params.max_steps
    per_epoch = math.ceil(n_train / (resolved_batch_size(params, n_train) * params.grad_accum))
    return max(1, math.ceil(per_epoch * (params.epochs or 1)))


def weighted_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], smoothing: float,
                        device: torch.device, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted token cross-entropy: (sum of weighted losses, sum of weights)."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    weights = batch["weights"][:, 1:]
    per_tok = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none", label_smoothing=smoothing
    ).view_as(weights)
    return (per_tok * weights).sum(), weights.sum()


@torch.no_grad()
def eval_loss(model: torch.nn.Module, examples: list[D.Example], pad_id: int, prompt_weight: float, batch_size: int,
              limit: int | None, device: torch.device, amp_dtype: torch.dtype | None = None) -> float:
    """Mean token loss over the first `limit` batches of `examples` (all when None), no label smoothing: a
    module function so that a benchmark can score a model trained elsewhere (transformers' Trainer) the same way."""
    was_training = model.training
    model.eval()
    num = den = 0.0
    for i, lo in enumerate(range(0, len(examples), batch_size)):
        if limit is not None and i >= limit:
            break
        batch = D.collate(examples[lo : lo + batch_size], pad_id, prompt_weight)
        n, d = weighted_token_loss(model, batch, 0.0, device, amp_dtype)
        num, den = num + float(n), den + float(d)
    model.train(was_training)
    return num / den if den else math.nan


class FineTune:
    """Model, optimizer and data stream of one trial; `step()` makes one optimizer update."""

    def __init__(
        self, model_name: str, method: str, params: TrialParams, data: DataBundle,
        device: str = "auto", precision: str = "auto", weights_dir: str | None = None,
        trust_remote_code: bool = False,
    ):
        self.params, self.data, self.method = params, data, method
        self.device = pick_device(device)
        self.amp_dtype = autocast_dtype(precision, self.device)
        self.model = build_model(model_name, method, params, self.device, weights_dir, trust_remote_code,
                                 total_steps(params, len(data.train)))
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._orth_factors = [(n, p) for n, p in self.model.named_parameters()
                              if method == "adalora" and p.requires_grad and ("lora_A" in n or "lora_B" in n)]
        self.components = component_groups(self.model.named_parameters())  # for component_clip_norm
        self.optimizer = build_optimizer(self.trainable, params)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.step_count = 0
        self.batch_size = resolved_batch_size(params, len(data.train))
        self.stream = D.BatchStream(data.train, self.batch_size, params.seed, data.pad_id, params.prompt_loss_weight)
        self.total_steps = total_steps(params, len(data.train))
        self._proc = psutil.Process()
        self.apply_params(params)

    # -- hyperparameters ---------------------------------------------------------------------
    def apply_params(self, params: TrialParams) -> None:
        """(Re)apply every hyperparameter that lives outside the weights: used at start and after a fork."""
        self.params = params
        apply_group_params(self.optimizer, params)
        for name, mod in self.model.named_modules():
            if "lora_dropout" in name and isinstance(mod, torch.nn.Dropout):
                mod.p = params.lora_dropout
        apply_to_model(self.model, params)  # the base model's own dropout (a fork may change it)
        self.batch_size = resolved_batch_size(params, len(self.data.train))
        self.stream.batch_size = self.batch_size
        self.stream.prompt_weight = params.prompt_loss_weight
        self.total_steps = total_steps(params, len(self.data.train))
        if self.method == "adalora":
            sync_adalora_schedule(self.model, self.total_steps, self.step_count)
        self._set_lr()

    def current_lr(self) -> float:
        return self.params.learning_rate * lr_factor(self.step_count, self.params, self.total_steps)

    def _set_lr(self) -> None:
        lr = self.current_lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # -- training ------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor], smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        return weighted_token_loss(self.model, batch, smoothing, self.device, self.amp_dtype)

    def step(self) -> StepMetrics:
        t0 = time.perf_counter()
        self._set_lr()
        lr = self.optimizer.param_groups[0]["lr"]
        micro = [self.stream.next() for _ in range(self.params.grad_accum)]
        denom = sum(float(b["weights"][:, 1:].sum()) for b in micro) or 1.0
        total, tokens = 0.0, 0
        for batch in micro:
            num, _ = self._loss(batch, self.params.label_smoothing)
            data_loss = num / denom
            loss = data_loss
            if self._orth_factors:  # once per optimizer step in all, spread over the micro-batches
                loss = loss + adalora_orth_penalty(self.model, self._orth_factors) / len(micro)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += float(data_loss.detach())  # the reported train loss is the data's, comparable with eval loss
            tokens += int(batch["attention_mask"].sum())
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.params.max_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self.trainable, self.params.max_grad_value)
        if self.params.component_clip_norm is not None:
            clip_by_component(self.components, self.params.component_clip_norm)
        max_norm = self.params.max_grad_norm if self.params.max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.method == "adalora":
            # Rank reallocation scores use this step's gradients: before zero_grad.
            self.model.base_model.update_and_allocate(self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        dt = time.perf_counter() - t0
        return StepMetrics(self.step_count, total, lr, grad_norm, tokens / dt if dt > 0 else 0.0, dt, self.memory())

    def evaluate(self) -> float:
        """Mean token loss over the eval set (completion-weighted like training, no label smoothing)."""
        return eval_loss(self.model, self.data.eval, self.data.pad_id, self.params.prompt_loss_weight,
                         self.batch_size, self.params.eval_batches, self.device, self.amp_dtype)

    def memory(self) -> int:
        """CUDA: peak bytes allocated on this trial's device; CPU: the process's resident set size."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(self._proc.memory_info().rss)

    def own_bytes(self) -> int:
        """Bytes this trial alone holds: its model's weights and buffers, the trainable weights' gradients and
        the optimizer's state. Exact per trial, unlike `memory()`, which trials sharing a process or GPU share."""
        def size(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        total = sum(size(p) for p in self.model.parameters()) + sum(size(b) for b in self.model.buffers())
        total += sum(size(p) for p in self.trainable)  # gradients, alive through each step
        for state in self.optimizer.state.values():
            total += sum(size(v) for v in state.values() if isinstance(v, torch.Tensor))
        return total

    @property
    def done(self) -> bool:
        return self.step_count >= self.total_steps

    def close(self) -> None:
        """Drop tensors now rather than at GC time: other trials want the GPU memory."""
        self.model = self.optimizer = self.trainable = self.components = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

