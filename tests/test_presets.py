"""Preset validation, overrides, bundled presets and the CLI's one-line errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_preset_dict
from tui_tuner.cli import main
from tui_tuner.preset import PRESETS_DIR, Preset, PresetError, dump_toml

GOOD = dump_toml(tiny_preset_dict())

# (what is wrong, preset text or a transform of GOOD, overrides, expected fragment of the one-line error)
BAD_CASES = [
    ("malformed toml", "name = \n[model", [], "malformed TOML"),
    ("unknown top-level key", GOOD + "\nfoo = 1\n", [], "foo: unknown key"),
    ("typo in section key", GOOD.replace("[study]", "[study]\nconcurency = 3"), [],
     "study.concurency: unknown key (did you mean 'concurrency'?)"),
    ("typo in params", GOOD.replace("[params]", "[params]\nlearning_rat = 0.1"), [],
     "params.learning_rat: unknown key (did you mean 'learning_rate'?)"),
    ("wrong type", GOOD.replace("n_trials = 2", 'n_trials = "many"'), [], "study.n_trials"),
    ("negative lr", GOOD, ["params.learning_rate=-1"], "params.learning_rate: Input should be greater than 0"),
    ("missing model", GOOD.replace('[model]\nname = "builtin:tiny-llama"', ""), [], "model: required field"),
    ("unknown sampler", GOOD, ["study.sampler=bayes"], "study.sampler"),
    ("unknown pruner", GOOD, ["study.pruner=asha"], "study.pruner"),
    ("search of unknown param", GOOD, ["search.lerning_rate.type=float", "search.lerning_rate.low=0.1",
                                       "search.lerning_rate.high=0.2"], "did you mean 'learning_rate'"),
    ("search low > high", GOOD, ["search.learning_rate.low=0.5"], "low (0.5) > high"),
    ("log scale from 0", GOOD, ["search.learning_rate.low=0.0"], "log scale needs low > 0"),
    ("unknown dist type", GOOD, ["search.learning_rate.type=normal"], "search.learning_rate"),
    ("categorical invalid value", GOOD, ["search.lora_r.type=categorical", 'search.lora_r.choices=[4, "big"]'],
     "search.lora_r: value 'big'"),
    ("missing data file", GOOD, ["data.train=/nope/train.jsonl"], "data.train: file does not exist"),
    ("missing model dir", GOOD, ["model.name=./no/such/model"], "model.name: path does not exist"),
    ("bad --set syntax", GOOD, ["params.learning_rate"], "expected key=value"),
    ("--set into a scalar", GOOD, ["name.x=1"], "name is not a table"),
    ("no budget", GOOD, ["params.max_steps=0"], "params.max_steps"),
    ("bad schedule", GOOD, ["params.schedule=cosine_warm"], "params.schedule"),
    ("bad method", GOOD, ["model.method=qlora"], "model.method"),
    ("neither max_steps nor epochs", GOOD.replace("max_steps = 40", ""), [], "params: set max_steps or epochs"),
]


@pytest.mark.parametrize(("what", "text", "overrides", "expected"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_preset_gives_one_line_error_and_exit_2(tmp_path, capsys, what, text, overrides, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    args = ["run", str(path), "--dry-run", "--run-dir", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err and "Value error" not in err  # a validator's words, not pydantic's wrapper
    assert all(line.startswith("tui-tuner: error: ") for line in err.strip().splitlines())
    assert not (tmp_path / "run").exists()


def test_all_errors_are_listed_at_once(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace("[study]", "[study]\nconcurency = 3\nsampler = \"x\""))
    with pytest.raises(PresetError) as e:
        Preset.load(path)
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and all(str(path) in line for line in lines)


def test_overrides_change_the_resolved_preset(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    p = Preset.load(path, ["params.learning_rate=3e-4", "study.concurrency=3", "params.schedule=wsd",
                           "search.learning_rate.high=0.5"])
    assert p.params.learning_rate == 3e-4 and p.study.concurrency == 3 and p.params.schedule == "wsd"
    assert p.search["learning_rate"].high == 0.5
    # The resolved preset round-trips through TOML (it is what the run dir keeps).
    again = tmp_path / "again.toml"
    again.write_text(p.to_toml())
    assert Preset.load(again) == p


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_bundled_preset_passes_dry_run(path, capsys):
    assert main(["run", path.stem, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "search space" in out and "budget" in out
    assert path.read_text().startswith("#")  # a comment header saying what it is for


def test_presets_list_and_show(capsys):
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-demo" in listing and "wsd-redecay" in listing
    assert main(["presets", "show", "tiny-demo"]) == 0
    assert 'name = "builtin:tiny-llama"' in capsys.readouterr().out
    assert main(["presets", "show", "tiny-dmo"]) == 2
    assert "did you mean 'tiny-demo'" in capsys.readouterr().err


def test_missing_dataset_and_malformed_jsonl_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict(data={"train": str(bad)})))
    r = subprocess.run([sys.executable, "-m", "tui_tuner.cli", "run", str(preset), "--headless",
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"tui-tuner: error: {bad}:2: not valid JSON (Expecting property name enclosed in "\
                               "double quotes)"
    assert not (tmp_path / "run").exists()


def test_headless_run_of_a_preset_end_to_end(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict(params={"max_steps": 20})))
    r = subprocess.run([sys.executable, "-m", "tui_tuner.cli", "run", str(preset), "--headless", "--run-dir",
                        str(tmp_path / "run"), "--n-trials", "2", "--set", "study.concurrency=1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "trial 0 completed" in r.stdout and "trial 1 completed" in r.stdout
    assert "best trial #" in r.stdout and "adapter:" in r.stdout
    exp = subprocess.run([sys.executable, "-m", "tui_tuner.cli", "export", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert exp.returncode == 0, exp.stderr
    rows = (tmp_path / "run" / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,learning_rate,value") and len(rows) == 3
    assert Path(tmp_path / "run" / "best_params.json").is_file()


def test_docs_presets_md_is_generated_from_the_schema():
    import runpy

    root = Path(__file__).parent.parent
    render = runpy.run_path(str(root / "docs" / "gen_presets.py"))["render"]
    assert (root / "docs" / "presets.md").read_text() == render(), "run: python docs/gen_presets.py"


def test_unset_batch_size_uses_the_rule_and_says_so(tmp_path):
    from tui_tuner import Sweep

    raw = tiny_preset_dict(params={"max_steps": 3}, study={"n_trials": 1})
    del raw["params"]["batch_size"]
    sweep = Sweep(Preset.from_dict(raw), tmp_path / "run").start()
    assert sweep.wait(60)
    msgs = [e.message for e in sweep.events_since(0) if e.kind == "batch_size_rule"]
    sweep.stop()
    n = len(sweep.data.train)
    assert msgs and f"using {max(1, min(256, round(0.002 * n)))} (~0.2% of {n}" in msgs[0]


def test_hub_model_that_cannot_be_fetched_is_one_line(tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "tui_tuner.cli", "run", "smollm2-135m-lora", "--headless",
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tui-tuner: error: cannot load tokenizer for "
                                                   "'HuggingFaceTB/SmolLM2-135M'"), r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "gp", "cmaes"])
@pytest.mark.parametrize("pruner", ["none", "median", "successive_halving", "hyperband"])
def test_every_sampler_and_pruner_is_constructed(sampler, pruner):
    from tui_tuner.engine.study import make_pruner, make_sampler

    raw = tiny_preset_dict(study={"sampler": sampler, "pruner": pruner})
    raw["search"] = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "step": 1e-4}}
    p = Preset.from_dict(raw)
    assert make_sampler(p) is not None and make_pruner(p, 100) is not None
