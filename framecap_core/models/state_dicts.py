"""Loading a state dict into a model built without memory: shape and name checks that name the file and the
mismatch, fp8-scaled (ComfyUI) weights dequantized."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelLoadError


def _keep_fp32(name: str, keep: list[str] | None) -> bool:
    return bool(keep) and any(m in name.split(".") for m in keep)


def _load_into_meta_model(model_cls, config, state: dict[str, torch.Tensor], *, dtype: torch.dtype, what: str,
                          path: Path, keep_fp32: list[str] | None = None, from_config=None):
    """Build ``model_cls`` without allocating weights, check ``state`` against it, and load it (fp8 upcast)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = from_config(config) if from_config else model_cls(config)
    expected = model.state_dict()
    _check_state_against(expected, state, what=what, path=path)
    ready = {}
    for name in expected:
        tensor = state[name]
        target = torch.float32 if _keep_fp32(name, keep_fp32) else dtype
        ready[name] = tensor.to(target) if tensor.is_floating_point() else tensor
    model.load_state_dict(ready, strict=True, assign=True)
    return model.eval()


def _check_state_against(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, what: str,
                         path: Path, allow_missing: bool = False) -> None:
    """Raise a ModelLoadError naming the first tensor whose shape differs, then missing / unexpected names."""
    size = _size_summary(state, expected)
    for name, tensor in state.items():
        ref = expected.get(name)
        if ref is not None and tuple(tensor.shape) != tuple(ref.shape):
            raise ModelLoadError(
                f"{what} file {path}: tensor {name!r} has shape {tuple(tensor.shape)} but the configured model expects "
                f"{tuple(ref.shape)}{size}. The file belongs to a different model size; pass the matching config "
                f"folder (config_dir=...) or a Wan2.1-T2V-1.3B file."
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if (missing and not allow_missing) or unexpected:
        detail = []
        if missing and not allow_missing:
            detail.append(f"{len(missing)} expected tensor(s) missing, e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
        raise ModelLoadError(
            f"{what} file {path} does not match the Wan2.1 {what} architecture{size}: {'; '.join(detail)}. Is it the "
            f"right kind of file (a {what}) for a Wan2.1 text-to-video model? For another size pass a matching "
            f"config_dir."
        )


def _num_blocks(keys) -> int:
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"(?:encoder\.block|blocks)\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def _size_summary(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """`` (file: 2 blocks, config: 30 blocks)`` when the layer counts differ, else ""."""
    have, want = _num_blocks(state), _num_blocks(expected)
    return f" (file: {have} blocks, config: {want} blocks)" if have and want and have != want else ""


def dequantize_scaled_fp8(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict:
    """ComfyUI ``*_fp8_e4m3fn_scaled`` layout -> plain weights: ``W = float(W_fp8) * scale_weight``.

    Drops the ``scaled_fp8`` marker and ``scale_input`` tensors; float8 tensors without a scale are upcast as is.
    """
    out = {}
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale_key = key[: -len("weight")] + "scale_weight" if key.endswith("weight") else None
            value = value.to(torch.float32)
            if scale_key and scale_key in state:
                value = value * state[scale_key].to(torch.float32)
            value = value.to(dtype)
        out[key] = value
    return out


def _has_fp8(state: dict[str, torch.Tensor]) -> bool:
    return any(v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for v in state.values())
