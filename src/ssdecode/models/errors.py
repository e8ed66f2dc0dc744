"""The one error a model spec can fail with, shared by the loader, GGUF conversion and demo pull.

A separate module so those three can raise it without importing each other.
"""


class ModelLoadError(Exception):
    """A model could not be found, fetched, verified or converted; the message says which and why."""
