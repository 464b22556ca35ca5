"""Errors a user can cause. Every message says what is wrong and how to fix it.

Nodes surface these messages unchanged, so write them for a person, not a stack trace.
"""


class FrameCapError(Exception):
    """Base class of every error FrameCap raises on bad input, files or settings.

    ``field``: the setting at fault as the library names it (``"shift"``, ``"width"``), when there is one; front ends
    use it to name their own knob instead (the command line says ``--shift``).
    """

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field


class TimelineError(FrameCapError, ValueError):
    """A timeline (scenes, spans, captions, frame count) is malformed."""


class ConfigError(FrameCapError, ValueError):
    """A setting is out of range or inconsistent (overlap >= window, steps < 1, ...)."""


class ModelLoadError(FrameCapError):
    """A model file or folder is missing, unreadable, or not what was expected."""


class PromptBuildError(FrameCapError):
    """Turning a story into frame-level captions failed (no key, no network, refusal, bad answer)."""


class OutputError(FrameCapError):
    """An output file cannot be written there (a folder, a read-only place, a full disk)."""


class DatasetError(FrameCapError):
    """Building or reading a training dataset failed."""


class NumericalError(FrameCapError):
    """A tensor went non-finite (NaN or inf) during sampling or training."""


class CancelledError(FrameCapError):
    """The user cancelled a running generation."""


class DistributedError(FrameCapError):
    """Another process of a multi-process run failed, died or stopped answering, or the processes disagree."""
