"""CLI edges: OS errors as one line, a forced second Ctrl-C, export's real last step."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna

from tests.conftest import tiny_preset_dict, wait_for
from tui_tuner.cli import main
from tui_tuner.preset import dump_toml


def _one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tui-tuner: error: "), err
    assert all(f in lines[0] for f in fragments), err
    assert "Traceback" not in err


# -- OS errors -------------------------------------------------------------------------------------------------
def test_run_dir_that_cannot_be_created_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict()))
    assert main(["run", str(preset), "--headless", "--run-dir", str(blocker / "run")]) == 2
    _one_line(capsys.readouterr().err, str(blocker / "run"))


def test_permission_error_on_the_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    # Tests may run as root, where chmod does not deny anything: make the run dir's mkdir fail as it would.
    run_dir = tmp_path / "run"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == run_dir:
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict()))
    assert main(["run", str(preset), "--headless", "--run-dir", str(run_dir)]) == 2
    _one_line(capsys.readouterr().err, f"{run_dir}: Permission denied")


def test_export_out_pointing_at_a_file_is_one_line(tmp_path, capsys):
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict()))
    run_dir = tmp_path / "run"
    # A real run dir with no trial: the study timeout is over before one could start.
    assert main(["run", str(preset), "--headless", "--run-dir", str(run_dir), "--set", "study.timeout=1e-9"]) == 0
    capsys.readouterr()
    out = tmp_path / "out.csv"
    out.write_text("")
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    _one_line(capsys.readouterr().err, f"{out}: File exists")


# -- Ctrl-C ----------------------------------------------------------------------------------------------------
SECOND_CTRL_C = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from tui_tuner.headless import run_headless

    class SlowStop:
        # Ctrl-C while waiting, and again during the graceful stop that the first one began.
        run_dir = Path("runs/x")
        def subscribe(self, fn): return lambda: None
        def events_since(self, seq): return []
        def wait(self, timeout=None):
            os.kill(os.getpid(), signal.SIGINT); time.sleep(30)
        def stop(self, timeout=None):
            os.kill(os.getpid(), signal.SIGINT); time.sleep(30)

    run_headless(SlowStop())
    print("not reached")
""")


def test_second_ctrl_c_exits_at_once_with_one_line():
    r = subprocess.run([sys.executable, "-c", SECOND_CTRL_C], capture_output=True, text=True, timeout=20)
    assert r.returncode == 130, r.stderr
    assert "stopping: running trials checkpoint" in r.stdout and "not reached" not in r.stdout
    assert r.stderr.strip() == "tui-tuner: forced exit; continue with `tui-tuner resume runs/x`", r.stderr


# -- export ----------------------------------------------------------------------------------------------------
def test_export_steps_is_the_last_step_run_not_the_last_eval(make_sweep, tmp_path):
    from tui_tuner.export import export_run

    sweep = make_sweep(params={"max_steps": 2000, "eval_interval": 10}, study={"n_trials": 1, "concurrency": 1})
    sweep.start()
    wait_for(lambda: any(t.number == 0 and t.step >= 12 for t in sweep.trials()), what="trial 0 past its first eval")
    while True:  # paused between evals, so the last eval step and the last step differ
        sweep.pause(0)
        wait_for(lambda: sweep.trial(0).state == "paused", what="pause")
        step = sweep.trial(0).step
        if step % 10:
            break
        sweep.resume_trial(0)
        wait_for(lambda s=step: sweep.trial(0).step > s, what="a step")
    sweep.kill(0)
    assert sweep.wait(120)
    sweep.stop()
    export_run(tmp_path / "run")
    (row,) = csv.DictReader((tmp_path / "run" / "trials.csv").open())
    trial = optuna.load_study(study_name="test", storage=sweep.study._storage).trials[0]
    assert row["state"] == "killed" and trial.user_attrs["stopped_at_step"] == step
    assert int(row["steps"]) == step != max(trial.intermediate_values)


def test_export_last_step_without_metrics_uses_the_engine_attrs(tmp_path):
    from tui_tuner.export import last_step

    t = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={10: 1.0},
                                  user_attrs={"pruned_at_step": 17})
    assert last_step(t, tmp_path / "no-such-trial") == 17
    # After a crash the trial re-ran steps 11.. from its checkpoint: the newest line wins, not the largest step.
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                                                    for s in [*range(1, 21), *range(11, 16)]))
    assert last_step(t, tmp_path) == 15


def test_run_refuses_another_runs_study_naming_join_and_join_joins_it(tmp_path, capsys):
    from tests.fake_backend import FakeBackend
    from tui_tuner.cli import _open_sweep, _parser
    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.preset import Preset

    run_dir = tmp_path / "run"
    first = Sweep(Preset.from_dict(tiny_preset_dict(params={"max_steps": 10}, study={"n_trials": 1})), run_dir,
                  backend=FakeBackend()).start()
    assert first.wait(30)
    first.stop()
    (run_dir / "sweep.json").unlink()  # its journal is left, as another run's would be
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict()))
    assert main(["run", str(preset), "--headless", "--run-dir", str(run_dir)]) == 2
    _one_line(capsys.readouterr().err, "already holds a study 'test' (1 trial)", "--join")
    args = _parser().parse_args(["run", str(preset), "--headless", "--run-dir", str(run_dir), "--join"])
    sweep = _open_sweep(args)
    assert sweep is not None and sweep.join


# -- issue 14, defect 11: a pipe closed early, and errors that blame what the user typed -----------------------
def _closed_pipe_run(*args: str) -> subprocess.CompletedProcess[str]:
    """The command writing to a pipe whose reader is gone before it starts (`| head -1` having read its line)."""
    import os

    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "tui_tuner.cli", *args], stdout=w, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(w)


