"""One formatter per kind of number (issue 14, defect 10): examples of each, at its fixed significant digits."""

from __future__ import annotations

import math

import pytest

from tui_tuner.format import (
    fmt_bytes,
    fmt_count,
    fmt_duration,
    fmt_exact,
    fmt_loss,
    fmt_lr,
    fmt_param,
    fmt_params,
    fmt_rate,
    fmt_steps,
)

KINDS = {
    fmt_loss: [(1, "1.000"), (1.3, "1.300"), (0.802, "0.8020"), (0.3624, "0.3624"), (12.3456, "12.35"),
               (None, "-"), (math.nan, "-"), (math.inf, "-")],
    fmt_lr: [(0.016, "1.6e-2"), (2.3e-3, "2.3e-3"), (5e-4, "5.0e-4"), (0.01, "1.0e-2"), (0.0, "0"), (None, "-")],
    fmt_bytes: [(512, "512B"), (1 << 20, "1.00M"), (41.5 * (1 << 20), "41.5M"), (410 << 20, "410M"),
                (1023 << 20, "1.00G"), (12.3 * (1 << 30), "12.3G"), (None, "-")],
    fmt_rate: [(950, "950"), (12.34, "12.3"), (12000, "12.0k"), (12149, "12.1k"), (999.7, "1.00k"),
               (1234567, "1.23M"), (None, "-")],
    fmt_count: [(0, "0"), (1000, "1000"), (640.0, "640"), (None, "-")],
    fmt_duration: [(0.4, "0s"), (45, "45s"), (725, "12m05s"), (11220, "3h07m"), (None, "-")],
}


@pytest.mark.parametrize("fmt,value,text", [(f, v, t) for f, cases in KINDS.items() for v, t in cases])
def test_each_kind_at_its_fixed_digits(fmt, value, text) -> None:
    assert fmt(value) == text


def test_a_kind_is_one_width_for_its_usual_range() -> None:
    assert {len(fmt_loss(v)) for v in (1.0, 1.3, 2.2345, 9.999)} == {5}
    assert {len(fmt_lr(v)) for v in (1e-5, 3e-4, 2.3e-3, 0.016)} == {6}
    assert {len(fmt_bytes(v)) for v in (5 << 20, 41 << 20, 410 << 20, 3 << 30)} == {4, 5}


def test_params_use_the_lr_kind_for_lrs_and_short_names() -> None:
    assert fmt_param("learning_rate", 0.01) == fmt_param("learning_rate", 0.01000) == "1.0e-2"
    assert fmt_param("learning_rate", 5e-4) == "5.0e-4"  # not 0.01 beside 5.0e-04
    assert [fmt_param("weight_decay", v) for v in (0.0, 0.01, 0.0034, 0.123456, 1e-5)] == [
        "0", "0.01", "0.0034", "0.123", "1.00e-5"]
    assert fmt_param("lora_r", 16) == "16" and fmt_param("schedule", "cosine") == "cosine"
    assert fmt_params({"learning_rate": 2.3e-3, "weight_decay": 0.04, "warmup_steps": 50, "lora_r": 16,
                       "lora_alpha": 32.0, "lora_dropout": 0.05}) == "lr=2.3e-3 wd=0.04 warm=50 r=16 α=32 drop=0.05"


def test_steps() -> None:
    assert fmt_steps(640, 1000) == "640/1000" and fmt_steps(3, None) == "3/?"


def test_editable_values_still_round_trip() -> None:
    for v in (2.3456789e-3, 0.1 + 0.2, 1e-8):
        assert float(fmt_exact(v)) == v
