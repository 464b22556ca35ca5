"""Loaders of the three Wan components from a diffusers folder or a single file: the transformer, the VAE, the
UMT5 text encoder with its tokenizer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..convert import shared_prefix, transformer_to_diffusers_keys, vae_to_diffusers_keys
from ..errors import ModelLoadError
from ..narrow_text import accept_narrow_text
from .devices import resolve_device, resolve_dtype
from .files import (
    _TEXT_PREFIXES,
    SHIPPED_CONFIG_DIR,
    TOY_MODEL_DIR,
    load_pretrained_folder,
    read_safetensors,
    safetensors_keys,
)
from .sources import _check_diffusers_folder, _component_folder, _config_subdir, _weights_present
from .state_dicts import _has_fp8, _load_into_meta_model, dequantize_scaled_fp8


def load_transformer(
    source: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
):
    """A ``WanTransformer3DModel`` from a diffusers folder, a ``transformer/`` folder or a single safetensors file.

    ``config``: the config folder for single files (default: the shipped Wan2.1-T2V-1.3B configs).
    """
    from diffusers import WanTransformer3DModel

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source) if str(source) != "toy" else TOY_MODEL_DIR
    if path.is_dir():
        sub = path / "transformer" if (path / "transformer").is_dir() else path
        if not (sub / "config.json").is_file():
            raise ModelLoadError(
                f"transformer/config.json not found in {path}; expected a diffusers-format Wan folder as written by "
                f"save_pretrained, or a transformer .safetensors file."
            )
        if not _weights_present(sub, "diffusion_pytorch_model"):
            if sub != path:
                _check_diffusers_folder(path, need_vae=False, need_text=False)
            raise ModelLoadError(f"diffusion_pytorch_model.safetensors not found in {sub}.")
        model = load_pretrained_folder(WanTransformer3DModel.from_pretrained, sub, "transformer", torch_dtype=dt,
                                       use_safetensors=True)
        accept_narrow_text(model)
        return model.to(dev).eval()
    state, _ = read_safetensors(path, "transformer")
    state = transformer_to_diffusers_keys(state)
    state = dequantize_scaled_fp8(state, torch.float32) if _has_fp8(state) else state
    cfg_dir = _config_subdir(Path(config) if config else SHIPPED_CONFIG_DIR, "transformer")
    cfg = WanTransformer3DModel.load_config(str(cfg_dir))
    model = _load_into_meta_model(
        WanTransformer3DModel, cfg, state, dtype=dt, what="transformer", path=path,
        keep_fp32=WanTransformer3DModel._keep_in_fp32_modules, from_config=WanTransformer3DModel.from_config,
    )
    accept_narrow_text(model)
    return model.to(dev)


def load_vae(
    source: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """An ``AutoencoderKLWan`` from a diffusers folder, a ``vae/`` folder or a single file (original or diffusers
    names). The VAE runs in fp32 by default, as diffusers' Wan examples do."""
    from diffusers import AutoencoderKLWan

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source) if str(source) != "toy" else TOY_MODEL_DIR
    if path.is_dir():
        sub = _component_folder(path, "vae", "diffusion_pytorch_model", "a VAE .safetensors file such as wan_2.1_vae.safetensors")
        vae = load_pretrained_folder(AutoencoderKLWan.from_pretrained, sub, "VAE", torch_dtype=dt, use_safetensors=True)
        return vae.to(dev).eval()
    state, _ = read_safetensors(path, "VAE")
    state = vae_to_diffusers_keys(state)
    cfg_dir = _config_subdir(Path(config) if config else SHIPPED_CONFIG_DIR, "vae")
    cfg = AutoencoderKLWan.load_config(str(cfg_dir))
    model = _load_into_meta_model(AutoencoderKLWan, cfg, state, dtype=dt, what="VAE", path=path,
                                  from_config=AutoencoderKLWan.from_config)
    return model.to(dev)


