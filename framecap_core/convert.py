"""Wan state-dict key names, both directions, for the transformer and the VAE.

original Wan / ComfyUI -> diffusers: :func:`transformer_to_diffusers_keys`, :func:`vae_to_diffusers_keys` (known
prefixes stripped, then diffusers' ``convert_wan_transformer_to_diffusers`` / ``convert_wan_vae_to_diffusers``).
diffusers -> original: :func:`transformer_to_original_keys`, :func:`vae_to_original_keys`, written here as the exact
inverses of those converters (``diffusers/loaders/single_file_utils.py``); tests check the round trip.
"""

from __future__ import annotations

import re

import torch

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
VAE_PREFIXES = ("vae.", "first_stage_model.")


def shared_prefix(keys, prefixes) -> str:
    """The first of ``prefixes`` that every tensor name (but a few markers) starts with, or ""."""
    keys = [k for k in keys if k not in ("spiece_model", "scaled_fp8")]
    for prefix in prefixes:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


# ------------------------------------------------------------------------------------- original -> diffusers


def transformer_to_diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ComfyUI prefixes and convert original Wan names to diffusers' (diffusers names pass through)."""
    prefix = shared_prefix(state.keys(), TRANSFORMER_PREFIXES)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    original = any(k.startswith(("head.", "time_embedding.", "text_embedding.")) or ".self_attn." in k for k in state)
    if original:
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        state = convert_wan_transformer_to_diffusers(dict(state))
    return state


def vae_to_diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip checkpoint prefixes and convert original Wan VAE names to diffusers' (diffusers names pass through)."""
    prefix = shared_prefix(state.keys(), VAE_PREFIXES)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    if any(k.startswith(("decoder.middle.", "encoder.downsamples.", "decoder.upsamples.")) for k in state):
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        state = convert_wan_vae_to_diffusers(state)
    return state


# ------------------------------------------------------------------------------------- key-name conversions (inverse)

# diffusers -> original Wan names for the transformer. Applied in order as substring replacements; the inverse of
# diffusers' TRANSFORMER_KEYS_RENAME_DICT for the text-to-video model.
_TRANSFORMER_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
)


def transformer_to_original_keys(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """diffusers ``WanTransformer3DModel`` state dict -> original Wan / ComfyUI key names (optionally prefixed)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for src, dst in _TRANSFORMER_TO_ORIGINAL:
            new = new.replace(src, dst)
        # diffusers swaps norm2 and norm3 (cross-attention norm vs. FFN norm) relative to the original.
        new = re.sub(r"\.norm([23])\.", lambda m: ".norm3." if m.group(1) == "2" else ".norm2.", new)
        if new == "scale_shift_table":
            new = "head.modulation"
        elif new.endswith(".scale_shift_table"):
            new = new[: -len("scale_shift_table")] + "modulation"
        elif new.startswith("proj_out."):
            new = "head.head." + new[len("proj_out.") :]
        out[prefix + new] = value
    return out


_VAE_RESNET_TO_ORIGINAL = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}


def vae_to_original_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKLWan`` state dict -> original Wan VAE key names (``wan_2.1_vae.safetensors``).

    Decoder up-blocks are flattened as in the original ``decoder.upsamples`` sequential: each level holds
    ``num_res_blocks + 1`` residual blocks followed by one resample, so level ``b`` resnet ``r`` is entry
    ``4 b + r`` and its upsampler entry ``4 b + 3`` (Wan's 4 levels, 2 res blocks, as diffusers' converter assumes).
    """
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        new = None
        side = parts[0]
        if parts[1] == "mid_block":
            if parts[2] == "resnets":
                idx = {"0": "0", "1": "2"}[parts[3]]
                new = f"{side}.middle.{idx}." + _VAE_RESNET_TO_ORIGINAL[".".join(parts[4:])]
            else:  # attentions.0.*
                new = f"{side}.middle.1." + ".".join(parts[4:])
        elif parts[1] == "norm_out":
            new = f"{side}.head.0." + ".".join(parts[2:])
        elif parts[1] == "conv_out":
            new = f"{side}.head.2." + ".".join(parts[2:])
        elif parts[1] == "conv_in":
            new = f"{side}.conv1." + ".".join(parts[2:])
        elif side == "quant_conv":
            new = "conv1." + ".".join(parts[1:])
        elif side == "post_quant_conv":
            new = "conv2." + ".".join(parts[1:])
        elif parts[1] == "down_blocks":
            rest = ".".join(parts[3:])
            new = f"encoder.downsamples.{parts[2]}." + _VAE_RESNET_TO_ORIGINAL.get(rest, rest)
        elif parts[1] == "up_blocks":
            block = int(parts[2])
            if parts[3] == "resnets":
                entry = 4 * block + int(parts[4])
                new = f"decoder.upsamples.{entry}." + _VAE_RESNET_TO_ORIGINAL[".".join(parts[5:])]
            elif parts[3] == "upsamplers":
                new = f"decoder.upsamples.{4 * block + 3}." + ".".join(parts[5:])
        if new is None:
            new = key
        out[new] = value
    return out
