"""Exceptions raised by :mod:`avatar` (the Rust core's error kinds)."""

from __future__ import annotations


class AvatarError(Exception):
    """Base class of every error raised by the library.

    ``code`` is the core's stable error code (``"ERR_WEIGHTS"``, ...); ``field`` names the
    offending option for :class:`InvalidOptionError`, else is ``None``.
    """

    def __init__(self, message: str, code: str = "ERR_BACKEND", field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.field = field or None


class InvalidOptionError(AvatarError, ValueError):
    """An option is out of range or malformed (also a :class:`ValueError`)."""


class BackendNotCompiledError(AvatarError):
    """The requested device's backend is not compiled into this build."""


class WeightsError(AvatarError):
    """A weight or config file is missing, malformed or does not fit the model."""


class AvatarIOError(AvatarError, OSError):
    """Reading or writing a file failed, or downloading an ``hf://`` reference did."""


class CancelledError(AvatarError):
    """The work was cancelled."""
