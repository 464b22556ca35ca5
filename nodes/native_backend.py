"""The native backend: FrameCap's ``Denoiser`` over a ComfyUI ``MODEL`` (a ``ModelPatcher`` holding Wan2.1 T2V).

The core samplers (PMWD, sliding window, FIFO, single, Diffusion Forcing matrices) only see the ``Denoiser``
protocol ``(x [K, C, N, h, w], t [K, N], latent_index [K, N]) -> v``. :class:`NativeWanDenoiser` answers it with the
user's own ComfyUI model — the one from Load Diffusion Model, after LoRAs, ModelSamplingSD3 and whatever else the
graph patched — through ComfyUI's own sampling function, so ComfyUI loads and offloads the weights, batches cond
and uncond as memory allows, and runs its cfg / pre-cfg / post-cfg hooks and model wrappers.

Frame-level cross-attention (paper eq. 1) is attached to a **clone** of the model with ComfyUI's public patch
points only (:func:`frame_level_clone`); the user's MODEL is never modified:

- ``transformer_options["optimized_attention_override"]``: ComfyUI routes every attention call of the model
  through it. On cross-attention calls, queries ``[B, F*hw, H*d]`` become ``[B*F, hw, H*d]`` and keys / values
  ``[B, F*T, H*d]`` become ``[B*F, T, H*d]`` (views, no mask), so latent frame ``f`` attends only to caption ``f``
  — the same reshape as :mod:`framecap_core.attention` does for diffusers. Self-attention passes through.
- ``patches_replace["dit"][("double_block", i)]``: a block wrapper per transformer block that tells the override
  which attention call of the block it sees (a Wan T2V block calls self-attention, then cross-attention). Shapes
  alone cannot tell them apart when a latent frame has exactly ``T`` tokens (e.g. 512x256 px: 32x16 = 512 tokens).
  A block patch the graph already had is chained, not replaced.
- a ``DIFFUSION_MODEL`` wrapper that hands the transformer per-frame timesteps ``[B, F]`` when the frames of a
  window sit at different noise levels (Diffusion Forcing, FIFO, the sliding window's clean context). ComfyUI's
  Wan accepts ``[B, F]`` timesteps natively (one modulation per latent frame); its ``apply_model`` takes one sigma
  per batch row, so the row gets the window's largest sigma and the wrapper swaps in the per-frame timesteps.

Sigma and timestep conventions (how the core maps onto the native model):

- FrameCap's core: ``x_s = (1 - s) x0 + s noise`` on a grid already shifted, ``s' = shift s / (1 + (shift - 1) s)``;
  velocity ``v = noise - x0``; model timestep ``t = 1000 s'``.
- ComfyUI's Wan (``ModelType.FLOW``: ``CONST`` + ``ModelSamplingDiscreteFlow``): ``noise_scaling`` is
  ``sigma noise + (1 - sigma) x0``, the model input is ``x`` itself (``calculate_input`` is the identity), the
  model's timestep is ``model_sampling.timestep(sigma) = multiplier * sigma`` (1000 for Wan), and
  ``denoised = x - sigma * model_output``. Its sigmas are already shifted: ``model_sampling.sigma(t)`` applies
  ``time_snr_shift(shift, t / multiplier)`` — the same formula as the core's ``shift_sigmas``.
- So ComfyUI's ``sigma`` IS the core's shifted ``s'``, the model output IS the core's ``v``, and the timestep the
  transformer sees is the same number on both sides. The denoiser converts the core's ``t`` back with
  ``sigma = t / 1000`` (the core's ``NUM_TRAIN_TIMESTEPS``), lets ComfyUI compute ``denoised`` and returns
  ``v = (x - denoised) / sigma`` — exactly the ``to_d`` ComfyUI's own Euler sampler uses.
- The shift is the MODEL's own: :func:`model_flow_shift` reads ``model_sampling.shift`` (Wan2.1's default 8, or
  whatever a ModelSamplingSD3 node in the graph set), and the sampler node builds the core grid with it:
  ``flow_sigmas(steps, shift)`` equals ``model_sampling.sigma`` evaluated on ``linspace(multiplier, 0, steps + 1)``.

Latents: the core samplers work in the model's normalized space (``(z - mean) / std``), which is ComfyUI's
``process_latent_in`` space for Wan21 (scale factor 1): the sampler node converts with the model's own
``process_latent_in`` / ``process_latent_out``.

Nothing here imports ComfyUI at module import time; every ``comfy`` import happens when a function runs inside
ComfyUI (or in a test that put a ComfyUI checkout on ``sys.path``).
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Any

import torch

from framecap_core.attention import stack_frame_captions
from framecap_core.errors import ConfigError
from framecap_core.schedule import NUM_TRAIN_TIMESTEPS

__all__ = [
    "FRAME_TIMESTEPS_KEY",
    "NativeWanDenoiser",
    "frame_level_clone",
    "is_native_model",
    "model_flow_shift",
    "native_sampling",
]

FRAME_TIMESTEPS_KEY = "framecap_frame_timesteps"
"""``transformer_options`` key holding the per-frame model timesteps ``[K, N]`` of the current call."""

_WRAPPER_KEY = "framecap_frame_level"
_LAYOUT_KEY = "framecap_text_len"


def is_native_model(model: Any) -> bool:
    """True for a ComfyUI ``MODEL`` (a ``ModelPatcher``: ``.model`` with ``apply_model`` and a ``clone()``)."""
    return hasattr(model, "clone") and hasattr(model, "model_options") and hasattr(getattr(model, "model", None),
                                                                                   "apply_model")


def _diffusion_model(patcher):
    return patcher.get_model_object("diffusion_model")


def _check_wan_t2v(patcher) -> Any:
    """The patcher's Wan transformer, or a ConfigError when the MODEL is not a Wan2.1 text-to-video model."""
    if not is_native_model(patcher):
        raise ConfigError(
            f"expected a ComfyUI MODEL (from Load Diffusion Model), got {type(patcher).__name__}; for FrameCap's own "
            "loader use the PMWD KSampler instead."
        )
    net = _diffusion_model(patcher)
    blocks = getattr(net, "blocks", None)
    if blocks is None or not all(hasattr(b, "cross_attn") and hasattr(b, "self_attn") for b in blocks):
        raise ConfigError(
            f"the MODEL is a {type(net).__name__}, not a Wan2.1 transformer; load a Wan2.1 T2V file "
            "(e.g. wan2.1_t2v_1.3B_fp16.safetensors) with Load Diffusion Model."
        )
    if getattr(net, "model_type", "t2v") != "t2v" or getattr(net, "img_emb", None) is not None:
        raise ConfigError(
            "frame-level captions support Wan2.1 text-to-video models only; this MODEL is an image-to-video / "
            f"{getattr(net, 'model_type', '?')} model. Load a T2V file (e.g. wan2.1_t2v_1.3B_fp16.safetensors)."
        )
    return net


