"""The engine's user-facing error, in a leaf module: clients (ctl, the API client) catch it without importing
the engine (optuna) itself."""


class SweepError(ValueError):
    """A command that cannot be carried out (unknown trial, missing checkpoint, bad override); one line."""
