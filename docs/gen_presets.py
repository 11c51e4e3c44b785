"""Regenerates docs/presets.md from the preset schema (a test checks the file is current)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tui_tuner.params import TrialParams
from tui_tuner.preset import (
    AlertsSection,
    CheckpointSection,
    DataSection,
    DeviceSection,
    ModelSection,
    PbtSection,
    PromoteSection,
    StudySection,
)

HEADER = "| field | type | default | notes |\n|---|---|---|---|\n"


def table(model: type[BaseModel]) -> str:
    out = []
    for name, f in model.model_fields.items():
        if f.default is PydanticUndefined:
            default = "(required)"
        else:
            default = "(table)" if f.default_factory is not None else repr(f.default)
        ann = str(f.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
        ann = ann.replace(" | ", " or ").replace("Literal", "one of ")
        out.append(f"| `{name}` | {ann} | `{default}` | {f.description or ''} |")
    return HEADER + "\n".join(out)


TEMPLATE = (Path(__file__).parent / "presets.template.md").read_text()


def render() -> str:
    return TEMPLATE.format(
        model=table(ModelSection), data=table(DataSection), params=table(TrialParams),
        study=table(StudySection), checkpoints=table(CheckpointSection), device=table(DeviceSection),
        alerts=table(AlertsSection), pbt=table(PbtSection), promote=table(PromoteSection),
    )


if __name__ == "__main__":
    target = Path(__file__).parent / "presets.md"
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
