"""The fine-tune loop on its own: learning, hyperparameters acting as they should, schedules."""

from __future__ import annotations

import itertools
import math

import optuna
import pytest
import torch

from tests.conftest import tiny_preset_dict
from tui_tuner.engine.study import suggest_params
from tui_tuner.params import TrialParams
from tui_tuner.preset import DataSection, Preset
from tui_tuner.training.data import collate, tokenize
from tui_tuner.training.finetune import FineTune, prepare_data
from tui_tuner.training.schedules import lr_factor


@pytest.fixture(scope="module")
def demo_data():
    torch.set_num_threads(1)
    return prepare_data("builtin:tiny-llama", DataSection(train="builtin:progressions", max_length=40))


def _params(**kw) -> TrialParams:
    base = dict(max_steps=150, eval_interval=50, batch_size=16, eval_batches=4, learning_rate=3e-3,
                warmup_steps=10, lora_r=4)
    return TrialParams(**{**base, **kw})


def _train(data, steps: int, **kw) -> tuple[float, float, FineTune]:
    ft = FineTune("builtin:tiny-llama", "lora", _params(max_steps=steps, **kw), data)
    before = ft.evaluate()
    for _ in range(steps):
        ft.step()
    return before, ft.evaluate(), ft


def test_loss_falls_on_demo_task_and_lr_matters(demo_data):
    _, data = demo_data
    before, after_good, _ = _train(data, 150, learning_rate=1e-2)
    _, after_tiny_lr, _ = _train(data, 150, learning_rate=1e-5)
    assert after_good < before - 2.0, (before, after_good)
    assert after_tiny_lr > after_good + 1.0, (after_tiny_lr, after_good)


def test_prompt_loss_weight_zero_gives_no_gradient_from_prompt_tokens(demo_data):
    tok, _ = demo_data
    ex = tokenize([{"prompt": "12+3:", "completion": " 12 15 18"}], "prompt_completion", tok, 40, "x")
    batch = collate(ex, tok.pad_token_id, prompt_weight=0.0)
    plen = ex[0].prompt_len
    # Targets 1..plen-1 are prompt tokens: their weight is 0; completion targets weigh 1.
    assert batch["weights"][0, 1:plen].abs().sum() == 0
    assert (batch["weights"][0, plen : len(ex[0].ids)] == 1).all()
    full = collate(ex, tok.pad_token_id, prompt_weight=1.0)
    assert (full["weights"][0, 1 : len(ex[0].ids)] == 1).all()


def test_prompt_loss_weight_zero_means_prompt_logits_get_zero_grad(demo_data):
    tok, data = demo_data
    ft = FineTune("builtin:tiny-llama", "lora", _params(prompt_loss_weight=0.0), data)
    ex = tokenize([{"prompt": "12+3:", "completion": " 12 15"}], "prompt_completion", tok, 40, "x")
    batch = collate(ex, tok.pad_token_id, 0.0)
    logits_holder = {}

    def hook(_m, _i, out):
        out.logits.retain_grad()
        logits_holder["l"] = out.logits

    h = ft.model.register_forward_hook(hook)
    num, den = ft._loss(batch, 0.0)
    (num / den).backward()
    h.remove()
    g = logits_holder["l"].grad[0]
    plen = ex[0].prompt_len
    # Logit row t predicts token t+1: rows before plen-1 predict prompt tokens and must get no gradient.
    assert g[: plen - 1].abs().sum() == 0
    assert g[plen - 1 : len(ex[0].ids) - 1].abs().sum() > 0


def _grads_at_optimizer_step(ft: FineTune) -> list[list[torch.Tensor]]:
    """Record the gradients each optimizer step is given (after clipping), one list per step."""
    seen: list[list[torch.Tensor]] = []
    orig = ft.optimizer.step

    def spy(*a, **k):
        seen.append([p.grad.detach().clone() for p in ft.trainable if p.grad is not None])
        return orig(*a, **k)

    ft.optimizer.step = spy
    return seen


