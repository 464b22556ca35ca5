"""Tiny random Wan components for tests and benchmarks, and writers for every file format the loader reads.

Everything here is deterministic by seed and offline: the transformer uses diffusers' own Wan test config
(2 layers, 2 heads x 12), the VAE keeps Wan's block structure with few channels, the text encoder is a two-layer
UMT5 encoder, and the tokenizer is a sentencepiece unigram model trained in-process on a fixed word list.

Writers:

- :func:`save_tiny_wan` with ``"diffusers"`` writes a folder exactly as ``WanPipeline.save_pretrained`` does;
- :func:`write_original_transformer` writes ``wan2.1_t2v_1.3B_fp16.safetensors``-style files (original Wan key
  names, optionally behind ComfyUI's ``model.diffusion_model.`` prefix);
- :func:`write_original_vae` writes ``wan_2.1_vae.safetensors``-style files (original Wan VAE key names);
- :func:`write_comfy_umt5` writes ``umt5_xxl_fp16.safetensors``-style files (HF T5 key names, the tokenizer
  embedded as a uint8 ``spiece_model`` tensor), or with ``fp8_scaled=True`` the
  ``umt5_xxl_fp8_e4m3fn_scaled.safetensors`` layout (float8_e4m3fn linear weights, a per-tensor ``.scale_weight``
  and an empty ``scaled_fp8`` marker tensor).

Original key names come from :mod:`framecap_core.convert`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .convert import transformer_to_original_keys, vae_to_original_keys
from .fileio import atomic_path

TINY_TEXT_DIM = 16
TINY_Z_DIM = 16  # Wan latent channels

# Fixed corpus for the tiny sentencepiece model: words that show up in video captions, so tokenization is not
# all <unk> and captions of different scenes get different token ids.
TINY_WORDS = (
    "a an the and of in on at with over under through from to into near while then "
    "cat dog bird horse fish man woman child people robot car boat train plane bicycle "
    "walks runs jumps flies swims sits stands drives rides dances sleeps looks turns falls opens "
    "red blue green yellow white black orange purple golden dark bright "
    "sky sea ocean river lake forest mountain city street house room kitchen garden beach desert snow rain sun "
    "moon night day morning evening light shadow fire water tree flower road bridge window door "
    "camera pans slowly zooms close up wide shot view scene cinematic "
    "low quality blurry static worst"
).split()


def _randomize_zero_params(model: torch.nn.Module, generator: torch.Generator, std: float = 0.2) -> None:
    # Stock init leaves some layers (output projections, norms' biases, scale tables) at exactly zero; random values
    # everywhere make every path visible in outputs, so a wrong key mapping changes the result.
    with torch.no_grad():
        for param in model.parameters():
            if torch.count_nonzero(param) == 0:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32).to(param.dtype) * std)


@contextlib.contextmanager
def _seeded_init(seed: int):
    """Seed the global RNG for module construction without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------------- transformer


def tiny_transformer_config(**overrides: Any) -> dict:
    """diffusers' Wan test config: patch (1, 2, 2), 2 heads x 12, 16 latent channels, text_dim 16, 2 layers."""
    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=TINY_Z_DIM,
        out_channels=TINY_Z_DIM,
        text_dim=TINY_TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=32,
    )
    config.update(overrides)
    return config


