"""Model nodes: load Wan2.1 with frame-level cross-attention, and encode a timeline's captions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from framecap_core.choices import DTYPES
from framecap_core.errors import ConfigError, ModelLoadError

from . import comfy_compat

CATEGORY = "FrameCap"
MODEL = "FRAMECAP_MODEL"
CONDITIONING = "FRAMECAP_CONDITIONING"

TOY = "toy"
AUTO = "(auto)"
NONE = "none"
DIFFUSERS_PREFIX = "diffusers: "

# The Wan2.1 files of ComfyUI's own Wan templates (the workflows carry them as model hints).
WAN_FILES = {
    "diffusion_models": "wan2.1_t2v_1.3B_fp16.safetensors",
    "text_encoders": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "vae": "wan_2.1_vae.safetensors",
}


def model_choices() -> list[str]:
    """"toy", the diffusers folders of ``models/diffusers`` and the files of ``models/diffusion_models``."""
    folders = [DIFFUSERS_PREFIX + name for name in comfy_compat.list_diffusers_folders()]
    return [TOY, *folders, *comfy_compat.get_filename_list("diffusion_models")]


@dataclass
class _LoadRequest:
    source: str | None
    transformer_file: str | None
    vae_file: str | None
    text_encoder_file: str | None
    checkpoint: str | None
    lora_scale: float
    dtype: str
    device: str
    offload: str = "model"
    weight_dtype: str = "default"
    text_encoder_device: str = "auto"

    def key(self) -> tuple:
        stamps = []
        for path in (self.source, self.transformer_file, self.vae_file, self.text_encoder_file, self.checkpoint):
            try:
                stat = os.stat(path) if path and path != TOY else None
            except OSError:
                stat = None
            stamps.append((path, stat and (stat.st_size, stat.st_mtime_ns)))
        return (*stamps, self.lora_scale, self.dtype, self.device, self.offload, self.weight_dtype,
                self.text_encoder_device)


def _full_path(folder: str, name: str, what: str) -> str:
    path = comfy_compat.get_full_path(folder, name)
    if path is None:
        raise ModelLoadError(f"{what} {name!r} not found in ComfyUI's models/{folder} folder; put the file there "
                             f"(or pick another) and refresh the page.")
    return path


def resolve_request(model, vae_name, text_encoder_name, finetune, finetune_strength, dtype, device,
                    offload="model", weight_dtype="default", text_encoder_device="auto") -> _LoadRequest:
    """Widget values -> the files to load (checks only; loads nothing)."""
    vae_file = None if vae_name in (AUTO, "", None) else _full_path("vae", vae_name, "VAE")
    te_file = None if text_encoder_name in (AUTO, "", None) else _full_path("text_encoders", text_encoder_name,
                                                                            "Text encoder")
    checkpoint = None if finetune in (NONE, "", None) else _full_path("loras", finetune, "Fine-tune / LoRA")
    source = transformer_file = None
    if model == TOY:
        source = TOY
    elif model.startswith(DIFFUSERS_PREFIX):
        name = model[len(DIFFUSERS_PREFIX):]
        source = comfy_compat.get_diffusers_folder(name)
        if source is None:
            raise ModelLoadError(f"Diffusers folder {name!r} not found in ComfyUI's models/diffusers (it needs a "
                                 "model_index.json); check the folder and refresh the page.")
    else:
        transformer_file = _full_path("diffusion_models", model, "Transformer")
        missing = [w for w, f in (("vae_name", vae_file), ("text_encoder_name", te_file)) if f is None]
        if missing:
            raise ModelLoadError(
                f"A single transformer file ({model}) needs its VAE and text encoder too: choose "
                f"{' and '.join(missing)} (e.g. {WAN_FILES['vae']} in models/vae and {WAN_FILES['text_encoders']} "
                "in models/text_encoders)."
            )
    device = comfy_compat.default_device() if device == "default" else device
    return _LoadRequest(source, transformer_file, vae_file, te_file, checkpoint, float(finetune_strength), dtype, device,
                        offload, weight_dtype, text_encoder_device)


# One loaded model is kept (ComfyUI also caches node outputs; this keeps a reload cheap when only a widget of a
# downstream node changed in a script or test that runs several workflows).
_MODEL_CACHE: dict[tuple, Any] = {}


def load_model(request: _LoadRequest):
    key = request.key()
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    _MODEL_CACHE.clear()
    from framecap_core.models import load_wan

    comfy_compat.free_memory_for(request.device)
    model = load_wan(
        request.source, transformer_file=request.transformer_file, vae_file=request.vae_file,
        text_encoder_file=request.text_encoder_file, checkpoint=request.checkpoint, lora_scale=request.lora_scale,
        dtype=request.dtype, device=request.device, frame_level=True, offload=request.offload,
        weight_dtype=request.weight_dtype, text_encoder_device=request.text_encoder_device,
    )
    _MODEL_CACHE[key] = model
    return model


class FrameCapWanLoader:
    """Load Wan2.1 T2V with frame-level cross-attention."""

    DESCRIPTION = (
        "Loads Wan2.1-T2V (transformer, VAE, UMT5 text encoder) and patches its cross-attention to frame level, so "
        "every latent frame attends only to its own caption. 'toy' is the small model bundled with FrameCap (runs "
        "anywhere, in seconds, on a CPU). For the real model pick a diffusers folder from models/diffusers, or the "
        "transformer file from models/diffusion_models together with the VAE (models/vae) and text encoder "
        "(models/text_encoders). A fine-tune (full checkpoint or LoRA, safetensors) from models/loras is merged in."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model with frame-level cross-attention.",)

    @classmethod
    def INPUT_TYPES(cls):
        from framecap_core.placement import OFFLOAD_MODES, TEXT_ENCODER_DEVICES, WEIGHT_DTYPES

        return {
            "required": {
                "model": (model_choices(), {"default": TOY,
                          "tooltip": "toy (bundled), 'diffusers: <folder>' from models/diffusers, or a Wan2.1 T2V "
                                     "transformer file from models/diffusion_models "
                                     f"(e.g. {WAN_FILES['diffusion_models']})."}),
                "vae_name": ([AUTO, *comfy_compat.get_filename_list("vae")], {"default": AUTO,
                             "tooltip": "Wan VAE from models/vae (e.g. wan_2.1_vae.safetensors); (auto) = the one "
                                        "inside the toy / diffusers folder. Required with a single transformer file."}),
                "text_encoder_name": ([AUTO, *comfy_compat.get_filename_list("text_encoders")], {"default": AUTO,
                                      "tooltip": "UMT5-XXL from models/text_encoders (e.g. "
                                                 f"{WAN_FILES['text_encoders']}); (auto) = the one inside the toy / "
                                                 "diffusers folder. Required with a single transformer file."}),
                "finetune": ([NONE, *comfy_compat.get_filename_list("loras")], {"default": NONE,
                             "tooltip": "Optional FrameCap fine-tune from models/loras: a full transformer "
                                        "checkpoint or a LoRA (safetensors), detected from its tensors."}),
                "finetune_strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                                "tooltip": "LoRA scale (ignored for a full checkpoint)."}),
                "dtype": (list(DTYPES), {"default": "auto",
                          "tooltip": "Transformer precision: auto = bf16 on a GPU, fp32 on the CPU."}),
                "device": (["default", "cpu", "cuda"], {"default": "default",
                           "tooltip": "default = ComfyUI's device (the CPU when started with --cpu)."}),
            },
            "optional": {
                "offload": (list(OFFLOAD_MODES), {"default": "model",
                            "tooltip": "What stays on the GPU: model = each part (text encoder, transformer, VAE) "
                                       "only while it runs; none = everything all the time (fastest when it fits); "
                                       "sequential = also the transformer's blocks one at a time (smallest cards)."}),
                "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default",
                                 "tooltip": "Storage of the transformer's block weights: default (= dtype) or "
                                            "fp8_e4m3fn (half of bf16, computed in dtype; weights rounded to fp8)."}),
                "text_encoder_device": (list(TEXT_ENCODER_DEVICES), {"default": "auto",
                                        "tooltip": "Where UMT5 runs (once per new caption): device, cpu (keeps its "
                                                   "~11 GB off the GPU) or auto (the device when it fits)."}),
            },
        }

    def load(self, model, vae_name, text_encoder_name, finetune, finetune_strength, dtype, device, offload=None,
             weight_dtype=None, text_encoder_device=None):
        request = resolve_request(model, vae_name, text_encoder_name, finetune, finetune_strength, dtype, device,
                                  offload or "model", weight_dtype or "default", text_encoder_device or "auto")
        return (load_model(request),)


@dataclass
class FrameLevelConditioning:
    """A timeline with its captions encoded: ``context`` is a ``framecap_core.text.TimelineContext``
    (``unique_embeds [U, text_len, D]``, ``latent_indices [L]``, ``negative_embeds [1, text_len, D]``)."""

    timeline: Any
    context: Any
    negative: str
    text_encoder_id: str


NEGATIVE_INPUT = ("STRING", {"multiline": True, "default": "",
                             "tooltip": "Negative prompt for every frame. Empty = the timeline's negative, else "
                                        "FrameCap's default (overexposed, static, blurred, low quality, ...)."})


def resolve_negative(negative: str, timeline) -> str:
    """The negative widget's text, else the timeline's negative, else FrameCap's default (an empty widget is
    "not set": ComfyUI has no None for a text widget)."""
    from framecap_core.timeline import negative_prompt

    return negative_prompt(timeline, negative.strip() if negative and negative.strip() else None)


def _check_model(model) -> None:
    if not hasattr(model, "transformer") or not hasattr(model, "latents_mean"):
        raise ConfigError(f"expected a FrameCap model (FRAMECAP_MODEL from the Frame-Level Wan Loader), got "
                          f"{type(model).__name__}.")


class FrameCapTextEncode:
    """Encode a timeline's captions (each unique caption once)."""

    DESCRIPTION = (
        "Encodes the captions of a timeline with the model's UMT5 text encoder: each distinct caption once (cached "
        "across runs), then every latent frame points at its caption. Also encodes the negative prompt."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Per-frame caption embeddings and the negative prompt.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model from the Frame-Level Wan Loader."}),
                "timeline": ("FRAMECAP_TIMELINE", {"tooltip": "The timeline whose captions to encode."}),
                "negative": NEGATIVE_INPUT,
            }
        }

    def encode(self, model, timeline, negative):
        from framecap_core.text import CaptionEncoder, timeline_context

        _check_model(model)
        neg = resolve_negative(negative, timeline)
        encoder = CaptionEncoder.from_model(model)
        context = timeline_context(encoder, timeline, neg)
        return (FrameLevelConditioning(timeline, context, neg, encoder.encoder_id),)
