"""Small Wan2.1 files that ComfyUI's own loaders accept, for the native-backend tests.

ComfyUI detects a Wan2.1 transformer from ``head.modulation`` and fixes ``num_heads = dim // 128`` (head_dim 128),
``freq_dim = 256`` and ``text_dim = 4096`` regardless of the weights; its Wan2.1 VAE is always built with
``dim = 96``. So the transformer here has 2 heads of 128 (dim 256), 2 layers, a 32-wide FFN and a 4096-wide text
projection, and the VAE keeps the real width (random weights: decodes noise, loads and runs like the real one).
Files are written under the names ComfyUI's Wan templates use, so workflows find them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from framecap_core.testing import (
    SINGLE_FILE_NAMES,
    make_tiny_transformer,
    make_tiny_vae,
    write_original_transformer,
    write_original_vae,
)

COMFY_TEXT_DIM = 4096  # ComfyUI's Wan config, not read from the weights
COMFY_HEAD_DIM = 128  # ComfyUI: num_heads = dim // 128
COMFY_VAE_DIM = 96  # ComfyUI's Wan2.1 VAE config


def comfy_loadable_transformer(seed: int = 0, layers: int = 2, heads: int = 2):
    """A random diffusers ``WanTransformer3DModel`` with the shapes ComfyUI's Wan detection assumes."""
    return make_tiny_transformer(seed, num_attention_heads=heads, attention_head_dim=COMFY_HEAD_DIM,
                                 text_dim=COMFY_TEXT_DIM, num_layers=layers, rope_max_seq_len=64)


def comfy_loadable_vae(seed: int = 100):
    """A random diffusers ``AutoencoderKLWan`` at ComfyUI's Wan2.1 VAE width (base_dim 96)."""
    return make_tiny_vae(seed, base_dim=COMFY_VAE_DIM)


def write_comfy_wan_files(folder: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                          vae: bool = True) -> dict[str, Path]:
    """Write ``diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`` and ``vae/wan_2.1_vae.safetensors`` under
    ``folder`` (ComfyUI's ``models`` layout). ``dtype`` float32 keeps the weights bit-identical for comparisons
    (the name follows the templates, the content does not have to be fp16)."""
    folder = Path(folder)
    written = {"transformer": write_original_transformer(
        comfy_loadable_transformer(seed), folder / "diffusion_models" / SINGLE_FILE_NAMES["transformer_fp16"],
        dtype=dtype)}
    if vae:
        written["vae"] = write_original_vae(comfy_loadable_vae(seed + 100),
                                            folder / "vae" / SINGLE_FILE_NAMES["vae"], dtype=dtype)
    return written


def write_kohya_wan_lora(transformer_file: str | Path, path: str | Path, *, rank: int = 4, alpha: float = 2.0,
                         seed: int = 0, std: float = 0.1) -> Path:
    """A random LoRA on every linear layer of the blocks of ``transformer_file`` (an original-key Wan file), in the
    kohya layout most Wan LoRAs are shared in (musubi-tuner): ``lora_unet_blocks_0_self_attn_q.lora_down.weight``
    ``[rank, in]``, ``.lora_up.weight`` ``[out, rank]``, ``.alpha``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    with safe_open(str(transformer_file), "pt") as f:
        for key in f.keys():
            module = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
            shape = f.get_slice(key).get_shape()
            if not (module.startswith("blocks.") and key.endswith(".weight") and len(shape) == 2):
                continue
            name = "lora_unet_" + module.replace(".", "_")
            tensors[f"{name}.lora_down.weight"] = torch.randn(rank, shape[1], generator=generator) * std
            tensors[f"{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=generator) * std
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_trained_wan_lora(path: str | Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                           std: float = 0.1) -> Path:
    """A LoRA as FrameCap's fine-tuning writes it for ComfyUI (``export_format="lora_original"``) on
    :func:`comfy_loadable_transformer`: peft adapters on the default targets, ``lora_B`` made random (as after
    training; peft starts it at zero), ``lora_alpha != rank`` so that alpha has to be read right."""
    from framecap_core.training.config import TrainConfig
    from framecap_core.training.export import export_transformer
    from framecap_core.training.model import prepare_transformer

    config = TrainConfig(lora_rank=rank, lora_alpha=alpha, text_len=512)
    transformer = prepare_transformer(comfy_loadable_transformer(), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_transformer(transformer, path, format="lora_original", config=config)
