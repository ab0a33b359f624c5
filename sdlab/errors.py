"""sdlab's exceptions: one base class, so that a caller can catch everything sdlab refuses on purpose.

Every exception that leaves sdlab's public API is an :class:`SdlabError`, and its message names what was
wrong (the argument, the setting, the file) and what to do. The classes still subclass the built-in
exception a caller would have caught before (``ValueError`` for a bad value, ``TypeError`` for a value of
the wrong kind, ``RuntimeError`` for a run or a model in the wrong state), so ``except ValueError`` keeps
working. Imports nothing heavy: the package's lowest layer.
"""
from __future__ import annotations


class SdlabError(Exception):
    """Base of every error sdlab raises. ``argument``: the argument or setting at fault, where there is one."""

    argument: str | None = None

    def __init__(self, *args, argument: str | None = None):
        super().__init__(*args)
        if argument is not None:
            self.argument = argument


class InvalidArgument(SdlabError, ValueError):
    """A value sdlab cannot use: out of range, unknown, inconsistent with another. The message says which
    values work."""


class WrongType(SdlabError, TypeError):
    """A value of a kind sdlab cannot use (a string where a number goes, an unknown keyword argument)."""


class GenerationError(SdlabError, RuntimeError):
    """A run failed; the message says what to do. The pipeline stays usable."""


class BusyError(SdlabError, RuntimeError):
    """A run, or a change to the model, is already going on this model."""


class RunTimeout(SdlabError, TimeoutError):
    """A run did not end within the time asked for; it goes on (``job.stop()`` ends it)."""


class NotSupported(SdlabError, NotImplementedError):
    """Something this model or this sampler cannot do; the message says what can."""


class MissingFile(SdlabError, FileNotFoundError):
    """A file or folder the user named is not there."""


class MissingDependency(SdlabError, ImportError):
    """An optional package this feature needs is not installed; the message gives the pip command."""
