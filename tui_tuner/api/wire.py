"""The API's JSON shapes: snapshots, events and system samples to and from plain dicts (no pickle, no code)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from tui_tuner.engine.events import Event
from tui_tuner.engine.fork_plan import ForkPlan
from tui_tuner.engine.lifecycle import TrialState
from tui_tuner.engine.snapshot import (
    CheckpointView,
    GpuView,
    Insight,
    InsightPoint,
    ParamInsight,
    SweepSnapshot,
    TrialSnapshot,
)
from tui_tuner.engine.system import GpuSample, SystemSample

API_VERSION = 1  # bumped on any change a client of the previous version would misread
PREFIX = f"/v{API_VERSION}"
PEER_HEADER = "x-tui-tuner-peer"  # sent by another worker's engine (federation), lower case as ASGI gives headers


def dumps(obj: Any) -> bytes:
    # allow_nan: a diverged trial's loss is NaN and clients must see it as such (Python's json reads it back);
    # compact separators: this goes out twice a second per client.
    return json.dumps(obj, allow_nan=True, separators=(",", ":")).encode()


_TRIAL_FIELDS = tuple(f.name for f in dataclasses.fields(TrialSnapshot))


def trial_to_wire(t: TrialSnapshot) -> dict[str, Any]:
    # Field by field, not dataclasses.asdict: that deep-copies every dict and costs ~4x as much, twice a second
    # per client. The snapshot is immutable and its dicts are the snapshot's own copies, so sharing them is safe.
    d = {name: getattr(t, name) for name in _TRIAL_FIELDS}
    d["state"] = str(t.state)
    d["checkpoints"] = [{"step": c.step, "eval_loss": c.eval_loss, "path": c.path} for c in t.checkpoints]
    return d


def trial_from_wire(d: dict[str, Any]) -> TrialSnapshot:
    d = dict(d)
    d["state"] = TrialState(d["state"])
    d["checkpoints"] = tuple(CheckpointView(**c) for c in d.get("checkpoints", ()))
    return TrialSnapshot(**_known(TrialSnapshot, d))


def snapshot_head(snap: SweepSnapshot) -> dict[str, Any]:
    head = {f.name: getattr(snap, f.name) for f in dataclasses.fields(snap) if f.name != "trials"}
    head["gpus"] = [dataclasses.asdict(g) for g in snap.gpus]
    return head


def same_trial(t: TrialSnapshot) -> dict[str, Any]:
    return {"number": t.number, "version": t.version, "same": True}


def snapshot_bytes(snap: SweepSnapshot, known: dict[int, int], encoded: Callable[[TrialSnapshot], bytes],
                   **extra: Any) -> bytes:
    """The snapshot's JSON; a trial whose version the client already holds (`known`: number -> version) is
    sent as {"number", "version", "same": true}, so a long sweep's finished trials stop costing bytes. Built from
    each trial's already-encoded bytes (`encoded`, cached by the server per version): a trial is serialised once
    per change, not once per client per refresh."""
    head = dumps({**snapshot_head(snap), **extra})
    trials = b",".join(dumps(same_trial(t)) if known.get(t.number) == t.version else encoded(t)
                       for t in snap.trials)
    return head[:-1] + b',"trials":[' + trials + b"]}"


def snapshot_from_wire(d: dict[str, Any], cache: dict[int, TrialSnapshot]) -> SweepSnapshot:
    """Rebuild a snapshot, taking the trials sent as `same` from `cache` (which is updated in place)."""
    trials = []
    for t in d.get("trials", ()):
        if t.get("same"):
            trial = cache[t["number"]]
        else:
            trial = trial_from_wire(t)
            cache[trial.number] = trial
        trials.append(trial)
    for gone in set(cache) - {t.number for t in trials}:
        del cache[gone]
    fields = _known(SweepSnapshot, {k: v for k, v in d.items() if k not in ("trials", "gpus")})
    fields["workers"] = tuple(fields.get("workers", ()))
    gpus = tuple(GpuView(**{**_known(GpuView, g), "trials": tuple(g.get("trials", ()))}) for g in d.get("gpus", ()))
    return SweepSnapshot(**fields, trials=tuple(trials), gpus=gpus)


def event_to_wire(ev: Event) -> dict[str, Any]:
    return dataclasses.asdict(ev)


def event_from_wire(d: dict[str, Any]) -> Event:
    return Event(**_known(Event, d))


def fork_plan_to_wire(p: ForkPlan) -> dict[str, Any]:
    return dataclasses.asdict(p)


def fork_plan_from_wire(d: dict[str, Any]) -> ForkPlan:
    d = _known(ForkPlan, d)
    return ForkPlan(**{**d, "plan": tuple((int(s), float(lr)) for s, lr in d.get("plan", ()))})


def insight_to_wire(i: Insight) -> dict[str, Any]:
    return dataclasses.asdict(i)


def insight_from_wire(d: dict[str, Any]) -> Insight:
    def param(p: dict[str, Any]) -> ParamInsight:
        return ParamInsight(**{**_known(ParamInsight, p), "choices": tuple(p.get("choices", ())),
                               "bounds": tuple(p["bounds"]) if p.get("bounds") else None,
                               "points": tuple(InsightPoint(**_known(InsightPoint, x)) for x in p.get("points", ()))})

    return Insight(**{**_known(Insight, d), "params": tuple(param(p) for p in d.get("params", ()))})


def system_to_wire(s: SystemSample | None) -> dict[str, Any] | None:
    return None if s is None else dataclasses.asdict(s)


def system_from_wire(d: dict[str, Any] | None) -> SystemSample | None:
    if d is None:
        return None
    gpus = tuple(GpuSample(**_known(GpuSample, g)) for g in d.get("gpus", ()))
    return SystemSample(**_known(SystemSample, {k: v for k, v in d.items() if k != "gpus"}), gpus=gpus)


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Only the fields `cls` has: an engine of a later minor version may send more, which this client ignores."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}