def model_flow_shift(patcher) -> float:
    """The flow shift of the MODEL's own ``model_sampling`` (a ModelSamplingSD3 node in the graph sets it).

    Raises a ConfigError when the model does not sample as a rectified flow with Wan's 1000 timesteps (the
    conventions the core's grid and timesteps rely on; see the module docstring).
    """
    sampling = patcher.get_model_object("model_sampling")
    shift, multiplier = getattr(sampling, "shift", None), getattr(sampling, "multiplier", None)
    flow = hasattr(sampling, "calculate_denoised") and hasattr(sampling, "noise_scaling")
    if shift is None or multiplier is None or not flow or float(multiplier) != float(NUM_TRAIN_TIMESTEPS):
        raise ConfigError(
            f"the MODEL samples with {type(sampling).__name__} (shift={shift}, multiplier={multiplier}); FrameCap "
            f"needs Wan's rectified-flow sampling with {NUM_TRAIN_TIMESTEPS} timesteps. Use a Wan2.1 T2V model, "
            "optionally patched by ModelSamplingSD3 (not ModelSamplingDiscrete / ModelSamplingFlux)."
        )
    probe = torch.tensor([0.25, 0.5, 0.75])
    from framecap_core.schedule import shift_sigmas

    if not torch.allclose(sampling.sigma(probe * multiplier).float(), shift_sigmas(probe, float(shift)), atol=1e-6):
        raise ConfigError(
            f"the MODEL's model_sampling ({type(sampling).__name__}) does not use the shifted flow grid "
            "shift*s/(1+(shift-1)*s); FrameCap's schedules cannot follow it. Remove the model-sampling patch or use "
            "ModelSamplingSD3."
        )
    return float(shift)


# --------------------------------------------------------------------------------------------------------------------
# Frame-level cross-attention through ComfyUI's patch points
# --------------------------------------------------------------------------------------------------------------------


