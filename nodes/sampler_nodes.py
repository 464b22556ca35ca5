"""Sampling nodes: the Diffusion Forcing schedule, the PMWD sampler (-> ComfyUI LATENT) and the VAE decode."""

from __future__ import annotations

from dataclasses import dataclass

from framecap_core.choices import FUSIONS, METHODS
from framecap_core.choices import SOLVERS as SOLVER_CHOICES
from framecap_core.errors import ConfigError

from . import comfy_compat
from .model_nodes import CONDITIONING, MODEL, FrameLevelConditioning, _check_model
from .previews import PreviewCollector, preview_progress

CATEGORY = "FrameCap"
SCHEDULE = "FRAMECAP_SCHEDULE"
LATENT_INFO_KEY = "framecap"  # extra key of the LATENT dict: timeline, windows and settings for the storyboard
MAX_SEED = 0x7FFFFFFFFFFFFFFF  # FIFO seeds a second generator with seed + 1; stay clear of 2**64


@dataclass(frozen=True)
class DiffusionForcingSchedule:
    """Sampler steps and the Diffusion Forcing timestep schedule (``GenerationSettings`` fields of the same names)."""

    steps: int
    shift: float
    solver: str
    df_step: int
    causal_block_size: int


class FrameCapDFScheduler:
    """Steps, shift, solver and the Diffusion Forcing schedule."""

    DESCRIPTION = (
        "The denoising schedule: number of steps, flow-matching shift and solver, and the Diffusion Forcing step "
        "size. df_step 0 denoises every frame in sync (plain sampling); df_step > 0 lets later frames lag earlier "
        "ones by df_step steps per causal block (autoregressive-like; needs a Diffusion Forcing fine-tune to shine). "
        "solver auto = UniPC when all frames share the timestep, else Euler."
    )
    CATEGORY = CATEGORY
    FUNCTION = "schedule"
    RETURN_TYPES = (SCHEDULE,)
    RETURN_NAMES = ("schedule",)
    OUTPUT_TOOLTIPS = ("The schedule for the PMWD KSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        from framecap_core.schedule import DEFAULT_SHIFT

        return {
            "required": {
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000,
                                  "tooltip": "Denoising steps (Wan's default is 50; 30 is close). FIFO uses the "
                                             "window length in latents instead."}),
                "shift": ("FLOAT", {"default": float(DEFAULT_SHIFT), "min": 0.01, "max": 100.0, "step": 0.1,
                                    "tooltip": "Flow-matching sigma shift: higher spends more steps at high noise "
                                               "(Wan uses 3 to 8 depending on resolution)."}),
                "solver": (list(SOLVER_CHOICES), {"default": "auto",
                           "tooltip": "auto: UniPC when every frame shares the timestep, else Euler. unipc cannot "
                                      "run with df_step > 0 or FIFO."}),
                "df_step": ("INT", {"default": 0, "min": 0, "max": 1000,
                                    "tooltip": "Diffusion Forcing step size: how many steps each causal block lags "
                                               "the previous one. 0 = synchronous."}),
                "causal_block_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                              "tooltip": "Latent frames per Diffusion Forcing block (1 = every "
                                                         "latent frame its own block)."}),
            }
        }

    def schedule(self, steps, shift, solver, df_step, causal_block_size):
        return (DiffusionForcingSchedule(int(steps), float(shift), solver, int(df_step), int(causal_block_size)),)


