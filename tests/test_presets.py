"""Preset validation, overrides, bundled presets and the CLI's one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_preset_dict
from tui_tuner.cli import main
from tui_tuner.preset import PRESETS_DIR, DataSection, Preset, PresetError, dump_toml

GOOD = dump_toml(tiny_preset_dict())
INT_R = ["search.lora_r.type=int", "search.lora_r.low=2", "search.lora_r.high=16"]  # an int range to break
WARMUP = ["search.warmup_steps.type=int", "search.warmup_steps.low=0"]
STEPS = ["search.max_steps.type=int", "search.max_steps.low=10", "search.max_steps.high=100"]
CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'

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
    ("missing data file", GOOD, ["data.train=/nope/train.jsonl"], "--set data.train: file does not exist"),
    ("missing model dir", GOOD, ["model.name=./no/such/model"], "--set model.name: path does not exist"),
    ("~user that does not exist", GOOD, ["data.train=~nosuchuser/x.jsonl"], "--set data.train: file does not exist"),
    ("bad --set syntax", GOOD, ["params.learning_rate"], "expected key=value"),
    ("--set into a scalar", GOOD, ["name.x=1"], "name is not a table"),
    ("no budget", GOOD, ["params.max_steps=0"], "params.max_steps"),
    ("bad schedule", GOOD, ["params.schedule=cosine_warm"], "params.schedule"),
    ("bad method", GOOD, ["model.method=qlora"], "model.method"),
    ("neither max_steps nor epochs", GOOD.replace("max_steps = 40", ""), [], "params: set max_steps or epochs"),
    # Ranges Optuna itself rejects: each would make every trial's suggest_* raise, so every trial FAILs.
    ("float log with step", GOOD, ["search.learning_rate.step=1e-4"],
     "--set search.learning_rate: The parameter 'step' is not supported when 'log' is true."),
    ("int log with step", GOOD, [*INT_R, "search.lora_r.log=true", "search.lora_r.step=2"],
     "--set search.lora_r: Samplers and other components in Optuna only accept step is 1"),
    ("int log from 0", GOOD, [*INT_R, "search.lora_r.log=true", "search.lora_r.low=0"],
     "--set search.lora_r: log scale needs low > 0"),
    ("float step 0", GOOD, ["search.learning_rate.log=false", "search.learning_rate.step=0.0"],
     "--set search.learning_rate: 'step > 0' must hold, but got step=0.0"),
    ("negative int step", GOOD, [*INT_R, "search.lora_r.step=-2"],
     "--set search.lora_r: 'step > 0' must hold, but got step=-2"),
    ("nan bound", GOOD, ["search.learning_rate.high=nan"], "--set search.learning_rate.high: Input should be a finite"),
    # Lax pydantic took `true` as 1 (`--set params.batch_size=true` ran with batch 1), "4" as 4, and inf as a
    # float greater than 0.
    ("bool as an int param", GOOD, ["params.batch_size=true"], "--set params.batch_size: Input should be a valid "
     "integer (got True)"),
    ("bool as a float param", GOOD, ["params.learning_rate=false"], "--set params.learning_rate: Input should be "
     "a valid number (got False)"),
    ("bool in the file", GOOD.replace("n_trials = 2", "n_trials = true"), [], "{path}: study.n_trials: Input "
     "should be a valid integer (got True)"),
    ("string as an int", GOOD.replace("batch_size = 8", 'batch_size = "8"'), [], "{path}: params.batch_size"),
    ("float as an int", GOOD, ["params.lora_r=8.0"], "--set params.lora_r: Input should be a valid integer"),
    ("bool choice for an int", GOOD, ["search.lora_r.type=categorical", "search.lora_r.choices=[4, true]"],
     "--set search.lora_r: value True is not a valid lora_r: Input should be a valid integer"),
    ("inf adam_epsilon", GOOD, ["params.adam_epsilon=inf"], "--set params.adam_epsilon: Input should be a finite"),
    ("inf lora_alpha", GOOD, ["params.lora_alpha=inf"], "--set params.lora_alpha: Input should be a finite"),
    ("nan lr", GOOD, ["params.learning_rate=nan"], "--set params.learning_rate: Input should be a finite"),
    ("inf timeout", GOOD, ["study.timeout=inf"], "--set study.timeout: Input should be a finite"),
    ("inf choice", GOOD, ["search.lora_alpha.type=categorical", "search.lora_alpha.choices=[8, inf]"],
     "--set search.lora_alpha: value inf is not a valid lora_alpha: Input should be a finite number"),
    ("zero max_steps", GOOD, ["params.max_steps=0"], "--set params.max_steps: Input should be greater than or "
     "equal to 1"),
    ("zero eval_interval", GOOD, ["params.eval_interval=0"], "--set params.eval_interval: Input should be greater"),
    ("negative lr in the file", GOOD.replace("learning_rate = 0.003", "learning_rate = -0.003"), [],
     "{path}: params.learning_rate: Input should be greater than 0"),
    ("warmup longer than the run", GOOD, ["params.warmup_steps=41"],
     "--set params: warmup_steps (41) is longer than the run (max_steps = 40)"),
    ("searched warmup past fixed max_steps", GOOD, [*WARMUP, "search.warmup_steps.high=50"],
     "--set search.warmup_steps: value 50 is not a valid warmup_steps: warmup_steps (50) is longer than the run"),
    ("searched max_steps under fixed warmup", GOOD, [*STEPS, "params.warmup_steps=20"],
     "--set search.max_steps: value 10 is not a valid max_steps: warmup_steps (20) is longer than the run"),
    ("both searched, ranges overlap", GOOD, [*WARMUP, "search.warmup_steps.high=30", *STEPS],
     "--set search.warmup_steps: goes up to 30 steps but search.max_steps goes down to 10"),
    # The run dir defaults to runs/<name>.
    ("name with ../", GOOD.replace('name = "test"', 'name = "../escape"', 1), [],
     "{path}: name: must be a plain file name"),
    ("study name with a separator", GOOD, ['study.name="a/b"'], "--set study.name: must be a plain file name"),
    ("name ..", GOOD, ['name=".."'], "--set name: must be a plain file name"),
    # Sweep.start() builds the grid sampler after it has written the run dir: the preset check must catch this.
    ("grid sampler, float without step", GOOD, ["study.sampler=grid"],
     "{path}: search.learning_rate: the grid sampler needs 'step' on float ranges"),
]


def _run_cli(tmp_path, text, overrides, dry_run):
    """`tui-tuner run` on a preset; without --dry-run a preset that wrongly passes must not train: its study
    timeout is over before the first trial could start, so main() returns 0 at once and the test fails."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    args = ["run", str(path), "--run-dir", str(tmp_path / "run")]
    args += ["--dry-run"] if dry_run else ["--headless", "--set", "study.timeout=1e-9"]
    for o in overrides:
        args += ["--set", o]
    return main(args), path


