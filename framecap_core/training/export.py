"""The fine-tuned transformer as one safetensors file: diffusers or original Wan / ComfyUI key names, or a LoRA
adapter, with base model, training config and version in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ConfigError
from ..grid import TEXT_LEN
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .model import load_base_transformer, prepare_transformer


def _merged_state_dict(transformer) -> dict[str, torch.Tensor]:
    """Full diffusers state dict; LoRA layers merged into their base weights (the model is left unmerged)."""
    lora_layers = []
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover
        LoraLayer = ()  # noqa: N806
    for module in transformer.modules():
        if LoraLayer and isinstance(module, LoraLayer):
            lora_layers.append(module)
    with torch.no_grad():
        for module in lora_layers:
            module.merge()
        try:
            state = {}
            for key, value in transformer.state_dict().items():
                if "lora_" in key:
                    continue
                state[key.replace(".base_layer.", ".")] = value.detach().cpu().contiguous().clone()
        finally:
            for module in lora_layers:
                module.unmerge()
    return state


_NOT_A_LORA = ("export format {format!r} writes only LoRA adapter weights, but {what}: export it whole with "
               "--export-format diffusers or original, or fine-tune with lora_rank > 0 to get a LoRA.")


def export_transformer(
    transformer,
    path: str | os.PathLike,
    *,
    format: str = "diffusers",  # noqa: A002 - the user-facing name
    config: TrainConfig | None = None,
    base_model: str = "",
    step: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the fine-tuned transformer as one safetensors file (atomically).

    Formats:
        - ``"diffusers"``: full state dict in diffusers key names (LoRA merged);
        - ``"original"``: full state dict in original Wan key names with the ``model.diffusion_model.`` prefix
          (drop it into ComfyUI's ``models/diffusion_models``);
        - ``"lora"``: only the LoRA weights, keys ``transformer.<module>.lora_A/B.weight`` (diffusers' LoRA format),
          the adapter config under the ``lora_adapter_metadata`` metadata key;
        - ``"lora_original"``: the same LoRA with original Wan module names behind ``diffusion_model.``
          (``diffusion_model.blocks.0.self_attn.q.lora_A.weight``) and alpha as ``<module>.alpha`` tensors, the layout
          ComfyUI's LoRA loader reads for Wan.

    Metadata (strings): ``framecap_format``, ``framecap_version``, ``base_model``, ``training_config`` (JSON),
    ``step``, ``text_len`` (tokens per caption it was trained with), ``frame_level_attention`` ("true": install it
    after loading).
    """
    from safetensors.torch import save_file

    from .. import __version__
    from ..fileio import atomic_path

    if format in ("lora", "lora_original"):
        from peft.utils import get_peft_model_state_dict

        if not getattr(transformer, "peft_config", None):
            raise ConfigError(_NOT_A_LORA.format(format=format, what="this model was not trained with LoRA"))
        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
        if not state:
            raise ConfigError(f"export format {format!r} needs a LoRA-trained model (lora_rank > 0).")
        if format == "lora":
            state = {f"transformer.{k}": v for k, v in state.items()}
        else:
            from ..convert import transformer_to_original_keys

            state = transformer_to_original_keys(state, prefix="diffusion_model.")
            # ComfyUI's LoRA loaders read alpha only from ``<module>.alpha`` tensors (never the header); without them
            # they apply B @ A at alpha = rank, a different strength whenever lora_alpha != r.
            alpha = torch.tensor(float(next(iter(transformer.peft_config.values())).lora_alpha))
            state.update({key[: -len(".lora_A.weight")] + ".alpha": alpha.clone() for key in list(state)
                          if key.endswith(".lora_A.weight")})
    elif format in ("diffusers", "original"):
        state = _merged_state_dict(transformer)
        if format == "original":
            from ..convert import transformer_to_original_keys

            state = transformer_to_original_keys(state, prefix="model.diffusion_model.")
    else:
        raise ConfigError(f"Unknown export format {format!r}; use diffusers, original, lora or lora_original.")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    from ..attention import frame_level_text_len

    text_len = frame_level_text_len(transformer)
    metadata = {
        "framecap_format": format,
        "text_len": "" if text_len is None else str(text_len),
        "framecap_version": __version__,
        "base_model": base_model,
        "training_config": json.dumps(config.to_dict() if config else {}),
        "frame_level_attention": "true",
        "step": "" if step is None else str(step),
    }
    if format.startswith("lora"):
        cfg = config or TrainConfig(lora_rank=8)
        metadata["lora_adapter_metadata"] = json.dumps({
            "r": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank,
            "target_modules": list(cfg.lora_targets),
        })
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    format: str | None = None,  # noqa: A002
    transformer=None,
) -> Path:
    """Export a training checkpoint folder (``step-*``) like the end of a run would: loads the base model named in
    its config (or takes ``transformer``), re-applies LoRA and the saved weights, writes ``path``.

    ``format`` defaults to the run's ``export_format`` (``"diffusers"`` if that was ``"none"``).
    """
    checkpoint = Path(checkpoint)
    state_path = checkpoint / "state.json"
    if not state_path.is_file():
        raise ConfigError(f"{str(checkpoint)!r} is not a FrameCap training checkpoint (no state.json).")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(state["config"])
    format = format or (config.export_format if config.export_format != "none" else "diffusers")  # noqa: A001
    if format.startswith("lora") and not config.lora_rank:
        # refuse before loading the base model: a full fine-tune has no adapter to export
        raise ConfigError(_NOT_A_LORA.format(format=format, what=f"{str(checkpoint)!r} is a full fine-tune "
                                                                 f"(lora_rank 0)"))
    if transformer is None:
        transformer = load_base_transformer(config)
    text_len = state.get("extra", {}).get("text_len") or config.text_len or TEXT_LEN
    transformer = prepare_transformer(transformer, config, text_len)
    load_checkpoint(checkpoint, transformer)
    transformer.eval()
    return export_transformer(transformer, path, format=format, config=config, base_model=config.base_model,
                              step=int(state["step"]))
