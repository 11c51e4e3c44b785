"""UI-free sweep engine: Optuna study (ask/tell), scheduler, one thread per trial, control API, metrics."""