class FrameCapPMWDSampler:
    """Parallel Multi-Window Denoising (and the sliding window / FIFO / single-window baselines)."""

    DESCRIPTION = (
        "Generates the video latents of the whole timeline. pmwd (Parallel Multi-Window Denoising): overlapping "
        "windows of the training length are all denoised at every step and their predictions fused where they "
        "overlap, so long videos stay consistent. sliding: the sequential sliding-window baseline. fifo: "
        "FIFO-Diffusion. single: the whole video as one window (stock Wan). Window and overlap are in pixel frames "
        "(81 = 21 latents, Wan's training length). Outputs a ComfyUI LATENT (raw Wan VAE latents [1, C, T, H/8, "
        "W/8], C = 16 for Wan2.1) that native nodes accept."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Raw Wan VAE latents [1, C, T, H/8, W/8] (plus the run's timeline and windows).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model from the Frame-Level Wan Loader."}),
                "conditioning": (CONDITIONING, {"tooltip": "Encoded captions from Frame-Level Text Encode."}),
                "schedule": (SCHEDULE, {"tooltip": "Steps and schedule from the Diffusion Forcing Scheduler."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16,
                                  "tooltip": "Video width in pixels, a multiple of 16 (Wan2.1 1.3B: 832)."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16,
                                   "tooltip": "Video height in pixels, a multiple of 16 (Wan2.1 1.3B: 480)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Noise seed: the same seed gives the same video on any device."}),
                "guidance": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                       "tooltip": "Classifier-free guidance scale (1 = off, half the compute)."}),
                "method": (list(METHODS), {"default": "pmwd",
                           "tooltip": "pmwd (parallel windows, fused), sliding (sequential windows), fifo "
                                      "(FIFO-Diffusion) or single (one window over the whole video)."}),
                # step 1: the frontend rounds a typed value to the step; a value that is not 4k+1 / a multiple of
                # 4 is rejected by the sampler with a message naming the nearest valid ones, never changed silently.
                "window": ("INT", {"default": 81, "min": 1, "max": 4001, "step": 1,
                                   "tooltip": "Window length in PIXEL FRAMES, of the form 4k+1 (81 frames = 21 latents "
                                              "= Wan's training length). Other values are rejected with the nearest "
                                              "valid ones."}),
                "overlap": ("INT", {"default": 28, "min": 0, "max": 4000, "step": 1,
                                    "tooltip": "Overlap in PIXEL FRAMES that consecutive windows share, a multiple of "
                                               "4 (4 frames = 1 latent; 28 = 7 latents). Other values (e.g. 33) are "
                                               "rejected with the nearest valid ones (32 or 36). pmwd: the fused "
                                               "overlap; sliding: the context kept."}),
                "fusion": (list(FUSIONS), {"default": "flat",
                           "tooltip": "How pmwd averages overlapping predictions: flat (the paper), pyramid "
                                      "(window centres weigh more), overlap-linear (cross-fade)."}),
                "window_batch_size": ("INT", {"default": 0, "min": 0, "max": 256,
                                              "tooltip": "pmwd windows per transformer call; 0 = auto: as many as "
                                                         "fit the device's free memory (all windows of a step when "
                                                         "they fit: fastest)."}),
            }
        }

    def sample(self, model, conditioning, schedule, width, height, seed, guidance, method, window, overlap, fusion,
               window_batch_size):
        from framecap_core.backend import WanDenoiser, denormalize_latents
        from framecap_core.pipeline import GenerationSettings, generate, plan_generation
        from framecap_core.placement import running

        _check_model(model)
        if not isinstance(conditioning, FrameLevelConditioning):
            raise ConfigError("conditioning must come from Frame-Level Text Encode (FRAMECAP_CONDITIONING).")
        if not isinstance(schedule, DiffusionForcingSchedule):
            raise ConfigError("schedule must come from the Diffusion Forcing Scheduler (FRAMECAP_SCHEDULE).")
        ctx, timeline = conditioning.context, conditioning.timeline
        if int(ctx.unique_embeds.shape[-1]) != model.caption_dim:
            raise ConfigError(
                f"The conditioning was encoded by a text encoder of width {int(ctx.unique_embeds.shape[-1])}, but "
                f"this model expects {model.caption_dim}; encode the timeline with the same model's text encoder."
            )
        settings = GenerationSettings(
            method=method, window=int(window), overlap=int(overlap), fusion=fusion, df_step=schedule.df_step,
            causal_block_size=schedule.causal_block_size, steps=schedule.steps, guidance=float(guidance),
            shift=schedule.shift, solver=schedule.solver, seed=int(seed), width=int(width), height=int(height),
            fps=timeline.fps, window_batch_size=int(window_batch_size) or "auto", negative=conditioning.negative,
        )
        # validates (ConfigError naming the fix); the plan then drives the run below, planned once
        plan = plan_generation(timeline, settings, vae_scale=model.vae_scale, patch_size=model.patch_size)
        with running(model, "transformer") as transformer:  # on the device only while sampling
            denoiser = WanDenoiser(transformer, ctx.unique_embeds, ctx.latent_indices, ctx.negative_embeds,
                                   guidance_scale=float(guidance))
            previewer = comfy_compat.latent_previewer(model.device, latent_channels=model.latent_channels)
            if previewer is not None:
                denoiser = PreviewCollector(denoiser, plan.num_latents)
            # after every window chunk and every step, with a preview at every step
            on_progress = preview_progress(comfy_compat.progress_bar(plan.total_forwards), previewer,
                                           denoiser if previewer is not None else None)
            result = generate(model, plan, progress=on_progress, cancel=comfy_compat.cancel_requested,
                              decode=False, denoiser=denoiser)
        # The samplers work in the normalized space; a ComfyUI LATENT holds raw VAE latents.
        raw = denormalize_latents(result.latents, model.latents_mean, model.latents_std)[None]  # [1, C, L, h, w]
        info = {
            "timeline": timeline.to_dict(),
            "window_spans": [list(span) for span in plan.window_spans],
            "settings": {**settings.to_dict(), "solver": plan.solver, "model": model.name},
        }
        return ({"samples": raw.contiguous(), LATENT_INFO_KEY: info},)


