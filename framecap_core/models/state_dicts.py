"""Loading a state dict into a model built without memory: shape and name checks that name the file and the
mismatch, fp8-scaled (ComfyUI) weights dequantized."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelLoadError


def keep_in_fp32(name: str, keep: list[str] | None) -> bool:
    """Whether parameter ``name`` stays float32 under a module class's ``_keep_in_fp32_modules`` list."""
    return bool(keep) and any(m in name.split(".") for m in keep)


def cast_like_loader(module: torch.nn.Module, dtype: torch.dtype, keep: list[str] | None = None) -> torch.nn.Module:
    """Cast floating parameters to ``dtype`` except those under ``keep`` (float32), in place, as loading does."""
    for name, param in module.named_parameters():
        target = torch.float32 if keep_in_fp32(name, keep) else dtype
        if param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)
    return module


def _load_into_meta_model(model_cls, config, state: dict[str, torch.Tensor], *, dtype: torch.dtype, what: str,
                          path: Path, keep_fp32: list[str] | None = None, from_config=None):
    """Build ``model_cls`` without allocating weights, check ``state`` against it, and load it (fp8 upcast)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = from_config(config) if from_config else model_cls(config)
    tied = _tied_parameters(model)
    expected = model.state_dict()
    _check_state_against(expected, state, what=what, path=path)
    ready, cast = {}, {}
    for name in expected:
        tensor = state[name]
        target = torch.float32 if keep_in_fp32(name, keep_fp32) else dtype
        if tensor.is_floating_point():
            # one cast per distinct tensor: a file tensor stored under two names (UMT5's shared embedding) stays one
            key = (id(tensor), target)
            cast[key] = cast[key] if key in cast else tensor.to(target)
            tensor = cast[key]
        ready[name] = tensor
    model.load_state_dict(ready, strict=True, assign=True)
    for name, first in tied.items():  # assign=True gives every name its own Parameter: tie them again
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, model.get_parameter(first))
    return model.eval()


def _tied_parameters(model: torch.nn.Module) -> dict[str, str]:
    """``{name: source name}`` of tied weights: the same Parameter under several names, or declared by a
    transformers model's ``_tied_weights_keys`` (UMT5's ``encoder.embed_tokens.weight`` -> ``shared.weight``; the
    empty-weights construction does not keep the shared object)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    declared = getattr(model, "_tied_weights_keys", None)
    if isinstance(declared, dict):
        names = set(dict(model.named_parameters(remove_duplicate=False)))
        tied.update({k: v for k, v in declared.items() if k in names and v in names})
    return tied


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
