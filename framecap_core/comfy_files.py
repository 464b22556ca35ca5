"""A small Wan model (the bundled toy model) as ComfyUI single files, for its native ``UNETLoader`` and ``VAELoader``.

ComfyUI reads a Wan2.1 transformer's width, depth and FFN size from the weights but assumes ``num_heads = dim //
128``, ``freq_dim`` 256 and ``text_dim`` 4096 (``comfy/model_detection.py``); the toy transformer is built with those,
so its single file is just its weights under the original Wan names (:func:`comfy_transformer_state`).

ComfyUI's Wan2.1 VAE loader builds the full-size architecture whatever the file holds (``comfy/sd.py``: dim 96,
dim_mult [1, 2, 4, 4], 2 residual blocks per level). A VAE with the same layout at a smaller width (the toy VAE:
dim 8, 1 residual block) embeds in it exactly (:func:`embed_wan_vae_state`): every tensor is zero-padded (padded
channels stay zero through the convolutions, SiLU and the channel-wise RMS norms, whose gains are rescaled by
``sqrt(c / C)`` for their ``sqrt(channels)`` factor; the attention's query is scaled by ``sqrt(C / c)`` for its
``1 / sqrt(channels)``), and the extra residual blocks are identities (last convolution zero). The file therefore
has the full size (254 MB in bf16), which is why it is written on demand (:func:`write_comfy_files`) rather than
shipped; it decodes exactly what the small VAE decodes.

    python -m framecap_core.comfy_files toy OUT_DIR     # OUT_DIR/toy_wan_transformer.safetensors, toy_wan_vae...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from .convert import transformer_to_original_keys, vae_to_original_keys
from .errors import ConfigError

__all__ = ["comfy_transformer_state", "comfy_vae_state", "embed_wan_vae_state", "write_comfy_files"]

TRANSFORMER_FILE = "toy_wan_transformer.safetensors"
VAE_FILE = "toy_wan_vae.safetensors"


def _pad_blocks(src: torch.Tensor, shape, parts: int = 1, first_scale: float = 1.0) -> torch.Tensor:
    """``src`` zero-padded to ``shape``; its first axis is ``parts`` equal blocks, each padded on its own (the first
    block multiplied by ``first_scale``)."""
    out = torch.zeros(shape, dtype=src.dtype)
    n_old, n_new = src.shape[0] // parts, shape[0] // parts
    for part in range(parts):
        block = src[part * n_old:(part + 1) * n_old] * (first_scale if part == 0 else 1.0)
        out[(slice(part * n_new, part * n_new + n_old),) + tuple(slice(0, n) for n in block.shape[1:])] = block
    return out


def _encoder_block_names(config) -> dict[tuple[str, int, int], int]:
    """diffusers' flat ``encoder.down_blocks`` list: ``(kind, level, index in level) -> position``."""
    out, pos = {}, 0
    levels = len(config["dim_mult"])
    for level in range(levels):
        for j in range(config["num_res_blocks"]):
            out[("res", level, j)] = pos
            pos += 1
        if level != levels - 1:
            out[("resample", level, 0)] = pos
            pos += 1
    return out


def _key_map(config, target_config) -> dict[str, str]:
    """Prefix renames from a ``config`` VAE's encoder blocks to ``target_config``'s (the decoder's names are nested
    per level in diffusers, so they already line up)."""
    small, big = _encoder_block_names(config), _encoder_block_names(target_config)
    return {f"encoder.down_blocks.{pos}.": f"encoder.down_blocks.{big[name]}." for name, pos in small.items()}


