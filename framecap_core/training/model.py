"""The transformer being trained: the base model in float32, frame-level attention, LoRA or full fine-tuning,
gradient checkpointing."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .config import TrainConfig


def load_base_transformer(config: TrainConfig):
    """The base transformer named by ``config.base_model`` in float32 (the optimizer's master weights; mixed
    precision runs the forward in bf16/fp16 through autocast): a diffusers folder, a ``transformer/`` folder, a
    single safetensors file (original / ComfyUI or diffusers key names, architecture from ``model_config`` or the
    shipped Wan2.1-T2V-1.3B config) or ``"toy"``."""
    from ..models import load_transformer

    if not config.base_model:
        raise ConfigError("base_model is not set; point it at a Wan diffusers folder or a .safetensors file.")
    return load_transformer(config.base_model, config=config.model_config, dtype=torch.float32)


def prepare_transformer(transformer, config: TrainConfig, text_len: int | None = None):
    """Install frame-level attention (``text_len`` tokens per caption, default ``config.text_len``), add LoRA (when
    ``lora_rank > 0``), set trainable parameters and gradient checkpointing. Returns the transformer (in place)."""
    from ..attention import install_frame_level_attention

    text_len = text_len or config.text_len
    if text_len is None:
        raise ConfigError("text_len is unknown; set it in the config or train from a latent cache (which records it).")
    install_frame_level_attention(transformer, text_len=text_len)
    if config.lora_rank > 0:
        from peft import LoraConfig

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha if config.lora_alpha is not None else config.lora_rank,
            target_modules=list(config.lora_targets),
            init_lora_weights=True,
        )
        transformer.add_adapter(lora)
        for name, param in transformer.named_parameters():
            param.requires_grad_("lora_" in name)
    else:
        transformer.requires_grad_(True)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return transformer


def trainable_parameters(transformer) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in transformer.named_parameters() if p.requires_grad}
