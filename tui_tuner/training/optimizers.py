"""The optimizers a trial can use: how each is built and which param-group keys its hyperparameters set."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from tui_tuner.params import TrialParams

GroupValues = Callable[[TrialParams], dict[str, Any]]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its constructor (called with the params, lr= and the group values) and the param-group
    values it takes from a trial's params, set at construction and again by every `apply_params`."""

    build: Callable[..., torch.optim.Optimizer]
    group: GroupValues
    # Full-size state tensors it keeps per trainable weight, for the GPU memory estimate.
    state_copies: Callable[[TrialParams], int]
    # Mends restored state that the new values would not work with (None: none can).
    mend_state: Callable[[torch.optim.Optimizer, TrialParams], None] | None = None


def _adam(p: TrialParams) -> dict[str, Any]:
    return {"betas": (p.adam_beta1, p.adam_beta2), "eps": p.adam_epsilon, "weight_decay": p.weight_decay}


def _sgd(p: TrialParams) -> dict[str, Any]:
    return {"momentum": p.momentum, "nesterov": p.nesterov, "weight_decay": p.weight_decay}


def _rmsprop(p: TrialParams) -> dict[str, Any]:
    # alpha (the square average's decay) keeps torch's 0.99: adam_beta2 is Adam's, not a stand-in for it.
    return {"eps": p.adam_epsilon, "momentum": p.momentum, "weight_decay": p.weight_decay}


def _rmsprop_momentum_buffers(optimizer: torch.optim.Optimizer, p: TrialParams) -> None:
    # RMSprop makes a momentum buffer only in the state of its first step: a fork that turns momentum on would
    # meet state without one (a KeyError in step()). A zero buffer is where momentum starts anyway.
    if p.momentum <= 0:
        return
    for group in optimizer.param_groups:
        for w in group["params"]:
            state = optimizer.state.get(w)
            if state and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(w, memory_format=torch.preserve_format)


def _adafactor_group(p: TrialParams) -> dict[str, Any]:
    # No relative step, parameter scaling or warmup of its own: our LR schedule sets group["lr"] each step.
    return {"weight_decay": p.weight_decay, "scale_parameter": False, "relative_step": False, "warmup_init": False}


def _adafactor(params: Iterable[torch.nn.Parameter], **kw: Any) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    return Adafactor(params, **kw)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(torch.optim.AdamW, _adam, lambda p: 2),
    "adam": OptimizerSpec(torch.optim.Adam, _adam, lambda p: 2),  # weight_decay is an L2 term in the gradient
    "sgd": OptimizerSpec(torch.optim.SGD, _sgd, lambda p: int(p.momentum > 0)),
    "rmsprop": OptimizerSpec(torch.optim.RMSprop, _rmsprop, lambda p: 1 + int(p.momentum > 0),
                             _rmsprop_momentum_buffers),
    # Factored second moments are small, but its step makes full-size temporaries: count one copy.
    "adafactor": OptimizerSpec(_adafactor, _adafactor_group, lambda p: 1),
}


def build_optimizer(trainable: list[torch.nn.Parameter], params: TrialParams) -> torch.optim.Optimizer:
    spec = OPTIMIZERS[params.optimizer]
    return spec.build(trainable, lr=params.learning_rate, **spec.group(params))


def apply_group_params(optimizer: torch.optim.Optimizer, params: TrialParams) -> None:
    """Set every param group's hyperparameters from `params` (after a restore, which brings back the saved ones)."""
    spec = OPTIMIZERS[params.optimizer]
    values = spec.group(params)
    for g in optimizer.param_groups:
        g.update(values)
    if spec.mend_state is not None:
        spec.mend_state(optimizer, params)


def state_copies(params: TrialParams) -> int:
    return OPTIMIZERS[params.optimizer].state_copies(params)
