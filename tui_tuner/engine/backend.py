"""What the engine needs from the training code, as Protocols, and the real torch implementation (imported lazily,
so the engine, the CLI and the app's first paint load without torch; tests drive the engine with a fake)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from tui_tuner.params import TrialParams
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import CheckpointInfo, CheckpointKind


def model_of(preset: Preset, params: TrialParams) -> str:
    """The model a trial trains: its model_name, else the preset's model.name."""
    return params.model_name or preset.model.name


class StepResult(Protocol):
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    step_time: float
    mem_bytes: int


class Trainer(Protocol):
    """One trial's model, optimizer and data stream (training.finetune.FineTune)."""

    device: Any
    batch_size: int
    step_count: int
    total_steps: int

    @property
    def done(self) -> bool: ...
    def step(self) -> StepResult: ...
    def evaluate(self) -> float: ...
    def own_bytes(self) -> int: ...
    def close(self) -> None: ...


class Backend(Protocol):
    """Loads the sweep's data once, builds and checkpoints each trial's Trainer."""

    def prepare(self, preset: Preset) -> int:
        """Load the tokenizer and data (seconds to minutes); the number of training examples."""
        ...

    def total_steps(self, params: TrialParams) -> int: ...
    def build(self, preset: Preset, params: TrialParams, resume_from: Path | None,
              device: str | None = None) -> Trainer:
        """A Trainer for `params` on `device` (a placed 'cuda:N'; None: the preset's device.type), restored from
        `resume_from` with `params` applied after the restore."""
        ...

    def cuda_devices(self) -> int:
        """GPUs trials can be placed on (0: none, or device.type = 'cpu')."""
        ...

    def estimate_need(self, preset: Preset, params: TrialParams) -> int:
        """A conservative estimate of the GPU memory one trial of `params` peaks at."""
        ...

    def gpu_reserved(self, index: int) -> int:
        """Bytes this process's allocator holds on GPU `index`."""
        ...

    def save(self, trainer: Trainer, trial_dir: Path, eval_loss: float | None,
             kind: CheckpointKind) -> CheckpointInfo: ...
    def is_oom(self, e: BaseException) -> bool: ...
    def set_threads(self, n: int) -> None: ...


class TorchBackend:
    """The real fine-tunes: transformers + peft models, peft-format checkpoints."""

    def __init__(self) -> None:
        self.data: Any = None
        self.tokenizer: Any = None
        self._same_vocab: set[str] = set()  # models checked against model.name's tokenizer

    def prepare(self, preset: Preset) -> int:
        from tui_tuner.training.finetune import prepare_data
        from tui_tuner.training.model_choice import check_models

        self.set_threads(preset.device.threads_per_trial)
        from tui_tuner.training.model import check_gpus

        if preset.device.type != "cpu":
            check_gpus(preset.device.gpus)
        self.tokenizer, self.data = prepare_data(preset.model.name, preset.data, preset.model.trust_remote_code,
                                                 preset.device.type)
        check_models(preset, self.tokenizer)
        self._same_vocab.update(preset.model_names())
        return len(self.data.train)

    def cuda_devices(self) -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def estimate_need(self, preset: Preset, params: TrialParams) -> int:
        from tui_tuner.training.finetune import resolved_batch_size
        from tui_tuner.training.memory_estimate import estimate_bytes

        micro = resolved_batch_size(params, len(self.data.train))
        return estimate_bytes(model_of(preset, params), preset.model.method, params, preset.data.max_length, micro,
                              preset.model.trust_remote_code)

    def gpu_reserved(self, index: int) -> int:
        import torch

        return int(torch.cuda.memory_reserved(index))

    def total_steps(self, params: TrialParams) -> int:
        from tui_tuner.training.finetune import total_steps

        return total_steps(params, len(self.data.train))

    def build(self, preset: Preset, params: TrialParams, resume_from: Path | None,
              device: str | None = None) -> Trainer:
        from tui_tuner.training import checkpoint as ckpt
        from tui_tuner.training.finetune import FineTune
        from tui_tuner.training.model_choice import check_vocabulary

        name = model_of(preset, params)
        if name not in self._same_vocab:  # enqueued with a model the preset never named
            check_vocabulary(name, preset.model.name, self.tokenizer, preset.model.trust_remote_code)
            self._same_vocab.add(name)
        full = preset.model.method == "full"
        ft = FineTune(name, preset.model.method, params, self.data, device or preset.device.type,
                      preset.device.precision, weights_dir=str(resume_from) if (resume_from and full) else None,
                      trust_remote_code=preset.model.trust_remote_code)
        if resume_from:
            try:
                ckpt.restore(ft, resume_from)
                ft.apply_params(params)  # a fork's overrides win over what the optimizer state carried
            except BaseException:
                ft.close()
                raise
        return ft

    def save(self, trainer: Trainer, trial_dir: Path, eval_loss: float | None,
             kind: CheckpointKind) -> CheckpointInfo:
        from tui_tuner.training import checkpoint as ckpt

        return ckpt.save(trainer, trial_dir, eval_loss, kind)  # type: ignore[arg-type]

    def is_oom(self, e: BaseException) -> bool:
        import torch

        return isinstance(e, torch.OutOfMemoryError)

    def set_threads(self, n: int) -> None:
        import torch

        # OpenMP's thread count is per calling thread: each trial thread sets its own.
        torch.set_num_threads(n)
