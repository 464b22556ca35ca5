"""A fine-tune applied on top of the base transformer: a full (or partial) state dict or a LoRA, detected."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..convert import transformer_to_diffusers_keys
from ..errors import ModelLoadError
from .files import _refuse_pickle, read_safetensors
from .lora import _LORA_KEY, _lora_alpha_config, merge_lora
from .state_dicts import _check_state_against, _has_fp8, dequantize_scaled_fp8


def apply_checkpoint(transformer, checkpoint: str | os.PathLike, *, lora_scale: float = 1.0) -> str:
    """Apply a fine-tuned checkpoint to ``transformer`` in place; returns ``"full"`` or ``"lora"``.

    Accepted: a safetensors file with a full (or partial) transformer state dict in diffusers or original key names;
    a LoRA safetensors file (peft / diffusers ``transformer.`` / kohya keys; alpha from ``adapter_config.json``
    beside it, the ``lora_adapter_metadata`` header, ``.alpha`` tensors, or alpha = rank); a peft adapter folder
    (``adapter_config.json`` + ``adapter_model.safetensors``); a diffusers folder / ``transformer/`` folder.
    """
    path = Path(checkpoint)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            weights = path / "adapter_model.safetensors"
            if not weights.is_file():
                _refuse_pickle(path / "adapter_model.bin", "LoRA") if (path / "adapter_model.bin").exists() else None
                raise ModelLoadError(f"adapter_model.safetensors not found in LoRA folder {path}.")
            state, metadata = read_safetensors(weights, "LoRA")
            merge_lora(transformer, state, scale=lora_scale, adapter_config=_lora_alpha_config(path, metadata),
                       path=weights)
            return "lora"
        for candidate in (path / "transformer" / "diffusion_pytorch_model.safetensors",
                          path / "diffusion_pytorch_model.safetensors", path / "model.safetensors"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise ModelLoadError(
                f"No checkpoint found in folder {path}: expected adapter_config.json + adapter_model.safetensors (LoRA)"
                f" or diffusion_pytorch_model.safetensors (full fine-tune)."
            )
    state, metadata = read_safetensors(path, "checkpoint")
    if any(_LORA_KEY.match(k) for k in state):
        merge_lora(transformer, state, scale=lora_scale, adapter_config=_lora_alpha_config(path, metadata), path=path)
        return "lora"
    state = transformer_to_diffusers_keys(state)
    if _has_fp8(state):
        state = dequantize_scaled_fp8(state)
    expected = transformer.state_dict()
    _check_state_against(expected, state, what="checkpoint", path=path, allow_missing=True)
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor.to(expected[name].dtype))
    return "full"
