"""Fine-tuning library: data, model loading, LR schedules, the step loop and checkpoints (no engine, no UI)."""
