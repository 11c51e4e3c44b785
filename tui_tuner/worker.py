"""`tui-tuner worker`: join, from this box, a sweep whose study is in a shared database (PostgreSQL)."""

from __future__ import annotations

import argparse
import socket
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from tui_tuner.engine.errors import SweepError

if TYPE_CHECKING:
    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.preset import Preset


STUDY_WAIT_S = 60.0  # a worker started with the run that creates the study waits for it this long


def add_parser(sub: argparse._SubParsersAction, storage_default: str | None) -> argparse.ArgumentParser:
    w = sub.add_parser("worker", help="join a sweep whose study is in a shared database, from this box")
    w.add_argument("--storage", default=storage_default, help="the study's database URL (default: "
                   "$TUI_TUNER_STORAGE), e.g. postgresql://user:password@host/db")
    w.add_argument("--study", required=True, help="the study's name (the preset's study name)")
    w.add_argument("--run-dir", help="this box's events, metrics and checkpoints (default runs/<study>-<host>); "
                   "a worker restarted on the same run dir continues its own trials")
    w.add_argument("--concurrency", type=int, help="trials at a time on this worker (default: the preset's)")
    w.add_argument("--headless", action="store_true")
    return w


def default_run_dir(study: str) -> Path:
    return Path("runs") / f"{study}-{socket.gethostname().split('.')[0]}"


def run_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else default_run_dir(args.study)


def study_preset(url: str, study: str, wait_s: float = STUDY_WAIT_S) -> Preset:
    """The resolved preset the run that created the study stored in it: every worker runs the same search
    space and fixed params. Errors name the study and the URL (password masked), in one line."""
    from tui_tuner.engine.storage_url import connect_problem, shown
    from tui_tuner.engine.study import make_storage
    from tui_tuner.engine.study_gateway import PRESET_ATTR
    from tui_tuner.preset import Preset

    said = False
    try:
        storage = make_storage(Path("."), url)
    except Exception as e:  # SQLAlchemy raises many types; the user needs the one line
        raise SweepError(f"--storage {shown(url)}: {connect_problem(e, url)}") from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            study_id = storage.get_study_id_from_name(study)
            break
        except KeyError:
            if time.monotonic() >= deadline:
                names = sorted(s.study_name for s in storage.get_all_studies())
                raise SweepError(f"--storage {shown(url)} holds no study {study!r} (it holds: "
                                 f"{', '.join(names) or 'none'}); start the sweep on one box first: "
                                 "tui-tuner run PRESET --storage URL") from None
            if not said:  # the run that creates it may still be loading its model
                print(f"tui-tuner: waiting up to {wait_s:.0f}s for study {study!r} to appear in --storage "
                      f"{shown(url)}…", file=sys.stderr, flush=True)
                said = True
            time.sleep(1.0)
    text = storage.get_study_user_attrs(study_id).get(PRESET_ATTR)
    if not isinstance(text, str):
        raise SweepError(f"study {study!r} in --storage {shown(url)} holds no tui-tuner preset (it was not "
                         "created by `tui-tuner run`)")
    return Preset.from_dict(tomllib.loads(text), f"study {study!r} (its stored preset)")


def open_worker(args: argparse.Namespace) -> Sweep:
    """A new worker on the study, or this box's worker restarted on its run dir (its interrupted trials then
    continue under their numbers)."""
    from tui_tuner.engine.run_dir import RunDir
    from tui_tuner.engine.storage_url import shown
    from tui_tuner.engine.sweep import Sweep

    if not args.storage:
        raise SweepError("worker: which database? pass --storage URL (or set $TUI_TUNER_STORAGE)")
    if args.concurrency is not None and args.concurrency < 1:
        raise SweepError(f"--concurrency {args.concurrency}: must be at least 1")
    run_dir = run_dir_of(args)
    if RunDir(run_dir).meta.exists():
        sweep = Sweep.open(run_dir, concurrency=args.concurrency)
        if sweep.preset.study_name != args.study or sweep.storage_url != args.storage:
            raise SweepError(f"{run_dir} is a run of study {sweep.preset.study_name!r} on "
                             f"{shown(sweep.storage_url or 'its journal')}, not of {args.study!r} on "
                             f"{shown(args.storage)}: pass another --run-dir")
    else:
        sweep = Sweep(study_preset(args.storage, args.study), run_dir, storage=args.storage, join=True,
                      concurrency=args.concurrency)
    return sweep