def make_tiny_transformer(seed: int = 0, **overrides: Any):
    """A random ``WanTransformer3DModel`` (eval mode, fp32) with :func:`tiny_transformer_config` plus ``overrides``."""
    from diffusers import WanTransformer3DModel

    with _seeded_init(seed):
        model = WanTransformer3DModel(**tiny_transformer_config(**overrides))
    _randomize_zero_params(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------- VAE

# Wan's latent statistics (AutoencoderKLWan defaults); kept in the tiny config so normalization code is exercised
# with the real numbers.
WAN_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip


def tiny_vae_config(**overrides: Any) -> dict:
    """Wan VAE block structure (dim_mult of 4 levels, 2 res blocks, temporal x4 spatial x8) with base_dim 4."""
    config = dict(
        base_dim=4,
        z_dim=TINY_Z_DIM,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        latents_mean=list(WAN_LATENTS_MEAN),
        latents_std=list(WAN_LATENTS_STD),
    )
    config.update(overrides)
    return config


def make_tiny_vae(seed: int = 0, **overrides: Any):
    """A random ``AutoencoderKLWan`` (eval mode, fp32) with the real Wan layer structure and latent statistics."""
    from diffusers import AutoencoderKLWan

    with _seeded_init(seed):
        vae = AutoencoderKLWan(**tiny_vae_config(**overrides))
    _randomize_zero_params(vae, torch.Generator().manual_seed(seed + 1), std=0.05)
    return vae.eval()


# ---------------------------------------------------------------------------------------- tokenizer, text encoder


@functools.lru_cache(maxsize=1)
def tiny_spiece_model() -> bytes:
    """Serialized sentencepiece unigram model trained on :data:`TINY_WORDS` (T5 ids: pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    n = len(TINY_WORDS)
    sentences = [" ".join(TINY_WORDS[i:] + TINY_WORDS[:i]) for i in range(0, n, 7)]
    sentences += [" ".join(TINY_WORDS[i::5]) for i in range(5)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=out,
        vocab_size=200,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def make_tiny_tokenizer():
    """The tiny T5 tokenizer (see :func:`tiny_spiece_model`)."""
    from .models import tokenizer_from_spiece

    return tokenizer_from_spiece(tiny_spiece_model())


def tiny_text_encoder_config(d_model: int = TINY_TEXT_DIM, **overrides: Any) -> dict:
    """UMT5 encoder config with the shape of UMT5-XXL's (gated-gelu, per-layer relative bias) but 2 small layers."""
    vocab = len(make_tiny_tokenizer())
    config = dict(
        vocab_size=max(64, vocab),
        d_model=d_model,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        dense_act_fn="gelu_new",
        is_gated_act=True,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        scalable_attention=True,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    config.update(overrides)
    return config


def make_tiny_text_encoder(seed: int = 0, d_model: int = TINY_TEXT_DIM, **overrides: Any):
    """A random ``UMT5EncoderModel`` (eval mode, fp32) whose hidden size is the tiny transformer's text_dim."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**tiny_text_encoder_config(d_model=d_model, **overrides))
    with _seeded_init(seed):
        model = UMT5EncoderModel(config)
    return model.eval()


def make_tiny_scheduler():
    """The scheduler Wan2.1 ships (UniPC, flow prediction, flow sigmas, shift 3.0)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


@dataclass
class TinyWan:
    """The four components of a tiny Wan text-to-video model."""

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def make_tiny_wan(seed: int = 0, text_dim: int = TINY_TEXT_DIM, **transformer_overrides: Any) -> TinyWan:
    """Transformer, VAE, text encoder (d_model = text_dim), tokenizer and scheduler, all from ``seed``."""
    return TinyWan(
        transformer=make_tiny_transformer(seed, text_dim=text_dim, **transformer_overrides),
        vae=make_tiny_vae(seed + 100),
        text_encoder=make_tiny_text_encoder(seed + 200, d_model=text_dim),
        tokenizer=make_tiny_tokenizer(),
        scheduler=make_tiny_scheduler(),
    )


# ------------------------------------------------------------------------------------------- random parts, any size


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def make_random_part(part: str, config: dict, *, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu", seed: int = 0) -> torch.nn.Module:
    """A randomly initialized Wan ``part`` ("transformer", "text_encoder" or "vae") of any size from its config,
    allocated directly in ``dtype`` on ``device`` (no float32 copy first, so a real-size part needs only its own
    memory), with the loader's float32 islands. For benchmarks and memory checks at real size, offline."""
    from .models.state_dicts import cast_like_loader

    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    with _seeded_init(seed), torch.device(device), _default_dtype(dtype):
        if part == "transformer":
            from diffusers import WanTransformer3DModel

            model = WanTransformer3DModel.from_config(config)
            keep = WanTransformer3DModel._keep_in_fp32_modules if dtype != torch.float32 else None
        elif part == "text_encoder":
            from transformers import UMT5Config, UMT5EncoderModel

            # Built on the meta device, then given memory once: constructing it directly allocates the embedding
            # twice (the stack's own, then the tied ``shared``) - a transient 3.9 GiB at UMT5-XXL width in fp32
            # that no loader has.
            with torch.device("meta"):
                model = UMT5EncoderModel(UMT5Config(**config))
            model = model.to_empty(device=device)
            model.tie_weights()  # to_empty gives each name its own (untouched) storage; one embedding again
            model.init_weights()
            keep = UMT5EncoderModel._keep_in_fp32_modules if dtype == torch.float16 else None
        elif part == "vae":
            from diffusers import AutoencoderKLWan

            model = AutoencoderKLWan.from_config(config)
            keep = None
        else:
            raise ValueError(f"unknown part {part!r}; use transformer, text_encoder or vae")
    return cast_like_loader(model, dtype, keep).eval()


# ------------------------------------------------------------------------------------------------------- writers


def _contiguous(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def _save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def quantize_scaled_fp8(state: dict[str, torch.Tensor], select) -> dict[str, torch.Tensor]:
    """ComfyUI's ``*_fp8_e4m3fn_scaled`` layout: every tensor named by ``select(name)`` is stored as
    ``float8_e4m3fn(W / s)`` with ``s = max|W| / 448`` in ``<name minus "weight">scale_weight`` (float32 scalar);
    an empty float8 ``scaled_fp8`` tensor marks the file. Other tensors are returned unchanged."""
    fp8 = torch.float8_e4m3fn
    fp8_max = torch.finfo(fp8).max
    out = dict(state)
    for key, value in state.items():
        if not select(key):
            continue
        weight = value.detach().float().cpu()
        scale = (weight.abs().max() / fp8_max).clamp(min=1e-12)
        out[key] = (weight / scale).clamp(-fp8_max, fp8_max).to(fp8).contiguous()
        out[key[: -len("weight")] + "scale_weight"] = scale.reshape(()).to(torch.float32)
    out["scaled_fp8"] = torch.empty(0, dtype=fp8)
    return out


def _is_quantizable_wan_weight(key: str) -> bool:
    # Linear weights of the blocks (attention projections and FFN), as fp8 Wan releases quantize them.
    return re.search(r"blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]\.weight$|blocks\.\d+\.ffn\.[02]\.weight$", key) is not None


def write_original_transformer(
    transformer,
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
    prefix: str = "model.diffusion_model.",
    fp8_scaled: bool = False,
) -> Path:
    """Write a ComfyUI / original-Wan single-file transformer (``wan2.1_t2v_1.3B_fp16.safetensors`` style);
    ``fp8_scaled=True`` stores the block linear weights as scaled float8 (see :func:`quantize_scaled_fp8`)."""
    state = _contiguous(transformer_to_original_keys(transformer.state_dict(), prefix=prefix), dtype)
    if fp8_scaled:
        originals = transformer_to_original_keys(transformer.state_dict(), prefix=prefix)
        quantized = quantize_scaled_fp8(originals, _is_quantizable_wan_weight)
        state.update({k: v for k, v in quantized.items() if k not in state or _is_quantizable_wan_weight(k)})
    return _save(state, path)


def write_original_vae(vae, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write an original-Wan single-file VAE (``wan_2.1_vae.safetensors`` style)."""
    return _save(_contiguous(vae_to_original_keys(vae.state_dict()), dtype), path)


def _is_quantizable_t5_weight(key: str) -> bool:
    # Linear weights only: embeddings, layer norms and relative attention biases stay in high precision.
    return re.search(r"\.(q|k|v|o|wi|wi_0|wi_1|wo)\.weight$", key) is not None


def write_comfy_umt5(
    text_encoder,
    path: str | Path,
    *,
    spiece: bytes | None = None,
    dtype: torch.dtype = torch.float16,
    fp8_scaled: bool = False,
) -> Path:
    """Write a ComfyUI UMT5 single file: HF T5 key names plus the tokenizer as a uint8 ``spiece_model`` tensor.

    ``fp8_scaled=True`` writes the ``umt5_xxl_fp8_e4m3fn_scaled`` layout (linear weights as scaled float8, see
    :func:`quantize_scaled_fp8`); the rest is stored in ``dtype``.
    """
    state = dict(text_encoder.state_dict())
    state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    tensors = _contiguous(state, dtype)
    if fp8_scaled:
        quantized = quantize_scaled_fp8(state, _is_quantizable_t5_weight)
        tensors.update({k: v.contiguous() for k, v in quantized.items() if k not in tensors or _is_quantizable_t5_weight(k)})
    spiece = tiny_spiece_model() if spiece is None else spiece
    tensors["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8).clone()
    return _save(tensors, path)


def save_diffusers_folder(components: TinyWan, folder: str | Path, *, spiece: bytes | None = None) -> Path:
    """Write ``components`` as ``WanPipeline.save_pretrained`` does (safetensors), plus ``tokenizer/spiece.model``."""
    from diffusers import WanPipeline

    folder = Path(folder)
    pipe = WanPipeline(
        tokenizer=components.tokenizer,
        text_encoder=components.text_encoder,
        vae=components.vae,
        scheduler=components.scheduler,
        transformer=components.transformer,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    spiece = tiny_spiece_model() if spiece is None else spiece
    (folder / "tokenizer" / "spiece.model").write_bytes(spiece)
    return folder


# File names the ComfyUI model folders use for Wan2.1-T2V-1.3B (the tiny files get the same names so loader code
# paths and name detection are exercised).
SINGLE_FILE_NAMES = {
    "transformer_fp16": "wan2.1_t2v_1.3B_fp16.safetensors",
    "transformer_bf16": "wan2.1_t2v_1.3B_bf16.safetensors",
    "transformer_noprefix": "wan2.1_t2v_1.3B_noprefix_fp16.safetensors",
    "vae": "wan_2.1_vae.safetensors",
    "umt5_fp16": "umt5_xxl_fp16.safetensors",
    "umt5_fp8_scaled": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "transformer_fp8_scaled": "wan2.1_t2v_1.3B_fp8_e4m3fn_scaled.safetensors",
}

FORMATS = ("diffusers", "comfy")


def save_tiny_wan(
    folder: str | Path,
    *,
    formats: Iterable[str] = ("diffusers",),
    seed: int = 0,
    components: TinyWan | None = None,
    text_len: int | None = None,
) -> dict[str, Path]:
    """Build (or take) a tiny Wan and write it under ``folder`` in the requested ``formats``.

    - ``"diffusers"``: ``folder/diffusers/`` as ``WanPipeline.save_pretrained`` writes it (plus a ``framecap.json``
      holding ``text_len`` when given);
    - ``"comfy"``: ``folder/comfy/`` with the ComfyUI single files named in :data:`SINGLE_FILE_NAMES`.

    Returns a dict of written paths: ``"diffusers"`` and the :data:`SINGLE_FILE_NAMES` keys.
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {FORMATS}")
    components = components or make_tiny_wan(seed)
    folder = Path(folder)
    written: dict[str, Path] = {}
    if "diffusers" in formats:
        target = folder / "diffusers"
        if target.exists():
            shutil.rmtree(target)
        save_diffusers_folder(components, target)
        if text_len is not None:
            (target / "framecap.json").write_text(json.dumps({"text_len": int(text_len)}, indent=2) + "\n")
        written["diffusers"] = target
    if "comfy" in formats:
        comfy = folder / "comfy"
        names = SINGLE_FILE_NAMES
        written["transformer_fp16"] = write_original_transformer(
            components.transformer, comfy / names["transformer_fp16"], dtype=torch.float16
        )
        written["transformer_bf16"] = write_original_transformer(
            components.transformer, comfy / names["transformer_bf16"], dtype=torch.bfloat16
        )
        written["transformer_noprefix"] = write_original_transformer(
            components.transformer, comfy / names["transformer_noprefix"], dtype=torch.float16, prefix=""
        )
        written["transformer_fp8_scaled"] = write_original_transformer(
            components.transformer, comfy / names["transformer_fp8_scaled"], dtype=torch.float16, fp8_scaled=True
        )
        written["vae"] = write_original_vae(components.vae, comfy / names["vae"])
        written["umt5_fp16"] = write_comfy_umt5(components.text_encoder, comfy / names["umt5_fp16"])
        written["umt5_fp8_scaled"] = write_comfy_umt5(
            components.text_encoder, comfy / names["umt5_fp8_scaled"], fp8_scaled=True
        )
    return written