def _split_frames(tensor: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, F*n, C] -> [B*F, n, C]`` (a view on the frame-major layout)."""
    b, length, c = tensor.shape
    return tensor.reshape(b * frames, length // frames, c)


def frame_level_clone(model, text_len: int):
    """A clone of the ComfyUI ``MODEL`` whose cross-attention is frame-level; ``model`` itself is left untouched.

    Context passed to the clone as ``c_crossattn [B, F*text_len, D]`` (captions stacked frame-major, one per latent
    frame of the batch row) makes latent frame ``f`` attend only to rows ``f*text_len:(f+1)*text_len``; a context
    of exactly ``text_len`` tokens is one caption for all frames and gives ComfyUI's stock result. The clone also
    accepts per-frame timesteps (see :data:`FRAME_TIMESTEPS_KEY`).

    Args:
        model: a ComfyUI ``ModelPatcher`` holding a Wan2.1 T2V transformer.
        text_len: tokens per caption (512 for Wan's UMT5 as ComfyUI pads it).
    """
    net = _check_wan_t2v(model)
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
        raise ConfigError(f"text_len must be a positive integer (tokens per caption), got {text_len!r}.")
    import comfy.patcher_extension as patcher_extension

    clone = model.clone()
    options = clone.model_options.setdefault("transformer_options", {})
    previous_override = options.get("optimized_attention_override")
    replaced = options.get("patches_replace", {}).get("dit", {})
    state = {"call": 0}  # attention calls seen inside the current block: 0 = self-attention, 1 = cross-attention

    def attention_override(func, *args, **kwargs):
        call = state["call"]
        state["call"] += 1
        inner = func if previous_override is None else (lambda *a, **k: previous_override(func, *a, **k))
        if call != 1:  # self-attention (or a call outside a Wan block): untouched
            return inner(*args, **kwargs)
        q, k, v, *rest = args
        if kwargs.get("skip_reshape") or q.ndim != 3:
            raise ConfigError("frame-level cross-attention expects Wan's [B, tokens, heads*dim] attention layout.")
        if k.shape[1] % text_len:
            raise ConfigError(
                f"the cross-attention context has {k.shape[1]} tokens, not a multiple of text_len={text_len}; pass "
                "captions stacked one per latent frame (FrameCap's samplers do this)."
            )
        frames = k.shape[1] // text_len
        if frames == 1:
            return inner(*args, **kwargs)
        if q.shape[1] % frames:
            raise ConfigError(
                f"{frames} captions for {q.shape[1]} video tokens: the tokens do not split into {frames} latent "
                "frames; stack exactly one caption per latent frame of the window."
            )
        out = inner(_split_frames(q, frames), _split_frames(k, frames), _split_frames(v, frames), *rest, **kwargs)
        return out.reshape(q.shape[0], q.shape[1], out.shape[-1])

    def block_patch(index: int):
        chained = replaced.get(("double_block", index))

        def patch(args, extra):
            state["call"] = 0
            try:
                if chained is not None:
                    return chained(args, extra)
                return extra["original_block"](args)
            finally:
                state["call"] = 0

        return patch

    def frame_timesteps_wrapper(executor, x, timestep, context, *args, **kwargs):
        to = kwargs.get("transformer_options") if "transformer_options" in kwargs else (args[2] if len(args) > 2
                                                                                        else {})
        per_frame = (to or {}).get(FRAME_TIMESTEPS_KEY)
        if per_frame is not None:
            per_frame = per_frame.to(timestep.device, timestep.dtype)
            if x.shape[0] % per_frame.shape[0] or per_frame.shape[1] != x.shape[2]:
                raise ConfigError(
                    f"per-frame timesteps {tuple(per_frame.shape)} do not fit the model input {tuple(x.shape)}."
                )
            timestep = per_frame.repeat(x.shape[0] // per_frame.shape[0], 1)
        state["call"] = 0
        return executor(x, timestep, context, *args, **kwargs)

    options["optimized_attention_override"] = attention_override
    options[_LAYOUT_KEY] = text_len
    for index in range(len(net.blocks)):
        clone.set_model_patch_replace(block_patch(index), "dit", "double_block", index)
    clone.add_wrapper_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, _WRAPPER_KEY, frame_timesteps_wrapper)
    return clone


# --------------------------------------------------------------------------------------------------------------------
# Loading the model for a run, and the Denoiser
# --------------------------------------------------------------------------------------------------------------------


def most_windows_that_fit(memory_of_call, free_bytes: float, num_windows: int) -> int:
    """The largest ``k <= num_windows`` whose call ``memory_of_call(k)`` (bytes) fits ``free_bytes``; at least 1.
    ``memory_of_call`` grows with ``k``, so this bisects."""
    low, high = 1, max(1, int(num_windows))
    while low < high:
        mid = (low + high + 1) // 2
        if memory_of_call(mid) <= free_bytes:
            low = mid
        else:
            high = mid - 1
    return low


def auto_native_window_batch(base_model, device, window_shape: tuple[int, ...], num_windows: int) -> int:
    """``window_batch_size`` "auto" on the native path, with the model already loaded: the most windows per call
    that ComfyUI's own estimate of a call (``memory_required`` of a ``[k, *window_shape]`` batch, with the 1.5 margin
    its samplers give it when they batch cond and uncond) says fit the device's free memory."""
    import comfy.model_management

    free = comfy.model_management.get_free_memory(device)
    return most_windows_that_fit(lambda k: 1.5 * base_model.memory_required((k, *window_shape)), free, num_windows)


