"""A torch-free Backend for engine tests: a scripted trainer whose loss is a function of its step and params,
with checkpoints on disk in the engine's layout (checkpoint.json + a JSON state), so resume and fork are real."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tui_tuner.params import TrialParams
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import INFO_FILE, CheckpointInfo, CheckpointKind, checkpoint_dir


@dataclass
class FakeStep:
    step: int
    loss: float
    lr: float
    grad_norm: float = 1.0
    tokens_per_s: float = 1000.0
    step_time: float = 0.001
    mem_bytes: int = 1 << 20


class FakeTrainer:
    def __init__(self, params: TrialParams, step_s: float, gate: threading.Event | None, device: str = "cpu"):
        self.device = device
        self.params = params
        self.batch_size = params.batch_size or 8
        self.step_count = 0
        self.total_steps = params.max_steps or 10
        self._step_s = step_s
        self._gate = gate

    @property
    def done(self) -> bool:
        return self.step_count >= self.total_steps

    def loss_at(self, step: int) -> float:
        return 1.0 + 10.0 / (1.0 + step * self.params.learning_rate * 100)

    def step(self) -> FakeStep:
        if self._gate is not None:
            self._gate.wait()
        time.sleep(self._step_s)
        self.step_count += 1
        return FakeStep(self.step_count, self.loss_at(self.step_count), self.params.learning_rate)

    def evaluate(self) -> float:
        return self.loss_at(self.step_count) + 0.05

    def own_bytes(self) -> int:
        return 1024

    def close(self) -> None:
        pass


class FakeBackend:
    """`step_s` paces the steps so commands land mid-run; clearing `gate` holds every trial between steps."""

    def __init__(self, step_s: float = 0.002, gpus: int = 0, need: int = 1 << 30):
        self.step_s = step_s
        self.gpus = gpus  # CUDA devices it claims: the engine then places trials (on a fake inventory)
        self.need = need  # every trial's estimated GPU need
        self.gate = threading.Event()
        self.gate.set()
        self.built: list[tuple[int, int]] = []  # (max_steps, restored step) per build

    def prepare(self, preset: Preset) -> int:
        return 100

    def total_steps(self, params: TrialParams) -> int:
        return params.max_steps or 10

    def build(self, preset: Preset, params: TrialParams, resume_from: Path | None,
              device: str | None = None) -> FakeTrainer:
        t = FakeTrainer(params, self.step_s, self.gate, device or "cpu")
        if resume_from is not None:
            t.step_count = json.loads((resume_from / "state.json").read_text())["step"]
        self.built.append((t.total_steps, t.step_count))
        return t

    def save(self, trainer: FakeTrainer, trial_dir: Path, eval_loss: float | None,
             kind: CheckpointKind) -> CheckpointInfo:
        d = checkpoint_dir(trial_dir, trainer.step_count)
        d.mkdir(parents=True, exist_ok=True)
        (d / "state.json").write_text(json.dumps({"step": trainer.step_count}))
        now = time.time()
        (d / INFO_FILE).write_text(json.dumps({"step": trainer.step_count, "eval_loss": eval_loss, "time": now,
                                               "kind": kind}))
        return CheckpointInfo(trainer.step_count, d, eval_loss, now, kind)

    def cuda_devices(self) -> int:
        return self.gpus

    def estimate_need(self, preset: Preset, params: TrialParams) -> int:
        return self.need

    def gpu_reserved(self, index: int) -> int:
        return 0

    def is_oom(self, e: BaseException) -> bool:
        return False

    def set_threads(self, n: int) -> None:
        pass