def _assert_one_line_errors(err, expected):
    assert expected in err, err
    assert "Traceback" not in err and "Value error" not in err  # a validator's words, not pydantic's wrapper
    assert all(line.startswith("tui-tuner: error: ") for line in err.strip().splitlines()), err


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(("what", "text", "overrides", "expected"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_preset_gives_one_line_error_and_exit_2(tmp_path, capsys, what, text, overrides, expected, dry_run):
    code, path = _run_cli(tmp_path, text, overrides, dry_run)
    err = capsys.readouterr().err
    assert code == 2, err
    _assert_one_line_errors(err, expected.format(path=path))
    assert not (tmp_path / "run").exists()  # nothing written before validation passes


# (what is wrong, the JSONL file, expected fragment; {data} is the file's path)
BAD_DATA = [
    ("chat: empty messages", '{"messages": []}\n', "{data}:1: 'messages' must be a non-empty list"),
    ("chat: messages a string", '{"messages": "hi"}\n', "{data}:1: 'messages' must be a non-empty list"),
    ("chat: message not an object", '{"messages": [1]}\n', "{data}:1: messages[0] must be an object"),
    ("chat: no content", CHAT + '\n\n{"messages": [{"role": "user"}]}\n', "{data}:3: messages[0].content is missing"),
    ("chat: role not a string", '{"messages": [{"role": 1, "content": "x"}]}\n',
     "{data}:1: messages[0].role is not a string (int)"),
    ("text: later row lacks text", '{"text": "a"}\n{"txt": "b"}\n', "{data}:2: missing key 'text' for format text"),
    ("completion not a string", '{"prompt": "a", "completion": 5}\n', "{data}:1: 'completion' must be a string"),
    # Empty answers train on the end-of-sequence token alone.
    ("empty completion", '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": " "}\n',
     "{data}:2: completion is empty: nothing to learn but the end of the sequence"),
    ("empty text", '{"text": ""}\n', "{data}:1: text is empty"),
    ("empty final assistant turn", CHAT.replace('"yo"', '""') + "\n",
     "{data}:1: messages[1].content (the final assistant turn) is empty"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(("what", "jsonl", "expected"), BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_malformed_data_rows_give_file_and_line(tmp_path, capsys, what, jsonl, expected, dry_run):
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl)
    code, _ = _run_cli(tmp_path, dump_toml(tiny_preset_dict(data={"train": "data.jsonl"})), [], dry_run)
    err = capsys.readouterr().err
    assert code == 2, err
    _assert_one_line_errors(err, expected.format(data=data))
    assert not (tmp_path / "run").exists()


LONG = "9" * 45  # tokens of the built-in byte-level tokenizer: over the tiny preset's data.max_length (40)

# Found when the data is tokenised (a run, not a dry run: that does not load the tokenizer), still before the run
# dir is written. (what is wrong, the JSONL file, overrides, the expected error lines; {data} is the file's path)
BAD_TOKENS = [
    ("one row: no train/eval split", '{"text": "a b c"}\n', [],
     ["{data}: 1 usable example(s); holding out data.eval_fraction for evaluation needs at least 2 (one to train "
      "on, one to evaluate): add records or set data.eval"]),
    ("prompts over max_length", f'{{"prompt": "1", "completion": "2"}}\n{{"prompt": "{LONG}", "completion": "2"}}'
     f'\n\n{{"prompt": "{LONG}9", "completion": "2"}}\n', [],
     ["{data}: 2 of 3 records have a prompt of data.max_length (40) tokens or more: raise it or shorten them",
      "{data}:2: the prompt is 45 tokens, data.max_length is 40: nothing of the completion is left to learn",
      "{data}:4: the prompt is 46 tokens, data.max_length is 40: nothing of the completion is left to learn"]),
    ("max_length over the model's context", '{"text": "a"}\n{"text": "b"}\n', ["data.max_length=300"],
     ["data.max_length (300) is above the context of builtin:tiny-llama (max_position_embeddings = 256 in its "
      "config): set data.max_length to 256 or less"]),
]


@pytest.mark.parametrize(("what", "jsonl", "overrides", "expected"), BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
def test_data_that_leaves_nothing_to_train_on_is_refused_before_the_run(tmp_path, capsys, what, jsonl, overrides,
                                                                        expected):
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl)
    code, _ = _run_cli(tmp_path, dump_toml(tiny_preset_dict(data={"train": "data.jsonl"})), overrides, False)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.splitlines() == [f"tui-tuner: error: {line.format(data=data)}" for line in expected]
    assert not (tmp_path / "run").exists()


def test_rows_cut_to_max_length_are_counted_in_a_warning(caplog):
    from tui_tuner.training.data import tokenize
    from tui_tuner.training.model import load_tokenizer

    rows = [{"text": "short"}, {"text": LONG}, {"text": LONG * 2}]
    examples = tokenize(rows, "text", load_tokenizer("builtin:tiny-llama"), 40, "x.jsonl")
    assert [len(e.ids) for e in examples] == [6, 40, 40]
    assert caplog.messages == ["x.jsonl: warning: 2 of 3 records are longer than data.max_length (40 tokens; the "
                               "longest is 91) and are cut to it"]


def test_cuda_without_cuda_is_refused_before_the_data_is_prepared():
    from tui_tuner.training.finetune import prepare_data
    from tui_tuner.training.model import ModelError

    # conftest makes torch.cuda.is_available() False; without the check every trial failed with this instead.
    with pytest.raises(ModelError, match=r"^device.type = 'cuda' but no CUDA device is available"):
        prepare_data("builtin:tiny-llama", DataSection(train="/nonexistent.jsonl"), device="cuda")
    assert prepare_data("builtin:tiny-llama", DataSection(train="builtin:progressions", max_length=40),
                        device="cpu")[1].train


def test_cuda_without_cuda_from_the_cli_is_one_line_and_writes_nothing(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict(device={"type": "cuda"})))
    r = subprocess.run([sys.executable, "-m", "tui_tuner.cli", "run", str(preset), "--headless", "--run-dir",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "device.type = 'cuda'" in r.stderr
    assert not (tmp_path / "run").exists()


# -- data rows -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rows", "expected"), [
    ([{"messages": []}], "x: record 1: 'messages' must be a non-empty list"),
    ([{"messages": [{"role": "user", "content": "ok"}]}, {"messages": "hi"}],
     "x: record 2: 'messages' must be a non-empty list"),
    ([{"messages": [1]}], "x: record 1: messages[0] must be an object"),
])
def test_tokenize_rejects_malformed_chat_rows(rows, expected):
    from tui_tuner.training.data import DataError, tokenize
    from tui_tuner.training.model import load_tokenizer

    with pytest.raises(DataError) as e:
        tokenize(rows, "chat", load_tokenizer("builtin:tiny-llama"), 40, "x")
    assert str(e.value).startswith(expected)


def test_chat_template_failure_names_the_line(tmp_path):
    from tui_tuner.training.data import DataError, detect_format, load_records, tokenize
    from tui_tuner.training.model import load_tokenizer

    tok = load_tokenizer("builtin:tiny-llama")
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    path = tmp_path / "chat.jsonl"
    path.write_text("\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    rows = load_records(str(path))
    with pytest.raises(DataError, match=rf"^{path}:2: chat template failed: roles must alternate$"):
        tokenize(rows, detect_format(rows, "auto", str(path)), tok, 40, str(path))


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
def test_every_bundled_preset_passes_dry_run(path, capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tests.test_cli import fake_hf_cache

    # The hub presets' models as if downloaded: the dry run checks they resolve, and tests run offline.
    model = Preset.load(path).model.name
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(fake_hf_cache(tmp_path, model)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
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
    n = sweep.n_train
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


def test_set_paths_resolve_against_the_shell_directory_and_survive_the_run_dir(tmp_path, monkeypatch, capsys):
    # The README's own example: `--set data.train=train.jsonl`, run from the data's directory, preset elsewhere.
    work, presets = tmp_path / "work", tmp_path / "presets"
    work.mkdir(), presets.mkdir()
    (work / "train.jsonl").write_text("".join(f'{{"text": "{i} {i + 1} {i + 2}"}}\n' for i in range(40)))
    (presets / "p.toml").write_text(GOOD)
    monkeypatch.chdir(work)
    sets = ["data.train=train.jsonl", 'description="two\\nlines, a \\"quote\\", a tab\\tand a \\\\ backslash"']
    expected = Preset.load(presets / "p.toml", sets)
    assert expected.data.train == str(work / "train.jsonl")
    assert expected.description == 'two\nlines, a "quote", a tab\tand a \\ backslash'
    args = ["run", str(presets / "p.toml"), "--headless", "--run-dir", "run", "--set", "study.timeout=1e-9"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err  # the timeout ends the sweep before any trial starts
    saved = Preset.load(work / "run" / "preset.toml")  # what resume and export read
    assert saved == expected.model_copy(update={"study": expected.study.model_copy(update={"timeout": 1e-9})})
    # Both commands work on it from another directory.
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(work / "run")]) == 0, capsys.readouterr().err
    assert main(["resume", str(work / "run"), "--headless"]) == 0, capsys.readouterr().err


def test_set_model_paths_and_hub_ids(tmp_path, monkeypatch):
    (tmp_path / "mymodel").mkdir()
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    local = Preset.load(path, ["model.name=mymodel"])
    assert local.model.name == str(tmp_path / "mymodel")  # a local directory, as from_pretrained would read it
    assert Preset.load(path, ["model.name=./mymodel"]).model.name == str(tmp_path / "mymodel")
    hub = Preset.load(path, ["model.name=HuggingFaceTB/SmolLM2-135M"])
    assert hub.model.name == "HuggingFaceTB/SmolLM2-135M"
    builtin = Preset.load(path)
    assert builtin.model.name == "builtin:tiny-llama" and builtin.data.train == "builtin:progressions"
    # Reloaded from another directory (the run dir), every one means the same thing.
    for p in (local, hub):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        (tmp_path / "elsewhere" / "preset.toml").write_text(p.to_toml())
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert Preset.load("preset.toml") == p
        monkeypatch.chdir(tmp_path)


def test_dump_toml_escapes_control_characters():
    import tomllib

    raw = tiny_preset_dict()
    raw["description"] = 'a\nmulti-line\r\ndescription with "quotes", \\, \t, \x01, \x7f and ü'
    text = dump_toml(raw)
    assert tomllib.loads(text)["description"] == raw["description"]
    assert Preset.from_dict(tomllib.loads(text)) == Preset.from_dict(raw)


def test_warmup_and_max_steps_that_fit_are_accepted(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    assert Preset.load(path, ["params.warmup_steps=40"]).params.warmup_steps == 40  # all warmup: allowed
    # The fixed max_steps (40) is overridden by the search: warmup up to 50 fits max_steps from 60 on.
    p = Preset.load(path, [*WARMUP, "search.warmup_steps.high=50", "search.max_steps.type=int",
                           "search.max_steps.low=60", "search.max_steps.high=100"])
    assert p.search["warmup_steps"].high == 50


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_non_utf8_preset_names_the_file_and_line(tmp_path, capsys, dry_run):
    path = tmp_path / "bad.toml"
    path.write_bytes(GOOD.encode().replace(b"[study]", b'[study]\nname = "caf\xe9"', 1))
    line = GOOD[: GOOD.index("[study]")].count("\n") + 2
    args = ["run", str(path), "--run-dir", str(tmp_path / "run")] + (["--dry-run"] if dry_run else ["--headless"])
    assert main(args) == 2
    _assert_one_line_errors(capsys.readouterr().err, f"{path}:{line}: not UTF-8 text (byte 0xe9 at column 12)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_non_utf8_jsonl_lines_are_named_with_the_other_bad_lines(tmp_path, capsys, dry_run):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n{oops\n{"text": "\xff"}\n')
    code, _ = _run_cli(tmp_path, dump_toml(tiny_preset_dict(data={"train": "data.jsonl"})), [], dry_run)
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [f"tui-tuner: error: {data}:2: not UTF-8 text (byte 0xe9 at column 14)",
                                f"tui-tuner: error: {data}:3: not valid JSON (Expecting property name enclosed "
                                "in double quotes)",
                                f"tui-tuner: error: {data}:4: not UTF-8 text (byte 0xff at column 11)"]
    assert not (tmp_path / "run").exists()
