"""The loaded model (:class:`WanModel`) and :func:`load_wan`, which resolves the files, loads each component,
applies fine-tunes and installs frame-level cross-attention."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelLoadError
from ..grid import PATCH_SIZE, TEMPORAL_STRIDE, VAE_SCALE
from ..model_settings import ModelSettings
from .checkpoint import apply_checkpoint
from .components import load_text_encoder, load_transformer, load_vae
from .devices import resolve_device, resolve_dtype
from .files import DEFAULT_TEXT_LEN, SHIPPED_CONFIG_DIR, _digest, _file_identity
from .sources import ModelSource, _config_subdir, resolve_model_source


@dataclass
class WanModel:
    """A loaded Wan2.1 text-to-video model and what the pipeline needs to know about it.

    ``latents_mean`` / ``latents_std`` ``[16]``: the VAE's per-channel statistics (normalized latent = (z - mean) /
    std). ``id`` changes whenever any weight file, the checkpoint, the LoRA scale or the dtype changes;
    ``text_encoder_id`` only with the text encoder (what caption caches key on).
    """

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    text_len: int
    latents_mean: torch.Tensor
    latents_std: torch.Tensor
    vae_scale: int = VAE_SCALE
    vae_scale_temporal: int = TEMPORAL_STRIDE
    patch_size: tuple[int, int, int] = PATCH_SIZE
    name: str = "wan"
    id: str = ""
    text_encoder_id: str = ""
    source: str = ""
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    frame_level: bool = False
    scheduler_config: dict | None = None
    placement: Any = None  # framecap_core.placement.Placement: where each part rests and runs

    @property
    def latent_channels(self) -> int:
        return int(self.latents_mean.numel())

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_dim)

    @property
    def caption_dim(self) -> int:
        """Width of the caption features this model reads: its text encoder's (narrower than ``text_dim`` for the toy
        model, whose 32 features are read as zero-padded to 4096, :mod:`framecap_core.narrow_text`), else
        ``text_dim``."""
        width = getattr(getattr(self.text_encoder, "config", None), "d_model", None)
        return int(width) if width is not None else self.text_dim


def _component_identity(folder: Path | None, sub: str, file: Path | None) -> str:
    if file is not None:
        return _file_identity(file)
    if folder is None:
        return "none"
    return ";".join(_file_identity(p) for p in sorted((folder / sub).glob("*")) if p.is_file())


def load_wan(
    source: str | os.PathLike | None = None,
    *,
    transformer_file: str | os.PathLike | None = None,
    vae_file: str | os.PathLike | None = None,
    text_encoder_file: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    lora: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
    dtype: str | torch.dtype = "auto",
    vae_dtype: str | torch.dtype = torch.float32,
    text_encoder_dtype: str | torch.dtype | None = None,
    device: str | torch.device = "auto",
    frame_level: bool = True,
    text_len: int | None = None,
    load_vae_model: bool = True,
    load_text_encoder_model: bool = True,
    offload: str = "model",
    text_encoder_device: str = "auto",
    weight_dtype: str = "default",
) -> WanModel:
    """Load a Wan2.1 text-to-video model (see the module docstring for the accepted sources).

    ``checkpoint``: a fine-tune applied on top (full state dict or LoRA, detected); ``lora``: a LoRA applied after
    it, both merged with ``lora_scale``. ``text_len``: tokens per caption (default: the folder's ``framecap.json``,
    else ``grid.TEXT_LEN`` = 512). ``frame_level``: install frame-level cross-attention on the transformer.

    Placement (:mod:`framecap_core.placement`; nothing changes on the CPU): ``offload`` "model" (default: each part
    on ``device`` only while it runs), "none" (all parts stay on it) or "sequential" (also the transformer's blocks
    one at a time); ``text_encoder_device`` "device", "cpu" or "auto" (the device when UMT5 fits its free memory);
    ``weight_dtype`` "default" or "fp8_e4m3fn" (the transformer's block linears stored in fp8, computed in ``dtype``).
    """
    from ..placement import OFFLOAD_MODES, TEXT_ENCODER_DEVICES, WEIGHT_DTYPES, Placement, check_choice

    check_choice("offload", offload, OFFLOAD_MODES)
    check_choice("text_encoder_device", text_encoder_device, TEXT_ENCODER_DEVICES)
    check_choice("weight_dtype", weight_dtype, WEIGHT_DTYPES)
    src = resolve_model_source(
        source, transformer_file=transformer_file, vae_file=vae_file, text_encoder_file=text_encoder_file,
        tokenizer_path=tokenizer_path, config_dir=config_dir,
    )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    te_dt = resolve_dtype(text_encoder_dtype, dev) if text_encoder_dtype is not None else dt
    vae_dt = resolve_dtype(vae_dtype, dev)
    # Where UMT5 runs is settled first (from its file's size), so that no part is loaded onto the device for nothing.
    placement = Placement(dev, offload, _text_encoder_device(text_encoder_device, dev, src, te_dt))

    transformer = load_transformer(src.transformer_file or src.folder, config=src.config_dir, dtype=dt,
                                   device=placement.home("transformer"))
    applied = []
    for extra in (checkpoint, lora):
        if extra is not None:
            kind = apply_checkpoint(transformer, extra, lora_scale=lora_scale)
            applied.append(f"{kind} {extra}")
    if weight_dtype != "default":
        from ..placement import store_linear_weights

        store_linear_weights(transformer, weight_dtype)  # after fine-tunes: they merge into full-precision weights

    vae = None
    vae_source = src.vae_file or src.folder
    if load_vae_model:
        if vae_source is None:
            raise ModelLoadError("No VAE given: pass --vae-file (e.g. wan_2.1_vae.safetensors) or a diffusers folder.")
        vae = load_vae(vae_source, config=src.config_dir, dtype=vae_dt, device=placement.home("vae"))
    vae_config = vae.config if vae is not None else _vae_config(src)

    text_encoder = tokenizer = None
    te_source = src.text_encoder_file or src.folder
    if load_text_encoder_model:
        if te_source is None:
            raise ModelLoadError(
                "No text encoder given: pass --text-encoder-file (e.g. umt5_xxl_fp16.safetensors) or a diffusers folder."
            )
        text_encoder, tokenizer = load_text_encoder(
            te_source, config=src.config_dir, tokenizer_path=src.tokenizer_path, dtype=te_dt,
            device=placement.home("text_encoder"),
        )

    settings = src.settings
    tl = text_len if text_len is not None else ModelSettings(settings).text_len
    tl = DEFAULT_TEXT_LEN if tl is None else int(tl)
    if tl < 1:
        raise ModelLoadError(f"text_len must be >= 1, got {tl}.")
    if frame_level:
        from ..attention import install_frame_level_attention

        install_frame_level_attention(transformer, text_len=tl)

    scheduler_config = None
    if src.folder is not None and (src.folder / "scheduler" / "scheduler_config.json").is_file():
        scheduler_config = json.loads((src.folder / "scheduler" / "scheduler_config.json").read_text())
    elif (SHIPPED_CONFIG_DIR / "scheduler" / "scheduler_config.json").is_file():
        scheduler_config = json.loads((SHIPPED_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())

    te_id = _digest(_component_identity(src.folder, "text_encoder", src.text_encoder_file),
                    src.tokenizer_path, te_dt, load_text_encoder_model)
    model_id = _digest(
        _component_identity(src.folder, "transformer", src.transformer_file),
        _component_identity(src.folder, "vae", src.vae_file), te_id, checkpoint and _file_identity(Path(checkpoint)),
        lora and _file_identity(Path(lora)), lora_scale, dt, vae_dt, weight_dtype,
    )
    description = src.description + (f"; {'; '.join(applied)}" if applied else "")
    return WanModel(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_len=tl,
        latents_mean=torch.tensor(vae_config["latents_mean"], dtype=torch.float32),
        latents_std=torch.tensor(vae_config["latents_std"], dtype=torch.float32),
        vae_scale=int(vae_config.get("scale_factor_spatial") or VAE_SCALE),
        vae_scale_temporal=int(vae_config.get("scale_factor_temporal") or TEMPORAL_STRIDE),
        patch_size=tuple(transformer.config.patch_size),
        name=src.name,
        id=model_id,
        text_encoder_id=te_id,
        source=description,
        dtype=dt,
        device=dev,
        frame_level=frame_level,
        scheduler_config=scheduler_config,
        placement=placement,
    )


def _text_encoder_device(choice: str, device: torch.device, src: ModelSource, dtype: torch.dtype) -> str:
    """"auto" -> "device" when the encoder's weights (counted from its config) and one batch of captions fit the
    device's free memory, else "cpu"; on a CPU everything is "device"."""
    if choice != "auto":
        return choice
    if device.type == "cpu":
        return "device"
    from ..memory import ModelArchitecture, device_budget, text_encoder_fits

    folder = src.folder if src.folder is not None and src.text_encoder_file is None else src.config_dir
    try:
        arch = ModelArchitecture.from_config_dir(folder, dtype=dtype)
    except (ConfigError, OSError, ValueError):  # no readable configs: let the encoder try the device
        return "device"
    budget, _ = device_budget(device)
    return "device" if text_encoder_fits(arch, budget) else "cpu"


def _vae_config(src: ModelSource) -> dict:
    from diffusers import AutoencoderKLWan

    base = src.folder if src.folder is not None and src.vae_file is None else src.config_dir
    return dict(AutoencoderKLWan.load_config(str(_config_subdir(Path(base), "vae"))))