@contextmanager
def native_sampling(patcher, noise_shape: tuple[int, ...]):
    """Load ``patcher`` for sampling as ComfyUI's own samplers do, and clean up afterwards.

    Registers the patcher's wrappers and callbacks in a copy of its model options, lets ``comfy.model_management``
    load (or partially load, on a small GPU) the weights for a batch of ``noise_shape`` (cond + uncond), and runs
    the patcher's pre-run / cleanup hooks. Yields ``(base_model, model_options)`` for :class:`NativeWanDenoiser`.
    """
    import comfy.model_patcher
    import comfy.sampler_helpers
    import comfy.samplers

    model_options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    comfy.sampler_helpers.prepare_model_patcher(patcher, {}, model_options)
    base_model, _, loaded = comfy.sampler_helpers.prepare_sampling(patcher, tuple(noise_shape), {}, model_options)
    comfy.samplers.cast_to_load_options(model_options, device=patcher.load_device, dtype=patcher.model_dtype())
    try:
        patcher.pre_run()
        yield base_model, model_options
    finally:
        patcher.cleanup()
        comfy.samplers.cast_to_load_options(model_options, device=patcher.offload_device)
        comfy.sampler_helpers.cleanup_models({}, loaded)


class NativeWanDenoiser:
    """``Denoiser`` over a ComfyUI Wan ``MODEL`` with frame-level cross-attention (see :func:`frame_level_clone`).

    Each call builds the frame-major contexts of the ``K`` windows (``[K, N*T, D]`` cond, the negative repeated
    for uncond), wraps them as the model's own conditioning (``extra_conds``), and runs
    ``comfy.samplers.sampling_function`` — ComfyUI's classifier-free guidance with its hooks — at one sigma per
    window; the result ``denoised`` is turned back into the flow velocity ``v = (x - denoised) / sigma``.

    Args:
        base_model: the loaded model (``patcher.model``, from :func:`native_sampling`).
        model_options: the run's model options (from :func:`native_sampling`).
        caption_embeds: ``[U, T, D]`` embeddings of the unique captions.
        caption_index: ``[L]`` unique-caption index of every latent.
        negative_embeds: ``[1, T, D]`` (needed when ``guidance_scale != 1``).
        guidance_scale: classifier-free guidance.
        collapse_shared_caption: when every frame of every window in a call has the same caption, pass it once
            (``[K, T, D]``, exactly what ComfyUI's own samplers pass; cheaper k/v projections). False always stacks
            one caption per frame (tests use it to exercise the frame-level path).

    Attributes:
        calls: denoiser calls made; ``samples``: window rows evaluated (cond and uncond counted separately).
    """

    def __init__(
        self,
        base_model,
        model_options: dict,
        caption_embeds: torch.Tensor,
        caption_index,
        negative_embeds: torch.Tensor | None = None,
        *,
        guidance_scale: float = 5.0,
        collapse_shared_caption: bool = True,
    ):
        if caption_embeds.ndim != 3:
            raise ConfigError(
                f"caption_embeds must be [num_unique_captions, text_len, dim], got {tuple(caption_embeds.shape)}."
            )
        text_len = model_options.get("transformer_options", {}).get(_LAYOUT_KEY)
        if text_len is None:
            raise ConfigError("the MODEL has no frame-level cross-attention; wrap it with frame_level_clone() first.")
        if caption_embeds.shape[1] != text_len:
            raise ConfigError(
                f"caption embeddings have {caption_embeds.shape[1]} tokens, the frame-level attention expects "
                f"{text_len}; encode the captions and clone the model with the same text length."
            )
        if float(guidance_scale) != 1.0 and negative_embeds is None:
            raise ConfigError(f"guidance_scale={guidance_scale} needs the negative prompt's embedding.")
        self.model = base_model
        self.model_options = model_options
        self.caption_embeds = caption_embeds
        self.caption_index = torch.as_tensor(caption_index, dtype=torch.int64, device=caption_embeds.device)
        if negative_embeds is not None:
            negative_embeds = negative_embeds.reshape(-1, *negative_embeds.shape[-2:])[:1]
            if negative_embeds.shape[1:] != caption_embeds.shape[1:]:
                raise ConfigError(
                    f"negative embedding {tuple(negative_embeds.shape[1:])} does not match the captions' "
                    f"{tuple(caption_embeds.shape[1:])}; encode both with the same CLIP."
                )
        self.negative_embeds = negative_embeds
        self.guidance_scale = float(guidance_scale)
        self.collapse_shared_caption = collapse_shared_caption
        self.text_len = int(text_len)
        self.calls = 0
        self.samples = 0
        self._uuids = (uuid.uuid4(), uuid.uuid4())

    @property
    def num_latents(self) -> int:
        return int(self.caption_index.numel())

    def _contexts(self, latent_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cond ``[K, N*T, D]`` (or ``[K, T, D]`` when one caption covers the call) and uncond contexts."""
        if int(latent_index.min()) < 0 or int(latent_index.max()) >= self.num_latents:
            raise ConfigError(
                f"latent indices {int(latent_index.min())}..{int(latent_index.max())} are outside the video's {self.num_latents} "
                "latents."
            )
        index = self.caption_index[latent_index.to(self.caption_index.device)]
        k, n = index.shape
        if self.collapse_shared_caption and bool((index == index.flatten()[0]).all()):
            cond = self.caption_embeds[index[:, 0]]
            uncond = None if self.negative_embeds is None else self.negative_embeds.expand(k, -1, -1)
            return cond, uncond
        cond = stack_frame_captions(self.caption_embeds, index)
        uncond = None
        if self.negative_embeds is not None:
            neg = self.negative_embeds
            uncond = neg.expand(k * n, *neg.shape[1:]).reshape(k, n * neg.shape[1], neg.shape[2])
        return cond, uncond

    def _conds(self, context: torch.Tensor, x: torch.Tensor, which: int, prompt_type: str) -> list[dict]:
        import comfy.samplers

        cond = [{"cross_attn": context, "model_conds": {}, "uuid": self._uuids[which]}]
        return comfy.samplers.encode_model_conds(self.model.extra_conds, cond, x, x.device, prompt_type)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, latent_index: torch.Tensor) -> torch.Tensor:
        """``x [K, C, N, h, w]`` (normalized latents), ``t [K, N]`` in [0, 1000], ``latent_index [K, N]`` -> ``v``
        float32 ``[K, C, N, h, w]``, guided."""
        import comfy.samplers

        if x.ndim != 5 or t.shape != x.shape[:1] + x.shape[2:3] or latent_index.shape != t.shape:
            raise ConfigError(
                f"NativeWanDenoiser expects x [K, C, N, h, w], t [K, N] and latent_index [K, N]; got {tuple(x.shape)}, "
                f"{tuple(t.shape)}, {tuple(latent_index.shape)}."
            )
        k = x.shape[0]
        xin = x.float()
        sigma_frames = t.to(xin.device, torch.float32) / NUM_TRAIN_TIMESTEPS  # the core's t = 1000 * sigma
        sigma = sigma_frames.amax(dim=1)
        # A row whose frames are all clean still needs a nonzero sigma to invert denoised -> v; its timestep is
        # replaced per frame below, so the value only scales the model output in and out.
        sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        model_options = self.model_options
        if not bool((sigma_frames == sigma_frames[:, :1]).all()):
            sampling = self.model.model_sampling
            model_options = {**model_options, "transformer_options": {
                **model_options.get("transformer_options", {}), FRAME_TIMESTEPS_KEY: sampling.timestep(sigma_frames)}}
        cond_ctx, uncond_ctx = self._contexts(latent_index)
        device = xin.device
        cond = self._conds(cond_ctx.to(device), xin, 0, "positive")
        uncond = None if uncond_ctx is None else self._conds(uncond_ctx.to(device), xin, 1, "negative")
        with torch.no_grad():
            denoised = comfy.samplers.sampling_function(self.model, xin, sigma, uncond, cond, self.guidance_scale,
                                                        model_options=model_options)
        self.calls += 1
        self.samples += k * (1 if self.guidance_scale == 1.0 else 2)
        v = (xin - denoised.float()) / sigma.view(k, 1, 1, 1, 1)
        return v.to(x.device)
