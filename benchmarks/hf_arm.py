"""The baseline arm: transformers' own `Trainer.hyperparameter_search(backend="optuna")` on the benchmark task."""

from __future__ import annotations

import tempfile
from typing import Any

import optuna
import torch

from benchmarks.markov_task import SEARCH
from benchmarks.search_scoring import Timeline, running_best
from tui_tuner.preset import Preset
from tui_tuner.training import data as D
from tui_tuner.training.finetune import DataBundle, eval_loss
from tui_tuner.training.model import adapter_config, resolve_model_path


def hp_space(trial: optuna.Trial) -> dict[str, Any]:
    """SEARCH as Optuna suggest calls, by the same names and ranges the engine's arms get."""
    out: dict[str, Any] = {}
    for name, d in SEARCH.items():
        if d["type"] == "int":
            out[name] = trial.suggest_int(name, d["low"], d["high"], step=d.get("step", 1))
        else:
            out[name] = trial.suggest_float(name, d["low"], d["high"], log=d.get("log", False))
    return out


class Collator:
    """tui-tuner's own batches (D.collate) as Trainer inputs: labels -100 where the loss weight is 0 (prompt,
    padding), so the model's own shifted loss is the engine's completion-token loss (prompt_loss_weight 0)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[D.Example]) -> dict[str, torch.Tensor]:
        b = D.collate(batch, self.pad_id, 0.0)
        labels = torch.where(b["weights"] > 0, b["input_ids"], torch.full_like(b["input_ids"], -100))
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": labels}


def make_trainer_class() -> type:
    """A Trainer whose evaluate() is the engine's eval (the same function and eval split, so both sides score the
    same), and which keeps every eval with the trial-steps spent before it across the search's trials."""
    from transformers import Trainer

    class ScoredTrainer(Trainer):
        def __init__(self, *args: Any, eval_examples: list[D.Example], pad_id: int, eval_batches: int | None,
                     **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.eval_examples, self.pad_id, self.eval_batches = eval_examples, pad_id, eval_batches
            self.steps_before = 0  # trial-steps of the trials already done
            self.evals: list[tuple[int, float]] = []

        def train(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().train(*args, **kwargs)
            finally:  # a pruned trial (raised from within) spent its steps too
                self.steps_before += self.state.global_step

        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            value = eval_loss(self.model, self.eval_examples, self.pad_id, 0.0, self.args.per_device_eval_batch_size,
                              self.eval_batches, self.args.device)
            self.evals.append((self.steps_before + self.state.global_step, value))
            metrics = {"eval_loss": value}
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return ScoredTrainer


def run_hf(preset: Preset, data: DataBundle, n_trials: int, seed: int) -> Timeline:
    """`n_trials` sequential TPE trials (seeded), no pruner, each a fresh model (model_init), max_steps and eval
    interval as the preset's; the search's evals in order and the trial-steps it spent."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainingArguments

    torch.set_num_threads(1)  # as each of the engine's trials runs
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial; the script prints its own summary
    p = preset.params
    assert p.max_steps is not None and p.batch_size is not None

    def model_init(trial: Any = None) -> torch.nn.Module:
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(preset.model.name))
        return get_peft_model(base, adapter_config(preset.model.method, p, p.max_steps))

    with tempfile.TemporaryDirectory(prefix="hf-arm-") as out:
        args = TrainingArguments(
            output_dir=out, max_steps=p.max_steps, per_device_train_batch_size=p.batch_size,
            per_device_eval_batch_size=p.batch_size, learning_rate=p.learning_rate, warmup_steps=p.warmup_steps,
            lr_scheduler_type=p.schedule, max_grad_norm=p.max_grad_norm or 0.0, eval_strategy="steps",
            eval_steps=p.eval_interval, logging_strategy="no", save_strategy="no", report_to="none",
            seed=seed, use_cpu=True, disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        )
        trainer = make_trainer_class()(
            model_init=model_init, args=args, train_dataset=data.train, eval_dataset=data.eval,
            data_collator=Collator(data.pad_id), eval_examples=data.eval, pad_id=data.pad_id,
            eval_batches=p.eval_batches,
        )
        trainer.remove_callback(PrinterCallback)  # it prints each trial's end-of-train log line
        # Optuna's create_study would add a MedianPruner by default: the baseline is the search without pruning.
        trainer.hyperparameter_search(hp_space=hp_space, backend="optuna", n_trials=n_trials, direction="minimize",
                                      sampler=optuna.samplers.TPESampler(seed=seed),
                                      pruner=optuna.pruners.NopPruner())
        return Timeline(running_best(trainer.evals), trainer.steps_before)
