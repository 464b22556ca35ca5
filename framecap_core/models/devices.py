"""Device and dtype names as users write them (``"auto"``, ``"bf16"``, ``"cuda:1"``) -> torch objects."""

from __future__ import annotations

import torch

from ..choices import DTYPES
from ..errors import ModelLoadError

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``"auto"`` / None -> cuda when available, else cpu; anything else as torch understands it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from exc


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``"bf16" | "fp16" | "fp32" | torch.dtype``; ``"auto"`` / None -> bf16 on cuda, fp32 on cpu."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        names = [name for name in DTYPES if name != "auto"]
        raise ModelLoadError(f"Unknown dtype {dtype!r}; use one of {', '.join(names)} or auto.") from None
