"""FrameCap core library: frame-level captions, frame-level cross-attention, Diffusion Forcing and PMWD.

Importing this package is cheap: submodules (which pull in torch and diffusers) load on first use.
"""

from framecap_core.errors import (
    CancelledError,
    ConfigError,
    DatasetError,
    DistributedError,
    FrameCapError,
    ModelLoadError,
    NumericalError,
    PromptBuildError,
    TimelineError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "CancelledError",
    "ConfigError",
    "DatasetError",
    "DistributedError",
    "FrameCapError",
    "ModelLoadError",
    "NumericalError",
    "PromptBuildError",
    "TimelineError",
]