def tokenizer_from_spiece(spiece: bytes):
    """A transformers ``T5Tokenizer`` built offline from sentencepiece model bytes (UMT5's tokenizer)."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory(prefix="framecap_spiece_") as tmp:
        (Path(tmp) / "spiece.model").write_bytes(spiece)
        return T5Tokenizer.from_pretrained(tmp, extra_ids=0)


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer from a folder (``tokenizer.json`` / ``spiece.model`` + configs) or a ``spiece.model`` file."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            keys, _ = safetensors_keys(path)
            if "spiece_model" not in keys:
                raise ModelLoadError(f"{path} has no embedded tokenizer (no 'spiece_model' tensor).")
            state, _ = read_safetensors(path, "text encoder")
            return tokenizer_from_spiece(state["spiece_model"].numpy().tobytes())
        return tokenizer_from_spiece(path.read_bytes())
    if path.is_dir():
        if (path / "tokenizer").is_dir():
            path = path / "tokenizer"
        from transformers import AutoTokenizer

        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            try:
                return AutoTokenizer.from_pretrained(str(path))
            except Exception as exc:
                if not (path / "spiece.model").is_file():
                    raise ModelLoadError(f"Could not read the tokenizer in {path} ({exc}).") from None
        if (path / "spiece.model").is_file():
            return tokenizer_from_spiece((path / "spiece.model").read_bytes())
    raise ModelLoadError(
        f"No tokenizer at {path}: expected a folder with tokenizer.json or spiece.model (the tokenizer/ folder of a "
        f"diffusers Wan model), or a spiece.model file."
    )


def _text_state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = shared_prefix(state.keys(), _TEXT_PREFIXES)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = dequantize_scaled_fp8(state, torch.float32) if _has_fp8(state) or "scaled_fp8" in state else state
    state = {k: v for k, v in state.items() if k != "spiece_model" and not k.startswith("logit_scale")}
    # UMT5EncoderModel ties encoder.embed_tokens to shared: files carry one or the other.
    emb = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    if emb is not None:
        state["shared.weight"] = emb
        state["encoder.embed_tokens.weight"] = emb
    return state


def load_text_encoder(
    source: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
):
    """``(UMT5EncoderModel, tokenizer)`` from a diffusers folder or a ComfyUI UMT5 single file (fp16/bf16/fp32 or
    fp8-scaled, tokenizer embedded as ``spiece_model`` unless ``tokenizer_path`` is given)."""
    from transformers import UMT5Config, UMT5EncoderModel

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source) if str(source) != "toy" else TOY_MODEL_DIR
    if path.is_dir():
        sub = _component_folder(path, "text_encoder", "model", "a UMT5 .safetensors file such as umt5_xxl_fp16.safetensors")
        model = load_pretrained_folder(UMT5EncoderModel.from_pretrained, sub, "text encoder", dtype=dt,
                                       use_safetensors=True).to(dev).eval()
        tokenizer = load_tokenizer(tokenizer_path or (path / "tokenizer" if (path / "tokenizer").is_dir() else path))
        return model, tokenizer
    raw, _ = read_safetensors(path, "text encoder")
    spiece = raw.get("spiece_model")
    state = _text_state_to_hf(raw)
    cfg_dir = _config_subdir(Path(config) if config else SHIPPED_CONFIG_DIR, "text_encoder")
    cfg = UMT5Config.from_pretrained(str(cfg_dir))
    keep = UMT5EncoderModel._keep_in_fp32_modules if dt == torch.float16 else None
    model = _load_into_meta_model(UMT5EncoderModel, cfg, state, dtype=dt, what="text encoder", path=path,
                                  keep_fp32=keep)
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
    elif spiece is not None:
        tokenizer = tokenizer_from_spiece(spiece.numpy().tobytes())
    else:
        raise ModelLoadError(
            f"text encoder file {path} has no embedded tokenizer ('spiece_model' tensor); pass --tokenizer with the "
            f"tokenizer/ folder of a diffusers Wan model or a spiece.model file."
        )
    return model.to(dev), tokenizer
