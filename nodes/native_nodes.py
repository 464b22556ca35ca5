"""Nodes over ComfyUI's own Wan models: a native CLIP -> frame-level conditioning, and the PMWD KSampler over a
native ``MODEL`` -> a native ``LATENT`` (for VAE Decode, CreateVideo, SaveVideo).

The ComfyUI-facing backend lives in :mod:`nodes.native_backend`; these nodes are thin adapters over it and the
core pipeline. Nothing here imports ComfyUI at import time.
"""

from __future__ import annotations

from framecap_core.errors import ConfigError

from . import comfy_compat
from .model_nodes import CONDITIONING, NEGATIVE_INPUT, FrameLevelConditioning, resolve_negative
from .previews import PreviewCollector, preview_progress
from .sampler_nodes import LATENT_INFO_KEY, SCHEDULE, DiffusionForcingSchedule

CATEGORY = "FrameCap"


# --------------------------------------------------------------------------------------------------------------------
# Native CLIP -> frame-level conditioning
# --------------------------------------------------------------------------------------------------------------------


def encode_unique_with_clip(clip, texts: list[str]):
    """Encode each distinct text of ``texts`` once with a ComfyUI ``CLIP`` (``tokenize`` + ``encode_from_tokens``,
    as CLIPTextEncode does) and stack them, zero-padded to a common length.

    ComfyUI's Wan UMT5 pads every prompt with zeros to at least 512 tokens (longer prompts keep all their tokens),
    so the common length is 512 unless a prompt is longer; frame-level attention needs one length for all captions.

    Returns:
        ``(embeds [U, T, D] float32 on the CPU, distinct texts in first-appearance order)``.
    """
    import torch

    unique = list(dict.fromkeys(texts))
    encoded = []
    for text in unique:
        cond = clip.encode_from_tokens(clip.tokenize(text))
        if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or cond.shape[0] != 1:
            raise ConfigError(
                f"the CLIP returned {tuple(getattr(cond, 'shape', ()))} for one prompt, expected [1, tokens, dim]; "
                "use Load CLIP with type 'wan' (UMT5-XXL)."
            )
        encoded.append(cond[0].float().cpu())
    length = max(c.shape[0] for c in encoded)
    dim = encoded[0].shape[1]
    embeds = torch.zeros(len(encoded), length, dim)
    for i, cond in enumerate(encoded):
        embeds[i, : cond.shape[0]] = cond
    return embeds, unique


class FrameCapCLIPTextEncode:
    """A timeline's captions through ComfyUI's own CLIP (Load CLIP, type wan)."""

    DESCRIPTION = (
        "Encodes the captions of a timeline with a native CLIP (Load CLIP, type wan: umt5_xxl_fp8_e4m3fn_scaled or "
        "umt5_xxl_fp16), each distinct caption once, exactly as CLIP Text Encode would encode it, and points every "
        "latent frame at its caption. Also encodes the negative prompt. Feed it to the PMWD KSampler (native MODEL) "
        "— or to the FrameCap loader's PMWD KSampler, which accepts the same conditioning."
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
                "clip": ("CLIP", {"tooltip": "The text encoder from Load CLIP (type wan)."}),
                "timeline": ("FRAMECAP_TIMELINE", {"tooltip": "The timeline whose captions to encode."}),
                "negative": NEGATIVE_INPUT,
            }
        }

    def encode(self, clip, timeline, negative):
        import torch

        from framecap_core.text import TimelineContext

        if not (hasattr(clip, "tokenize") and hasattr(clip, "encode_from_tokens")):
            raise ConfigError(f"expected a CLIP (from Load CLIP), got {type(clip).__name__}.")
        neg = resolve_negative(negative, timeline)
        captions = list(timeline.unique_captions())
        embeds, unique = encode_unique_with_clip(clip, [*captions, neg])
        position = {text: i for i, text in enumerate(unique)}
        caption_rows = torch.tensor([position[c] for c in captions], dtype=torch.long)
        context = TimelineContext(
            unique_captions=captions,
            unique_embeds=embeds[caption_rows],
            latent_indices=torch.tensor(timeline.latent_unique_indices(), dtype=torch.long),
            negative_embeds=embeds[position[neg]][None],
        )
        return (FrameLevelConditioning(timeline, context, neg, f"comfy-clip-{id(clip):x}"),)


# --------------------------------------------------------------------------------------------------------------------
# The PMWD KSampler over a native MODEL
# --------------------------------------------------------------------------------------------------------------------


class _NativeModelInfo:
    """What ``pipeline.generate`` reads from a model when it is given a denoiser: device and latent channels."""

    def __init__(self, device, latent_channels: int):
        self.device = device
        self.latent_channels = latent_channels


