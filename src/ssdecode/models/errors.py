"""The errors a model can fail with, shared by the loader, GGUF conversion, demo pull and runtimes.

A separate module so those can raise them without importing each other.
"""


class ModelLoadError(Exception):
    """A model could not be found, fetched, verified or converted; the message says which and why."""


class NonFiniteLogits(ModelLoadError):
    """A forward produced NaN or inf logits at real token positions.

    A ModelLoadError because a healthy model never does this: its weights are damaged (or were
    loaded wrong), so retrying cannot help, and every caller that reports a bad model (the CLI's
    one line, the loader's check-and-repair path) already handles that type.
    """
