"""The training side's one error type, apart so that every training module can raise it without import cycles."""


class ModelError(ValueError):
    """A model or tokenizer that cannot be loaded; one line naming it."""
