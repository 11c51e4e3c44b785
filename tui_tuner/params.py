"""Per-trial hyperparameters: the flat namespace that presets fix and Optuna searches."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Schedule = Literal["constant", "linear", "cosine", "cosine_restarts", "wsd", "cyclic_wsd"]
OptimizerName = Literal["adamw", "adam", "sgd", "rmsprop", "adafactor"]

# Strict: pydantic's lax mode takes `true` as 1 for an int (`--set params.batch_size=true` ran with batch 1) and
# "4" or 2.0 as 4 or 2; a wrong type is a mistake to report. Strict floats still take ints (`lora_alpha = 16`).
# No inf/NaN: neither is a usable hyperparameter, and `gt=0` alone lets inf through (adam_epsilon = inf).
STRICT_NUMBERS = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TrialParams(BaseModel):
    """Every hyperparameter one trial runs with; each can be fixed in [params] or searched in [search]."""

    model_config = ConfigDict(**STRICT_NUMBERS, validate_assignment=True)

    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int | None = Field(None, ge=1, description="unset: ~0.2% of the training examples, at most 256")
    grad_accum: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Schedule = "cosine"
    cycle_steps: int | None = Field(None, ge=1, description="period of cosine_restarts / cyclic_wsd")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="share of the run spent decaying (wsd)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    optimizer: OptimizerName = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd and rmsprop")
    nesterov: bool = Field(False, description="sgd, with momentum > 0")
    max_grad_norm: float | None = Field(1.0, gt=0)
    max_grad_value: float | None = Field(None, gt=0)
    component_clip_norm: float | None = Field(None, gt=0, description="clip each component's gradient norm "
                                              "(attention, MLP, embeddings, other) to this")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="adam, adamw")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="adam, adamw")
    adam_epsilon: float = Field(1e-8, gt=0, description="adam, adamw, rmsprop")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    prompt_loss_weight: float = Field(0.0, ge=0, le=1)
    freeze_layers: int = Field(0, ge=0)
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: str = Field("all-linear", description="comma-separated module names or 'all-linear'")
    seed: int = 0
    eval_interval: int = Field(50, ge=1)
    eval_batches: int | None = Field(None, ge=1)
    # -- issue 13: early stopping, the base model's dropout, the model itself --
    early_stopping_patience: int | None = Field(None, ge=1, description="end the trial after this many evals in "
                                                "a row without improving on its best; unset: never")
    early_stopping_min_delta: float = Field(0.0, ge=0, description="an eval improves only if it is this much "
                                            "below the best")
    attention_dropout: float | None = Field(None, ge=0, lt=1, description="the base model's; unset: its config's")
    hidden_dropout: float | None = Field(None, ge=0, lt=1, description="the base model's; unset: its config's")
    embedding_dropout: float | None = Field(None, ge=0, lt=1, description="the base model's; unset: its config's")
    model_name: str | None = Field(None, min_length=1, description="unset: model.name; the same tokenizer")

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _join_modules(cls, v: object) -> object:
        return ",".join(v) if isinstance(v, list | tuple) else v

    @model_validator(mode="after")
    def _budget(self) -> TrialParams:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) is longer than the run "
                             f"(max_steps = {self.max_steps})")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError(f"nesterov needs optimizer = 'sgd' and momentum > 0 (optimizer = {self.optimizer!r}, "
                             f"momentum = {self.momentum})")
        return self

    def target_modules(self) -> str | list[str]:
        """peft's target_modules: the literal 'all-linear' or a list of names."""
        mods = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]
        return "all-linear" if mods == ["all-linear"] else mods


PARAM_NAMES = frozenset(TrialParams.model_fields)


def shape_params(method: str) -> frozenset[str]:
    """Params a fork may not change: they change the shapes or the set of trainable tensors, so neither the
    parent's weights nor its optimizer state would fit the child."""
    # model_name: another model has other tensors altogether (a fork keeps its parent's model).
    by_method = frozenset({"freeze_layers"}) if method == "full" else frozenset({"lora_r", "lora_target_modules"})
    return by_method | {"model_name"}


# Why a fork may not change a param, short enough to stand beside its read-only field in the fork dialog.
CHANGES_TENSORS = "changes the trained tensors"
OPTIMIZER_STATE = "the parent's optimizer state would not fit"


def fork_fixed_params(method: str) -> dict[str, str]:
    """Every param a fork may not change, with why: the shape params, and the optimizer (a parent's Adam
    moments mean nothing to SGD, and loading them into another optimizer would not fail, only mislead)."""
    return {**dict.fromkeys(sorted(shape_params(method)), CHANGES_TENSORS), "optimizer": OPTIMIZER_STATE}


def error_message(err: dict) -> str:
    """A pydantic error's message without the 'Value error, ' prefix it puts before a validator's own words."""
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def first_error(err: ValidationError) -> str:
    """'field: message' for the first problem, for one-line errors about a set of trial params."""
    first = err.errors()[0]
    return f"{'.'.join(map(str, first['loc'])) or 'params'}: {error_message(first)}"