def _norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def test_clip_by_value_bounds_every_gradient_element(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "lora", _params(max_grad_value=1e-4, max_grad_norm=None,
                                                         learning_rate=0.0 + 1e-9), data)
    seen = _grads_at_optimizer_step(ft)
    ft.step()
    assert seen and max(float(g.abs().max()) for g in seen[0]) <= 1e-4 + 1e-12


def test_clip_by_norm_scales_the_gradient_to_the_bound_and_reports_the_norm_before(demo_data):
    _, data = demo_data
    unclipped = FineTune("builtin:tiny-llama", "lora", _params(max_grad_norm=None), data)
    free = _grads_at_optimizer_step(unclipped)
    reported_free = unclipped.step().grad_norm
    assert _norm(free[0]) == pytest.approx(reported_free, rel=1e-4)
    # The same first batch, clipped to a tenth of its norm: the optimizer sees exactly the bound, in the same
    # direction, while the metric keeps the norm before clipping.
    bound = reported_free / 10
    clipped = FineTune("builtin:tiny-llama", "lora", _params(max_grad_norm=bound), data)
    seen = _grads_at_optimizer_step(clipped)
    reported = clipped.step().grad_norm
    assert reported == pytest.approx(reported_free, rel=1e-4) and reported > bound
    assert _norm(seen[0]) <= bound * (1 + 1e-5) and _norm(seen[0]) == pytest.approx(bound, rel=1e-4)
    for g, f in zip(seen[0], free[0], strict=True):
        assert torch.allclose(g, f / 10, rtol=1e-3, atol=1e-12)


def _first_updates(data, steps: int, **kw) -> list[list[torch.Tensor]]:
    """The change each of the first `steps` optimizer steps makes to the trainable weights."""
    ft = FineTune("builtin:tiny-llama", "lora", _params(warmup_steps=0, schedule="constant", **kw), data)
    weights = [[p.detach().clone() for p in ft.trainable]]
    for _ in range(steps):
        ft.step()
        weights.append([p.detach().clone() for p in ft.trainable])
    return [[b - a for a, b in zip(w0, w1, strict=True)] for w0, w1 in itertools.pairwise(weights)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-4, atol=1e-9) for x, y in zip(a, b, strict=True))


def test_adam_betas_and_epsilon_reach_the_optimizer(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "lora", _params(adam_beta1=0.5, adam_beta2=0.95, adam_epsilon=1e-3), data)
    assert all(g["betas"] == (0.5, 0.95) and g["eps"] == 1e-3 for g in ft.optimizer.param_groups)


@pytest.mark.parametrize("beta", ["adam_beta1", "adam_beta2"])
def test_adam_betas_change_the_second_update_not_the_first(demo_data, beta):
    _, data = demo_data
    default = _first_updates(data, 2)
    changed = _first_updates(data, 2, **{beta: 0.5})
    # Adam's bias correction makes the first update g/|g| whatever the betas; from the second on, the moving
    # averages mix in the earlier gradient by beta1 (direction) and beta2 (scale).
    assert _same(default[0], changed[0])
    assert not _same(default[1], changed[1])


def test_adam_epsilon_damps_the_update(demo_data):
    _, data = demo_data
    lr = _params().learning_rate

    def largest(updates: list[torch.Tensor]) -> float:
        return max(float(u.abs().max()) for u in updates)

    # Adam's first update is lr * g / (|g| + eps): lr * sign(g) with a tiny epsilon. The gradient is clipped to
    # norm 1 (max_grad_norm's default), so every |g| <= 1 and epsilon 10 keeps every update under lr / 11.
    assert largest(_first_updates(data, 1)[0]) == pytest.approx(lr, rel=1e-3)
    assert largest(_first_updates(data, 1, adam_epsilon=10.0)[0]) < lr / 11


def test_frozen_layers_keep_their_weights(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "full", _params(freeze_layers=1, learning_rate=1e-2), data)
    layers = ft.model.model.layers
    before0 = [p.detach().clone() for p in layers[0].parameters()]
    before1 = [p.detach().clone() for p in layers[1].parameters()]
    for _ in range(3):
        ft.step()
    assert all(torch.equal(a, b) for a, b in zip(before0, layers[0].parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before1, layers[1].parameters(), strict=True))