def embed_wan_vae_state(state: dict[str, torch.Tensor], config, target_config):
    """Embed a diffusers ``AutoencoderKLWan`` state dict (``config``) into a wider / deeper one (``target_config``:
    same ``z_dim``; each level at least as wide; at least as many residual blocks) that computes the same function.

    Returns ``(target_state, leftovers)``: the target's full state dict (diffusers names) and the source tensors that
    have no place in it (a shortcut convolution where the target's block has an identity shortcut)."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        target = AutoencoderKLWan.from_config({k: v for k, v in dict(target_config).items() if not k.startswith("_")})
    shapes = {k: v.shape for k, v in target.state_dict().items()}
    renames = _key_map(config, target_config)
    out = {k: torch.zeros(s) for k, s in shapes.items()}
    leftovers = {}
    for key, src in state.items():
        name = next((new + key[len(old):] for old, new in renames.items() if key.startswith(old)), key)
        if name not in shapes:
            leftovers[key] = src
            continue
        shape = shapes[name]
        parts = 3 if "to_qkv" in name else 2 if name.startswith("decoder.") and "time_conv" in name else 1
        # attention divides its logits by sqrt(channels): scale the query to keep them
        first_scale = (shape[0] / src.shape[0]) ** 0.5 if "to_qkv" in name else 1.0
        value = _pad_blocks(src.float(), shape, parts, first_scale)
        if name.endswith(".gamma"):  # RMS norm: x / ||x|| * sqrt(channels) * gamma, ||x|| unchanged by zeros
            value *= (src.shape[0] / shape[0]) ** 0.5
        out[name] = value
    # target shortcut convolutions where the source block had an identity shortcut: identity into the first channels
    for name, shape in shapes.items():
        if name.endswith("conv_shortcut.weight"):
            source = next((old + name[len(new):] for old, new in renames.items() if name.startswith(new)), name)
            if source not in state:
                idx = torch.arange(min(shape[0], shape[1]))
                out[name][idx, idx] = 1.0
    return out, leftovers


def _wan21_vae_config() -> dict:
    from diffusers import AutoencoderKLWan

    from .models import SHIPPED_CONFIG_DIR

    return dict(AutoencoderKLWan.load_config(str(SHIPPED_CONFIG_DIR / "vae")))


def comfy_vae_state(vae, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """``vae`` (a diffusers ``AutoencoderKLWan`` in Wan2.1's layout, any width) as a Wan2.1-size state dict under the
    original names ComfyUI's ``VAELoader`` reads."""
    target = _wan21_vae_config()
    if vae.config.z_dim != target["z_dim"]:
        raise ConfigError(f"ComfyUI's Wan2.1 VAE has {target['z_dim']} latent channels; this VAE has {vae.config.z_dim}")
    state, leftovers = embed_wan_vae_state(vae.state_dict(), vae.config, target)
    if leftovers:
        raise ConfigError(f"This VAE's layout does not embed in Wan2.1's (no place for {sorted(leftovers)[:3]}); it "
                         f"needs dim_mult {target['dim_mult']}")
    return {k: v.to(dtype).contiguous() for k, v in vae_to_original_keys(state).items()}


def comfy_transformer_state(transformer, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A diffusers ``WanTransformer3DModel`` under the original Wan names ComfyUI's ``UNETLoader`` reads."""
    if transformer.config.attention_head_dim != 128 or transformer.config.text_dim != 4096 or \
            transformer.config.freq_dim != 256:
        raise ConfigError("ComfyUI assumes Wan2.1 transformers have head_dim 128, text_dim 4096 and freq_dim 256; this "
                         f"one has {transformer.config.attention_head_dim}, {transformer.config.text_dim} and "
                         f"{transformer.config.freq_dim}; build the model with those to load it in ComfyUI.")
    state = transformer_to_original_keys(transformer.state_dict())
    return {k: v.to(dtype).contiguous() for k, v in state.items()}


def write_comfy_files(model: str | os.PathLike = "toy", out_dir: str | os.PathLike = ".", *,
                      dtype: torch.dtype = torch.bfloat16) -> tuple[Path, Path]:
    """Write ``model``'s (a toy-sized diffusers Wan folder, or ``"toy"``) transformer and VAE as ComfyUI single
    files into ``out_dir`` (``models/diffusion_models`` and ``models/vae`` material); returns their paths. Each is
    written to a temporary name and renamed."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from safetensors.torch import save_file

    from .models import TOY_MODEL_DIR

    folder = TOY_MODEL_DIR if str(model) == "toy" else Path(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, load, convert in (
        (TRANSFORMER_FILE, lambda: WanTransformer3DModel.from_pretrained(str(folder / "transformer")),
         comfy_transformer_state),
        (VAE_FILE, lambda: AutoencoderKLWan.from_pretrained(str(folder / "vae")), comfy_vae_state),
    ):
        state = convert(load(), dtype)
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m framecap_core.comfy_files MODEL_FOLDER|toy OUT_DIR")
    for written in write_comfy_files(sys.argv[1], sys.argv[2]):
        print(written)
