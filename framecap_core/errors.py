"""Errors a user can cause. Every message says what is wrong and how to fix it.

Nodes surface these messages unchanged, so write them for a person, not a stack trace.
"""


class FrameCapError(Exception):
    """Base class of every error FrameCap raises on bad input, files or settings."""


class TimelineError(FrameCapError, ValueError):
    """A timeline (scenes, spans, captions, frame count) is malformed."""


class ConfigError(FrameCapError, ValueError):
    """A setting is out of range or inconsistent (overlap >= window, steps < 1, ...)."""


class ModelLoadError(FrameCapError):
    """A model file or folder is missing, unreadable, or not what was expected."""


class PromptBuildError(FrameCapError):
    """Turning a story into frame-level captions failed (no key, no network, refusal, bad answer)."""


class DatasetError(FrameCapError):
    """Building or reading a training dataset failed."""


class NumericalError(FrameCapError):
    """A tensor went non-finite (NaN or inf) during sampling or training."""


class CancelledError(FrameCapError):
    """The user cancelled a running generation."""
