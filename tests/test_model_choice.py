"""model_name: a searched choice of model sizes of one family; every choice checked before anything trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tomli_w
import torch

from tests.conftest import tiny_preset_dict
from tui_tuner.engine.backend import TorchBackend
from tui_tuner.params import shape_params
from tui_tuner.preset import Preset, PresetError
from tui_tuner.training.model import ModelError, load_tokenizer
from tui_tuner.training.model_choice import check_models


def _save_llama(path: Path, hidden: int, layers: int, tokenizer: object | None = None) -> str:
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    tok = tokenizer or ByT5Tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sizes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("family")
    return _save_llama(root / "small", 32, 1), _save_llama(root / "big", 64, 2)


def _preset(**sections: object) -> Preset:
    return Preset.from_dict(tiny_preset_dict(**sections))  # type: ignore[arg-type]


def test_choices_are_anchored_to_the_preset_file_and_checked_to_exist(tmp_path: Path, sizes) -> None:
    small, big = sizes
    link = (tmp_path / "small").resolve()
    shutil.copytree(small, link)
    raw = tiny_preset_dict(search={"model_name": {"type": "categorical", "choices": ["./small", big]}})
    (tmp_path / "p.toml").write_text(tomli_w.dumps(raw))
    preset = Preset.load(tmp_path / "p.toml")
    assert preset.search["model_name"].choices == [str(link), big]  # type: ignore[union-attr]
    assert preset.model_names() == ["builtin:tiny-llama", str(link), big]
    raw["search"]["model_name"]["choices"] = ["./nope", big]
    (tmp_path / "p.toml").write_text(tomli_w.dumps(raw))
    with pytest.raises(PresetError, match=r"search.model_name: path does not exist: .*/nope"):
        Preset.load(tmp_path / "p.toml")
    with pytest.raises(PresetError, match=r"--set params.model_name: path does not exist"):
        Preset.from_dict(tiny_preset_dict(), overrides=["params.model_name=./nope"])


def test_a_fork_cannot_change_the_model() -> None:
    assert {"model_name"} <= shape_params("lora") and {"model_name"} <= shape_params("full")


def test_a_choice_with_another_vocabulary_is_one_line_naming_both_models(tmp_path: Path, sizes) -> None:
    from transformers import ByT5Tokenizer

    other = _save_llama(tmp_path / "other", 32, 1, ByT5Tokenizer(extra_ids=0))
    preset = _preset(search={"model_name": {"type": "categorical", "choices": [sizes[0], other]}})
    base = load_tokenizer(preset.model.name)
    check_models(_preset(search={"model_name": {"type": "categorical", "choices": list(sizes)}}), base)
    with pytest.raises(ModelError) as err:
        check_models(preset, base)
    msg = str(err.value)
    assert other in msg and "builtin:tiny-llama" in msg and "vocabulary" in msg and "\n" not in msg


@pytest.mark.parametrize("sections", [{"params": {"hidden_dropout": 0.1}},
                                      {"search": {"hidden_dropout": {"type": "float", "low": 0.0, "high": 0.2}}}])
def test_a_dropout_the_model_lacks_fails_at_prepare(sections: dict) -> None:
    with pytest.raises(ModelError, match=r"^hidden_dropout: llama has no hidden dropout"):
        TorchBackend().prepare(_preset(**sections))


def test_trials_of_two_sizes_train_in_one_study_each_with_its_own_shapes(make_sweep, sizes) -> None:
    from safetensors.torch import load_file

    small, big = sizes
    sweep = make_sweep(params={"max_steps": 6, "eval_interval": 3}, checkpoints={"interval": None},
                       search={"model_name": {"type": "categorical", "choices": [small, big]}},
                       study={"n_trials": 2, "concurrency": 2, "sampler": "grid"}).start()
    assert sweep.wait(300)
    trials = sweep.trials()
    assert [t.state for t in trials] == ["complete", "complete"]
    assert sorted(t.params["model_name"] for t in trials) == sorted([small, big])
    widths = {}
    for t in trials:
        final = max(t.checkpoints, key=lambda c: c.step)
        weights = load_file(str(Path(final.path) / "adapter_model.safetensors"))
        a = next(v for k, v in weights.items() if "q_proj.lora_A" in k)
        layers = {k.split(".layers.")[1].split(".")[0] for k in weights}
        widths[t.params["model_name"]] = (a.shape[1], len(layers))
    assert widths == {small: (32, 1), big: (64, 2)}
