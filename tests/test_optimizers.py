"""The optimizer choice and component-wise gradient clipping, acting on the tiny Llama's training."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tui_tuner.params import TrialParams, first_error
from tui_tuner.preset import DataSection
from tui_tuner.training.clipping import component_groups, component_of
from tui_tuner.training.finetune import FineTune, prepare_data

EXPECTED_CLASS = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop", "adafactor": "Adafactor"}


@pytest.fixture(scope="module")
def demo_data():
    torch.set_num_threads(1)
    return prepare_data("builtin:tiny-llama", DataSection(train="builtin:progressions", max_length=40))[1]


def _ft(data, **kw) -> FineTune:
    p = dict(max_steps=20, batch_size=8, lora_r=4, learning_rate=1e-2, warmup_steps=0, schedule="constant")
    return FineTune("builtin:tiny-llama", "lora", TrialParams(**{**p, **kw}), data)


def _weights(ft: FineTune) -> list[torch.Tensor]:
    return [p.detach().clone() for p in ft.trainable]


def _first_update(data, **kw) -> list[torch.Tensor]:
    ft = _ft(data, **kw)
    before = _weights(ft)
    ft.step()
    return [a - b for a, b in zip(_weights(ft), before, strict=True)]


@pytest.mark.parametrize("optimizer", list(EXPECTED_CLASS))
def test_each_optimizer_is_built_with_the_trials_hyperparameters_and_follows_the_lr(demo_data, optimizer):
    momentum = {"momentum": 0.9} if optimizer in ("sgd", "rmsprop") else {}
    extra = {"nesterov": True} if optimizer == "sgd" else {}
    ft = _ft(demo_data, optimizer=optimizer, weight_decay=0.01, adam_epsilon=1e-6, **momentum, **extra)
    assert type(ft.optimizer).__name__ == EXPECTED_CLASS[optimizer]
    for g in ft.optimizer.param_groups:
        assert g["weight_decay"] == 0.01
        assert all(g[k] == v for k, v in {**momentum, **extra}.items())
        if optimizer in ("adam", "adamw", "rmsprop"):
            assert g["eps"] == 1e-6
        if optimizer == "adafactor":  # our schedule, not Adafactor's own relative step, sets the step size
            assert not g["relative_step"] and not g["scale_parameter"] and not g["warmup_init"]
    before = _weights(ft)
    ft.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(ft), strict=True))
    # Without weight decay every optimizer's first update is linear in the LR that _set_lr put in the groups.
    small = _first_update(demo_data, optimizer=optimizer, learning_rate=1e-3)
    double = _first_update(demo_data, optimizer=optimizer, learning_rate=2e-3)
    for s, d in zip(small, double, strict=True):
        assert torch.allclose(d, 2 * s, rtol=1e-3, atol=1e-9)


def test_sgd_momentum_changes_the_weights_from_the_second_step(demo_data):
    def after(steps: int, momentum: float) -> list[torch.Tensor]:
        ft = _ft(demo_data, optimizer="sgd", momentum=momentum, seed=3)
        for _ in range(steps):
            ft.step()
        return _weights(ft)

    same = all(torch.allclose(a, b, atol=0) for a, b in zip(after(1, 0.0), after(1, 0.9), strict=True))
    assert same  # the first momentum buffer is the gradient itself
    plain, heavy = after(3, 0.0), after(3, 0.9)
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(plain, heavy, strict=True))


def test_a_fork_that_turns_rmsprop_momentum_on_keeps_stepping(demo_data):
    ft = _ft(demo_data, optimizer="rmsprop")
    ft.step()  # state without a momentum buffer
    ft.apply_params(ft.params.model_copy(update={"momentum": 0.9}))
    before = _weights(ft)
    ft.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(ft), strict=True))


@pytest.mark.parametrize(("kw", "says"), [
    ({"nesterov": True, "optimizer": "sgd"}, "nesterov needs optimizer = 'sgd' and momentum > 0"),
    ({"nesterov": True, "momentum": 0.9}, "nesterov needs optimizer = 'sgd'"),
    ({"momentum": 1.0}, "momentum:"),
    ({"optimizer": "lion"}, "optimizer:"),
    ({"component_clip_norm": 0.0}, "component_clip_norm:"),
])
def test_bad_optimizer_settings_are_one_line_errors_naming_the_field(kw, says):
    with pytest.raises(ValidationError) as e:
        TrialParams(max_steps=10, **kw)
    msg = first_error(e.value)
    assert says in msg and "\n" not in msg


def test_the_tiny_llamas_parameters_fall_into_their_components(demo_data):
    ft = _ft(demo_data)
    names = [n for n, _ in ft.model.named_parameters()]
    assert {component_of(n) for n in names if "q_proj.lora_" in n} == {"attention"}
    assert {component_of(n) for n in names if ".mlp." in n} == {"mlp"}
    assert {component_of(n) for n in names if "embed_tokens" in n or "lm_head" in n} == {"embeddings"}
    assert {component_of(n) for n in names if "norm" in n} == {"other"}  # post_attention_layernorm too
    trainable = {id(p) for p in ft.trainable}
    grouped = [p for ps in ft.components.values() for p in ps]
    assert {id(p) for p in grouped} == trainable and len(grouped) == len(trainable)
    assert set(ft.components) == {"attention", "mlp"}  # LoRA trains the adapters only


def test_gpt2_style_names_fall_into_their_components():
    names = {
        "transformer.wte.weight": "embeddings", "transformer.wpe.weight": "embeddings", "lm_head.weight": "embeddings",
        "transformer.h.0.attn.c_attn.weight": "attention", "transformer.h.0.attn.c_proj.bias": "attention",
        "transformer.h.0.mlp.c_fc.weight": "mlp", "transformer.h.0.mlp.c_proj.weight": "mlp",
        "transformer.h.0.ln_1.weight": "other", "transformer.ln_f.bias": "other",
        "base_model.model.transformer.h.0.attn.c_attn.lora_B.default.weight": "attention",
        "base_model.model.transformer.h.3.mlp.c_proj.lora_A.default.weight": "mlp",
        "model.decoder.layers.0.fc1.weight": "mlp", "gpt_neox.layers.0.attention.query_key_value.weight": "attention",
    }
    assert {n: component_of(n) for n in names} == names
    p = torch.nn.Parameter(torch.zeros(1))
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    assert component_groups([("transformer.h.0.mlp.c_fc.weight", p), ("transformer.wte.weight", frozen)]) == \
        {"mlp": [p]}


def _component_norms_at_step(ft: FineTune) -> list[dict[str, float]]:
    """Each component's gradient norm as the optimizer step sees it, one dict per step."""
    seen: list[dict[str, float]] = []
    orig = ft.optimizer.step

    def spy(*a, **k):
        seen.append({c: float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps])))
                     for c, ps in ft.components.items()})
        return orig(*a, **k)

    ft.optimizer.step = spy
    return seen


def test_component_clip_bounds_every_components_gradient_norm(demo_data):
    bound = 1e-3
    free = _ft(demo_data, max_grad_norm=None)
    free_norms = _component_norms_at_step(free)
    free.step()
    assert max(free_norms[0].values()) > bound  # without it some component is above the bound
    clipped = _ft(demo_data, max_grad_norm=None, component_clip_norm=bound)
    norms = _component_norms_at_step(clipped)
    clipped.step()
    assert norms[0].keys() == free_norms[0].keys()
    assert all(n <= bound + 1e-6 for n in norms[0].values())
    for c, n in norms[0].items():  # each one scaled to the bound on its own, not by a shared factor
        assert n == pytest.approx(min(bound, free_norms[0][c]), rel=1e-3)