def test_lora_target_modules_as_a_searched_choice_decide_which_modules_get_adapters(demo_data):
    _, data = demo_data
    choices = ["q_proj,v_proj", "all-linear"]
    preset = Preset.from_dict(tiny_preset_dict(search={"lora_target_modules": {"type": "categorical",
                                                                               "choices": choices}}))
    wrapped = {}
    for choice in choices:
        params = suggest_params(optuna.trial.FixedTrial({"lora_target_modules": choice}), preset)
        ft = FineTune("builtin:tiny-llama", "lora", params, data)
        # Trainable names look like base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight.
        wrapped[choice] = {n.split(".lora_")[0].removeprefix("base_model.model.model.")
                           for n, p in ft.model.named_parameters() if p.requires_grad}
    attn = {f"layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mlp = {f"layers.{i}.mlp.{m}" for i in (0, 1) for m in ("gate_proj", "up_proj", "down_proj")}
    assert wrapped["q_proj,v_proj"] == {m for m in attn if m.endswith(("q_proj", "v_proj"))}
    assert wrapped["all-linear"] == attn | mlp  # every linear layer but the output head


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "cosine_restarts", "wsd", "cyclic_wsd"])
def test_schedules_warm_up_then_stay_within_peak(schedule):
    p = TrialParams(max_steps=100, warmup_steps=10, schedule=schedule, cycle_steps=30, learning_rate=1.0)
    f = [lr_factor(s, p, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(0.0 <= x <= 1.0 + 1e-9 for x in f)
    if schedule in ("linear", "cosine", "wsd"):
        assert f[-1] < 0.05


@pytest.mark.parametrize("schedule", ["cosine_restarts", "cyclic_wsd"])
@pytest.mark.parametrize(("max_steps", "cycle_steps", "period"), [(100, 30, 30), (110, None, 33)])
def test_cyclic_schedules_restart_at_the_peak_every_period(schedule, max_steps, cycle_steps, period):
    """Unset cycle_steps means a third of the steps after warm-up (110 steps: a period of 33)."""
    p = TrialParams(max_steps=max_steps, warmup_steps=10, schedule=schedule, cycle_steps=cycle_steps,
                    decay_fraction=0.2, min_lr_ratio=0.1, learning_rate=1.0)
    f = [lr_factor(s, p, max_steps) for s in range(max_steps)]
    starts = list(range(10, max_steps, period))
    rises = [s for s in range(11, max_steps) if f[s] > f[s - 1]]
    # The LR jumps back up at every period boundary and nowhere else: 2 restarts for 90 steps of period 30,
    # 3 for 100 of period 33 (the last cycle one step long).
    assert rises == starts[1:] and len(rises) == math.ceil((max_steps - 10) / period) - 1
    decay = round(period * 0.2)
    for lo, hi in itertools.pairwise([*starts, max_steps]):
        cycle = f[lo:hi]
        assert cycle[0] == 1.0 and all(a >= b for a, b in itertools.pairwise(cycle))
        if hi - lo < period:
            continue
        if schedule == "cyclic_wsd":
            # Each cycle: flat at the peak, then a linear decay over its last 20 % down to min_lr_ratio.
            assert cycle[: period - decay] == [1.0] * (period - decay)
            steps_down = [a - b for a, b in itertools.pairwise(cycle[period - decay - 1 :])]
            assert steps_down == pytest.approx([0.9 / decay] * decay)
            assert cycle[-1] == pytest.approx(0.1)
        else:
            assert all(a > b for a, b in itertools.pairwise(cycle)) and 0.1 < cycle[-1] < 0.11


def test_wsd_is_flat_then_decays():
    p = TrialParams(max_steps=100, warmup_steps=0, schedule="wsd", decay_fraction=0.2, learning_rate=1.0)
    f = [lr_factor(s, p, 100) for s in range(100)]
    assert all(x == 1.0 for x in f[:80]) and f[80] < 1.0 and f[99] == pytest.approx(0.0)


def test_default_batch_size_rule(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "lora", _params(batch_size=None), data)
    assert ft.batch_size == max(1, min(256, round(0.002 * len(data.train))))


def test_eval_loss_is_finite_and_deterministic(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "lora", _params(), data)
    a, b = ft.evaluate(), ft.evaluate()
    assert math.isfinite(a) and a == b


def test_adalora_trains_and_reallocates_ranks(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "adalora", _params(max_steps=60, lora_r=4, learning_rate=1e-2), data)
    before = ft.evaluate()
    for _ in range(60):
        ft.step()
    assert ft.evaluate() < before - 0.5
    ranks = ft.model.peft_config["default"].rank_pattern
    assert ranks, "AdaLoRA should have computed a rank pattern after its warm-up"


def test_adalora_orthogonality_penalty_keeps_the_factors_closer_to_orthogonal(demo_data):
    from tui_tuner.training.model import adalora_orth_penalty

    _, data = demo_data

    def residual_after(weight: float) -> float:
        ft = FineTune("builtin:tiny-llama", "adalora", _params(max_steps=40, lora_r=4, learning_rate=1e-2), data)
        ft.model.peft_config["default"].orth_reg_weight = weight
        for _ in range(40):
            ft.step()
        ft.model.peft_config["default"].orth_reg_weight = 1.0
        with torch.no_grad():
            return float(adalora_orth_penalty(ft.model, ft._orth_factors))

    without, with_penalty = residual_after(0.0), residual_after(0.5)
    assert with_penalty < 0.8 * without, (with_penalty, without)


def test_label_smoothing_raises_the_training_loss_of_the_same_batch(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "lora", _params(), data)
    batch = ft.stream.next()
    plain = ft._loss(batch, 0.0)
    smooth = ft._loss(batch, 0.3)
    assert float((smooth[0] / smooth[1]).detach()) != pytest.approx(float((plain[0] / plain[1]).detach()))


def test_text_and_chat_formats(demo_data, tmp_path):
    import json

    from tui_tuner.training.data import detect_format, load_records

    tok, _ = demo_data
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    rows = load_records(str(path))
    assert detect_format(rows, "auto", str(path)) == "chat"
    (ex,) = tokenize(rows, "chat", tok, 100, str(path))
    prompt = tok("<user>hi\n<assistant>", add_special_tokens=False)["input_ids"]
    assert ex.ids[: ex.prompt_len] == prompt  # the loss covers only the assistant's answer
    assert tok.decode(ex.ids[ex.prompt_len :], skip_special_tokens=True) == "yo\n"
    (t,) = tokenize([{"text": "abc"}], "text", tok, 100, "x")
    assert t.prompt_len == 0 and len(t.ids) == 4  # 3 bytes + EOS


def test_epochs_budget(demo_data):
    _, data = demo_data
    ft = FineTune("builtin:tiny-llama", "lora", TrialParams(epochs=0.5, batch_size=16, grad_accum=2), data)
    assert ft.total_steps == math.ceil(math.ceil(len(data.train) / 32) * 0.5)


def test_own_memory_counts_weights_gradients_and_adam_state(demo_data):
    _, data = demo_data

    def nbytes(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    full = FineTune("builtin:tiny-llama", "full", _params(), data)
    full.step()
    weights = nbytes(full.model.parameters())
    # Full fine-tune with AdamW: weights, their gradients, exp_avg and exp_avg_sq (plus per-tensor step counters).
    assert 4 * weights <= full.own_bytes() <= 4 * weights + 64 * len(list(full.model.parameters())) + 4096
    lora = FineTune("builtin:tiny-llama", "lora", _params(), data)
    lora.step()
    adapters = nbytes(lora.trainable)
    base = nbytes(lora.model.parameters())
    assert base + 3 * adapters <= lora.own_bytes() < full.own_bytes()