class FrameCapNativeSampler:
    """PMWD (and the sliding / FIFO / single baselines) over ComfyUI's own Wan MODEL."""

    DESCRIPTION = (
        "Generates the video latents of the whole timeline with a native Wan2.1 T2V MODEL (Load Diffusion Model, "
        "after LoRAs, ModelSamplingSD3 and other model patches): frame-level cross-attention is attached to a clone "
        "of the model, ComfyUI loads and offloads the weights, and the sigma shift is the MODEL's own "
        "(ModelSamplingSD3 sets it; Wan2.1's default is 8). Methods as in the PMWD KSampler; window and overlap are "
        "in pixel frames. Outputs a native LATENT for VAE Decode."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Wan latents [1, 16, T, H/8, W/8] for VAE Decode (plus the run's timeline and windows).",)

    @classmethod
    def INPUT_TYPES(cls):
        from .sampler_nodes import FrameCapPMWDSampler

        shared = dict(FrameCapPMWDSampler.INPUT_TYPES()["required"])
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Wan2.1 T2V model from Load Diffusion Model (optionally patched: "
                                               "LoRA, ModelSamplingSD3 for the shift, ...)."}),
                "conditioning": (CONDITIONING, {"tooltip": "Per-frame captions from Frame-Level CLIP Text Encode "
                                                           "(or Frame-Level Text Encode)."}),
                "schedule": (SCHEDULE, {"tooltip": "Steps, solver and Diffusion Forcing from the Diffusion Forcing "
                                                   "Scheduler. Its shift is NOT used here: the MODEL's own is "
                                                   "(set it with ModelSamplingSD3)."}),
                **{name: shared[name] for name in ("width", "height", "seed", "guidance", "method", "window",
                                                   "overlap", "fusion", "window_batch_size")},
            }
        }

    def sample(self, model, conditioning, schedule, width, height, seed, guidance, method, window, overlap, fusion,
               window_batch_size):
        from framecap_core.pipeline import GenerationSettings, generate, plan_generation

        from .native_backend import (
            NativeWanDenoiser,
            auto_native_window_batch,
            frame_level_clone,
            model_flow_shift,
            native_sampling,
        )

        if not isinstance(conditioning, FrameLevelConditioning):
            raise ConfigError("conditioning must come from Frame-Level CLIP Text Encode (FRAMECAP_CONDITIONING).")
        if not isinstance(schedule, DiffusionForcingSchedule):
            raise ConfigError("schedule must come from the Diffusion Forcing Scheduler (FRAMECAP_SCHEDULE).")
        ctx, timeline = conditioning.context, conditioning.timeline
        clone = frame_level_clone(model, ctx.text_len)  # checks it is a Wan T2V MODEL; `model` stays untouched
        text_dim = clone.get_model_object("diffusion_model").text_dim
        if int(ctx.unique_embeds.shape[-1]) != int(text_dim):
            raise ConfigError(
                f"the conditioning is {int(ctx.unique_embeds.shape[-1])} wide but the MODEL expects {text_dim}; "
                "encode the timeline with Wan's UMT5 (Load CLIP, type wan)."
            )
        settings = GenerationSettings(
            method=method, window=int(window), overlap=int(overlap), fusion=fusion, df_step=schedule.df_step,
            causal_block_size=schedule.causal_block_size, steps=schedule.steps, guidance=float(guidance),
            shift=model_flow_shift(clone), solver=schedule.solver, seed=int(seed), width=int(width),
            height=int(height), fps=timeline.fps, window_batch_size=int(window_batch_size) or None,
            negative=conditioning.negative,
        )
        plan = plan_generation(timeline, settings)  # validates (ConfigError naming the fix); run below as planned
        base = clone.model
        channels = int(base.latent_format.latent_channels)
        h, w = plan.latent_size
        one_at_a_time = method in ("sliding", "fifo", "single")
        auto = not one_at_a_time and not settings.window_batch_size  # 0 = "auto": decided once the model is loaded
        rows = 1 if one_at_a_time or auto else settings.window_batch_size
        window_shape = (channels, plan.window_latents, h, w)
        previewer = comfy_compat.latent_previewer(clone.load_device, base.latent_format)
        with native_sampling(clone, (rows, *window_shape)) as (loaded, model_options):
            if auto:
                batch = auto_native_window_batch(loaded, clone.load_device, window_shape, len(plan.window_spans))
                plan = plan.with_window_batch_size(batch)
                settings = plan.settings
            denoiser = NativeWanDenoiser(loaded, model_options, ctx.unique_embeds, ctx.latent_indices,
                                         ctx.negative_embeds, guidance_scale=float(guidance))
            collector = PreviewCollector(denoiser, plan.num_latents) if previewer is not None else None
            on_progress = preview_progress(comfy_compat.progress_bar(plan.total_forwards), previewer, collector)
            denoiser = collector or denoiser
            info = _NativeModelInfo(clone.load_device, channels)
            result = generate(info, plan, progress=on_progress, cancel=comfy_compat.cancel_requested, decode=False,
                              denoiser=denoiser)
        # The samplers work in the model's normalized space; a LATENT holds the VAE's raw latents.
        raw = base.process_latent_out(result.latents[None].float())  # [1, C, L, h, w]
        latent_info = {
            "timeline": timeline.to_dict(),
            "window_spans": [list(span) for span in plan.window_spans],
            "settings": {**settings.to_dict(), "solver": plan.solver, "model": "native MODEL"},
        }
        return ({"samples": raw.contiguous(), LATENT_INFO_KEY: latent_info},)


__all__ = ["FrameCapCLIPTextEncode", "FrameCapNativeSampler", "encode_unique_with_clip"]
