"""Command line: run / resume / export / presets. Bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tui_tuner.daemon import STORAGE_ENV, TOKEN_ENV
from tui_tuner.exit_codes import EXIT_BAD_INPUT
from tui_tuner.signals import StopSignal, exit_code, raise_on_stop_signals

# Heavy modules (pydantic, optuna, textual, torch) are imported inside the commands that need them: `--help`
# and the app's first paint must not wait for them (a test checks what `import tui_tuner.cli` pulls in).
if TYPE_CHECKING:
    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.preset import Preset



def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tui-tuner", description="Live control of Optuna sweeps of LLM fine-tunes.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="start a sweep from a preset (TUI, or --headless)")
    run.add_argument("preset", help="path to a .toml preset or the name of one in presets/")
    run.add_argument("--headless", action="store_true", help="plain text output instead of the TUI")
    run.add_argument("--run-dir", help="where the study, events, metrics and checkpoints go (default runs/<name>)")
    run.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or None,
                     help="Optuna storage URL, e.g. postgresql://user:password@host/db to share the study between "
                          f"boxes (default: ${STORAGE_ENV}, else <run-dir>/optuna.journal)")
    run.add_argument("--n-trials", type=int, help="override study.n_trials")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a preset field, e.g. --set params.learning_rate=3e-4 (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the search space, then exit")
    run.add_argument("--join", action="store_true",
                     help="add to a study the storage already holds under this name (refused otherwise)")
    _engine_options(run)

    res = sub.add_parser("resume", help="continue a run directory after a crash or a stop")
    res.add_argument("run_dir")
    res.add_argument("--headless", action="store_true")
    res.add_argument("--n-trials", type=int, help="raise the trial budget")
    res.add_argument("--resume-paused", action="store_true",
                     help="trials that were paused continue running (they come back paused otherwise)")
    _engine_options(res)

    exp = sub.add_parser("export", help="write best params (JSON) and a results table (CSV) of a run")
    exp.add_argument("run_dir")
    exp.add_argument("--out", help="directory for best_params.json and trials.csv (default: the run dir)")

    from tui_tuner.ctl import add_parsers
    from tui_tuner.worker import add_parser as add_worker

    add_parsers(sub)
    _engine_options(add_worker(sub, os.environ.get(STORAGE_ENV) or None))

    pre = sub.add_parser("presets", help="list bundled presets, or `presets show NAME`")
    # No argparse `choices`: `presets tiny-demo` would be an "invalid choice" instead of pointing at `show`.
    pre.add_argument("action", nargs="?", default="list", help="list (the default) or show")
    pre.add_argument("name", nargs="?")
    return ap


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detach", action="store_true",
                   help="start the sweep in the background and return (then: tui-tuner attach RUN_DIR)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="also serve the control API on this TCP address (e.g. 127.0.0.1:8765, for ssh -L), "
                        "behind a token printed once")
    p.add_argument("--as-engine", action="store_true", help=argparse.SUPPRESS)  # the background engine itself


def main(argv: list[str] | None = None) -> int:
    # transformers' deprecation chatter is for library authors, not for someone watching a sweep.
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = _parser().parse_args(argv)
    raise_on_stop_signals()  # SIGTERM / SIGHUP stop like Ctrl-C, from here on (loading a model included)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, not at exit, so that a reader gone away is caught below
        return code
    except BrokenPipeError:  # `tui-tuner ctl RUN status | head`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except (ValueError, OSError) as e:
        # Every user-facing error class (PresetError, SweepError, DataError, ModelError) is a ValueError; an
        # OSError is a path the user gave that cannot be used (run dir not writable, --out is a file...).
        for line in _error_lines(e):
            print(f"tui-tuner: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:  # before the sweep started (loading a model, tokenising): nothing to stop yet
        print("tui-tuner: interrupted" if not isinstance(e, StopSignal) else f"tui-tuner: {e}", file=sys.stderr)
        return exit_code(e)


def _error_lines(e: BaseException) -> list[str]:
    if isinstance(e, OSError) and e.filename is not None:
        # str(OSError) reads "[Errno 13] Permission denied: 'runs/x'"; name the path first, as the rest do.
        paths = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return [f"{paths}: {e.strerror or type(e).__name__}"]
    return str(e).splitlines() or [type(e).__name__]


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "presets":
        return _presets(args.action, args.name)
    if args.cmd in ("ctl", "attach", "ls"):
        from tui_tuner import ctl

        return ctl.ls() if args.cmd == "ls" else getattr(ctl, args.cmd)(args)
    if args.cmd == "export":
        from tui_tuner.export import export_run

        print(export_run(Path(args.run_dir), Path(args.out) if args.out else None))
        return 0
    headless = args.headless or os.environ.get("TUI_TUNER_HEADLESS") or (not sys.stdout.isatty() and not args.detach)
    if args.as_engine or headless or getattr(args, "dry_run", False):
        sweep = _open_sweep(args)
        if sweep is None:  # --dry-run: printed, nothing to run
            return 0
        return _serve(sweep, args)
    from tui_tuner.background import start_in_background

    return start_in_background(args)  # the app (or --detach) as a client of an engine in its own process


def _serve(sweep: Sweep, args: argparse.Namespace) -> int:
    """This process is the engine: it serves the control API on <run_dir>/control.sock (and --listen) from
    before the model loads until it exits, and prints like headless (to engine.log when in the background)."""
    from tui_tuner.api.server import ApiServer
    from tui_tuner.background import listening_hint
    from tui_tuner.headless import run_headless

    sweep.claim()  # the run-dir lock first: it alone decides which engine serves the run
    try:
        server = ApiServer(sweep, listen=args.listen, token=os.environ.pop(TOKEN_ENV, None)).start()
        try:
            if args.listen and not args.as_engine:
                print(listening_hint(server.tcp_url or "", server.token or ""), flush=True)
            sweep.start()
            # ctl and attach can resume paused trials; an attached client keeps a finished sweep's engine up
            return run_headless(sweep, clients=True, watched=server.api.attached)
        finally:
            server.close()
    finally:
        sweep.unclaim()  # a start that failed before writing the run (bad data) leaves no run dir behind


def _open_sweep(args: argparse.Namespace) -> Sweep | None:
    """The sweep `run` or `resume` asks for, not started yet; None after a dry run."""
    from tui_tuner.engine.run_dir import RunDir
    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.preset import Preset, PresetError, resolve_preset_path

    if args.cmd == "worker":
        from tui_tuner.worker import open_worker

        return open_worker(args)
    if args.n_trials is not None:
        check_n_trials(args.n_trials)
    if args.cmd == "resume":
        return Sweep.open(args.run_dir, n_trials=args.n_trials, resume_paused=args.resume_paused)
    path = resolve_preset_path(args.preset)
    preset = Preset.load(path, args.overrides)
    if args.n_trials is not None:
        preset = Preset.from_dict(preset.model_dump(), str(path), [f"study.n_trials={args.n_trials}"])
    if args.dry_run:
        from tui_tuner.training.model_source import model_source

        check_data_files(preset)
        for other in preset.model_names()[1:]:  # searched or fixed model_name: each must resolve too
            model_source(other)
        print(dry_run(preset, model_source(preset.model.name)))
        return None
    run_dir = Path(args.run_dir or Path("runs") / preset.study_name)
    if RunDir(run_dir).meta.exists():
        raise PresetError(f"{run_dir} already holds a run: `tui-tuner resume {run_dir}` or pass --run-dir")
    return Sweep(preset, run_dir, storage=args.storage, join=args.join)


def check_n_trials(n: int) -> None:
    """--n-trials against the schema's own rule for study.n_trials, blaming the flag the user typed (resume
    raises the budget without re-validating the preset, so this is its only check)."""
    from pydantic import ValidationError

    from tui_tuner.params import error_message
    from tui_tuner.preset import PresetError, StudySection

    try:
        StudySection(n_trials=n)
    except ValidationError as e:
        raise PresetError(f"--n-trials: {error_message(e.errors()[0])} (got {n})") from None


def check_data_files(preset: Preset) -> None:
    """Parse the JSONL files and check every row against their format, as tokenising will (which needs the
    model, and a dry run does not load it)."""
    from tui_tuner.training.data import check_rows, detect_format, load_records

    for path in filter(None, (preset.data.train, preset.data.eval)):
        rows = load_records(path)
        check_rows(rows, detect_format(rows, preset.data.format, path), path)


def dry_run(preset: Preset, source: str) -> str:
    """What a run would do; `source` says where the model and tokenizer load from (model_source)."""
    s = preset.study
    lines = [f"preset {preset.name}: {preset.description}".rstrip(": "),
             f"model {preset.model.name} ({preset.model.method}): {source}; data {preset.data.train}",
             f"study {preset.study_name}: sampler {s.sampler}, pruner {s.pruner}, {s.n_trials} trials, "
             f"{s.concurrency} at a time" + (f", timeout {s.timeout:g}s" if s.timeout else ""),
             "search space:" if preset.search else "search space: (none: every trial uses the fixed params)"]
    for name, d in preset.search.items():
        spec = d.model_dump(exclude={"type"}, exclude_none=True)
        lines.append(f"  {name:<22} {d.type:<12} {spec}")
    per = preset.params.max_steps
    lines.append(f"per trial: {per or f'{preset.params.epochs} epochs'} steps max, eval every "
                 f"{preset.params.eval_interval} steps, checkpoint every {preset.checkpoints.interval or '-'}")
    if per:
        lines.append(f"budget: {s.n_trials} trials x {per} steps = at most {s.n_trials * per:,} optimizer steps "
                     "(fewer with pruning; searched max_steps may change it)")
    return "\n".join(lines)


def _presets(action: str, name: str | None) -> int:
    from tui_tuner.preset import PRESETS_DIR, Preset, PresetError, resolve_preset_path

    if action not in ("list", "show"):
        hint = f": to print that preset, `tui-tuner presets show {action}`" if _is_preset(action) else ""
        raise PresetError(f"presets: unknown action {action!r} (list or show){hint}")
    if action == "show":
        if not name:
            raise PresetError("presets show: which preset? (tui-tuner presets lists them)")
        path = resolve_preset_path(name)
        print(f"# {path}\n" + Preset.load(path).to_toml(), end="")
        return 0
    for f in sorted(PRESETS_DIR.glob("*.toml")):
        try:
            desc = Preset.load(f).description
        except PresetError as e:
            desc = f"(invalid: {str(e).splitlines()[0]})"
        print(f"{f.stem:<24} {desc}")
    return 0


def _is_preset(name: str) -> bool:
    from tui_tuner.preset import PresetError, resolve_preset_path

    try:
        resolve_preset_path(name)
    except PresetError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