class FrameCapDecode:
    """Decode latents to frames with the model's Wan VAE."""

    DESCRIPTION = (
        "Decodes a LATENT (raw Wan VAE latents [B, C, T, H/8, W/8], C = 16 for Wan2.1, from the PMWD KSampler or "
        "any native Wan sampler) with the model's Wan VAE into IMAGE frames [T', H, W, 3] in 0..1 (T' = 4 (T - 1) + 1), which "
        "native nodes such as CreateVideo / SaveVideo accept. Several videos in a batch are concatenated in time."
    )
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Video frames [T, H, W, 3], float in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model whose VAE decodes (from the Frame-Level Wan Loader)."}),
                "latent": ("LATENT", {"tooltip": "Raw Wan VAE latents [B, C, T, H/8, W/8] (C = 16 for Wan2.1)."}),
            }
        }

    def decode(self, model, latent):
        import numpy as np
        import torch

        from framecap_core.backend import decode_latents
        from framecap_core.placement import running

        _check_model(model)
        if model.vae is None:
            raise ConfigError("This model was loaded without its VAE; load it with the Frame-Level Wan Loader.")
        samples = latent.get("samples") if isinstance(latent, dict) else None
        channels = model.latent_channels
        if samples is None or samples.ndim != 5 or samples.shape[1] != channels:
            shape = None if samples is None else tuple(samples.shape)
            raise ConfigError(
                f"expected a Wan video LATENT with samples [B, {channels}, T, H/8, W/8], got {shape}; image latents "
                "(4 dims) and other models' latents cannot be decoded by the Wan VAE."
            )
        # decode_latents takes normalized latents; mean 0 / std 1 makes its conversion the identity on raw ones.
        zeros, ones = torch.zeros(channels), torch.ones(channels)
        bar = comfy_compat.progress_bar(samples.shape[0] * samples.shape[2])
        videos = []

        def on_latent(done: int, total: int) -> None:
            comfy_compat.check_interrupt()
            bar.update(1)

        with running(model, "vae") as vae:  # on the device only while decoding
            for item in samples:
                videos.append(decode_latents(vae, item.float(), zeros, ones, progress=on_latent))
        frames = torch.from_numpy(videos[0] if len(videos) == 1 else np.concatenate(videos))
        return (frames.float().div_(255.0),)


def latent_info(latent) -> dict | None:
    """The run description the PMWD KSampler stores in its LATENT (None for other latents)."""
    if isinstance(latent, dict) and isinstance(latent.get(LATENT_INFO_KEY), dict):
        return latent[LATENT_INFO_KEY]
    return None


def settings_legend(info: dict) -> dict:
    keys = ("model", "method", "solver", "steps", "guidance", "shift", "seed", "window", "overlap", "fusion",
            "df_step", "width", "height")
    settings = info.get("settings", {})
    return {k: settings[k] for k in keys if k in settings}


__all__ = [
    "DiffusionForcingSchedule",
    "FrameCapDFScheduler",
    "FrameCapDecode",
    "FrameCapPMWDSampler",
    "latent_info",
    "settings_legend",
]