def test_presets_list_into_a_closed_pipe_exits_quietly():
    r = _closed_pipe_run("presets", "list")
    assert r.returncode in (0, 141) and r.stderr == "", r.stderr


def test_presets_list_into_head_prints_one_line_and_no_error():
    r = subprocess.run(f"{sys.executable} -m tui_tuner.cli presets list | head -1", shell=True, capture_output=True,
                       text=True, timeout=60)
    assert len(r.stdout.splitlines()) == 1 and r.stderr == "", r.stderr


def test_n_trials_zero_blames_the_flag_on_run_and_resume(tmp_path, capsys):
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict()))
    assert main(["run", str(preset), "--dry-run", "--n-trials", "0"]) == 2
    _one_line(capsys.readouterr().err, "--n-trials: ", "(got 0)")
    assert main(["resume", str(tmp_path / "run"), "--headless", "--n-trials", "0"]) == 2
    err = capsys.readouterr().err
    _one_line(err, "--n-trials: ", "(got 0)")
    assert "study.n_trials" not in err


def test_set_of_a_search_type_blames_the_set_not_the_file(tmp_path, capsys):
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict(search={"lora_r": {"type": "categorical", "choices": [4, 8]}})))
    assert main(["run", str(preset), "--dry-run", "--set", "search.lora_r.type=int"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["tui-tuner: error: --set search.lora_r.type: search.lora_r.low: required field is missing",
                     "tui-tuner: error: --set search.lora_r.type: search.lora_r.high: required field is missing",
                     "tui-tuner: error: --set search.lora_r.type: search.lora_r.choices: unknown key"]


def test_presets_with_a_preset_name_suggests_show(capsys):
    assert main(["presets", "tiny-demo"]) == 2
    _one_line(capsys.readouterr().err, "unknown action 'tiny-demo'", "`tui-tuner presets show tiny-demo`")
    assert main(["presets", "nonsense"]) == 2
    err = capsys.readouterr().err
    _one_line(err, "unknown action 'nonsense' (list or show)")
    assert "presets show" not in err


def test_quit_dialog_shows_the_real_resume_and_attach_commands(tmp_path, monkeypatch):
    import asyncio

    from tests.test_ui_snapshots import _app
    from tui_tuner.ui.dialogs import QuitScreen

    monkeypatch.chdir(tmp_path)
    app = _app()
    app.source.remote = True  # type: ignore[attr-defined]  # a client of a background engine: q asks Detach/Stop
    app.source.run_dir = Path("runs/my demo")  # type: ignore[misc]  # relative, as `run` makes it, with a space

    async def scenario() -> str:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("q")
            await pilot.pause(0.2)
            assert isinstance(app.screen, QuitScreen)
            return str(app.screen.query_one(".dialog-title").render())

    text = asyncio.run(scenario())
    where = f"'{tmp_path / 'runs/my demo'}'"
    assert f"\n  tui-tuner attach {where}\n" in text and text.endswith(f"\n  tui-tuner resume {where}")
    assert "RUN_DIR" not in text


# -- issue 14, defect 12: a dry run says where the model and tokenizer come from, or fails -------------------
def fake_hf_cache(root: Path, repo_id: str, files: tuple[str, ...] = ("config.json", "tokenizer.json")) -> Path:
    """The Hugging Face hub cache's layout for one model: models--org--name/refs/main naming a snapshot that
    holds the files (what huggingface_hub writes on a download)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    for f in files:
        (snapshot / f).write_text("{}")
    return root


def _dry_run(tmp_path: Path, model: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`run --dry-run` in a process of its own: huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE /
    HF_ENDPOINT at import."""
    import os

    preset = tmp_path / "hub.toml"
    preset.write_text(dump_toml(tiny_preset_dict(model={"name": model})))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "tui_tuner.cli", "run", str(preset), "--dry-run"],
                          capture_output=True, text=True, timeout=60,
                          env={**clean, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), **env})


def test_dry_run_of_a_hub_model_in_the_hf_cache_says_so(tmp_path):
    cache = fake_hf_cache(tmp_path / "hf", "some-org/some-model")
    r = _dry_run(tmp_path, "some-org/some-model", HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert f"model some-org/some-model (lora): in the HF cache ({cache})" in r.stdout


def test_dry_run_of_a_hub_model_cached_without_a_tokenizer_is_refused_offline(tmp_path):
    cache = fake_hf_cache(tmp_path / "hf", "some-org/some-model", files=("config.json",))
    r = _dry_run(tmp_path, "some-org/some-model", HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    assert r.returncode == 2
    _one_line(r.stderr, "model some-org/some-model: not in the HF cache", "HF_HUB_OFFLINE is set")


def test_dry_run_of_a_hub_model_neither_cached_nor_reachable_is_one_line(tmp_path):
    # A closed local port stands for a box without internet, the same on every machine.
    r = _dry_run(tmp_path, "some-org/some-model", HF_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 2
    _one_line(r.stderr, "model some-org/some-model: not in the HF cache", "the hub (http://127.0.0.1:9) is unreachable")


def test_dry_run_of_a_local_model_dir(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    r = _dry_run(tmp_path, str(model), HF_HUB_OFFLINE="1")
    assert r.returncode == 2
    _one_line(r.stderr, f"model {model}: {model} has no tokenizer (tokenizer.json")
    (model / "tokenizer.json").write_text("{}")
    r = _dry_run(tmp_path, str(model), HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert f"model {model} (lora): local directory {model}" in r.stdout
