"""The diffusers Wan backend: a :class:`~framecap_core.sampling.Denoiser` over ``WanTransformer3DModel``, and VAE
decoding of long latent sequences.

:class:`WanDenoiser` turns one batched sampler request — ``K`` windows of ``N`` latents, per-frame timesteps, the
absolute index of every latent — into ONE transformer forward:

- captions: every latent frame gets the caption of its timeline position (``caption_index[latent_index]``); the window's
  context is stacked frame-major, ``[K, N*text_len, D]``, for the frame-level cross-attention
  (:mod:`framecap_core.attention`), built from the unique caption embeddings so each caption is encoded once;
- classifier-free guidance: cond and uncond go in one batch ``[2K, ...]`` (the negative prompt's embedding repeated
  for every frame) and ``v = v_u + g (v_c - v_u)``; with ``g == 1`` the uncond half is skipped;
- timesteps: when every frame of each window shares ``t`` (synchronous sampling, PMWD without Diffusion Forcing)
  the transformer gets the scalar path, ``timestep [2K]``; otherwise the per-token path, ``timestep [2K, N*hw]``
  with ``hw`` the tokens of one latent frame. The per-token path builds a ``[B, tokens, 6, dim]`` modulation tensor
  (about 1.2 GB per sample at 480p), so it is only used when needed;
- dtype / device: inputs are cast to the transformer's dtype and device; the velocity comes back float32 on the
  input's device.

:func:`decode_latents` maps normalized latents ``[C, L, h, w]`` to uint8 frames ``[1 + 4 (L - 1), H, W, 3]``. The
Wan VAE decodes causally one latent at a time with a feature cache; :func:`decode_latents` drives that loop itself
and converts each latent's frames to uint8 as it goes, so a 30 s video never holds its float32 pixels at once
(2.3 GB at 480p) — the result is identical to one ``vae.decode`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .attention import frame_level_text_len, stack_frame_captions
from .errors import ConfigError, NumericalError

__all__ = ["WanDenoiser", "decode_latents", "denormalize_latents", "iter_decoded_latents", "normalize_latents",
           "to_uint8_frames", "token_timesteps"]


def _param(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


def token_timesteps(t: torch.Tensor, tokens_per_frame: int, *, per_token: bool = False) -> torch.Tensor:
    """The ``timestep`` argument of Wan's transformer for per-frame timesteps ``t [B, N]`` (in [0, 1000]).

    Returns ``[B]`` when every frame of each sample shares one timestep (the stock, cheaper path) unless
    ``per_token``, else ``[B, N * tokens_per_frame]``: each frame's timestep repeated over its ``h*w`` tokens
    (frame-major, as Wan orders its tokens), which diffusers' Wan transformer turns into per-token modulation.
    Sampling and training both feed the transformer through this.
    """
    if not per_token and bool((t == t[:, :1]).all()):
        return t[:, 0]
    return t.repeat_interleave(tokens_per_frame, dim=1)


class WanDenoiser:
    """``Denoiser`` over a diffusers ``WanTransformer3DModel`` with frame-level cross-attention installed.

    Args:
        transformer: the transformer (frame-level attention installed; see
            :func:`~framecap_core.attention.install_frame_level_attention`).
        caption_embeds: ``[U, text_len, D]`` embeddings of the ``U`` unique captions.
        caption_index: ``[L]`` int, the unique-caption index of every latent of the video
            (``Timeline.latent_unique_indices()``).
        negative_embeds: ``[text_len, D]`` (or ``[1, text_len, D]``) embedding of the negative prompt; required
            when ``guidance_scale != 1``.
        guidance_scale: classifier-free guidance ``g`` (1 = no guidance, one half the compute).
        force_per_token: always use the per-token timestep path (for tests and benchmarks).

    Attributes:
        calls: number of transformer forwards made; ``samples``: total batch rows evaluated (2 per window with CFG).
    """

    def __init__(
        self,
        transformer,
        caption_embeds: torch.Tensor,
        caption_index: torch.Tensor | list[int],
        negative_embeds: torch.Tensor | None = None,
        *,
        guidance_scale: float = 5.0,
        force_per_token: bool = False,
    ):
        if caption_embeds.ndim != 3:
            raise ConfigError(
                f"caption_embeds must be [num_unique_captions, text_len, dim], got {tuple(caption_embeds.shape)}."
            )
        text_len = frame_level_text_len(transformer)
        if text_len is None:
            raise ConfigError(
                "The transformer has no frame-level cross-attention; load it with load_wan(frame_level=True) or call "
                "install_frame_level_attention(transformer, text_len) first."
            )
        if caption_embeds.shape[1] != text_len:
            raise ConfigError(
                f"caption embeddings have {caption_embeds.shape[1]} tokens but the attention expects text_len="
                f"{text_len}; encode captions with the model's text_len."
            )
        if float(guidance_scale) != 1.0 and negative_embeds is None:
            raise ConfigError(
                f"guidance_scale={guidance_scale} needs the negative prompt's embedding (negative_embeds); encode the "
                "negative prompt (possibly empty) or use guidance_scale=1."
            )
        param = _param(transformer)
        self.transformer = transformer
        self.dtype, self.device = param.dtype, param.device
        self.caption_embeds = caption_embeds.to(self.device, self.dtype)
        self.caption_index = torch.as_tensor(caption_index, dtype=torch.int64, device=self.device)
        if self.caption_index.ndim != 1:
            raise ConfigError(f"caption_index must be [num_latents], got {tuple(self.caption_index.shape)}.")
        if negative_embeds is not None:
            negative_embeds = negative_embeds.reshape(-1, *negative_embeds.shape[-2:])[:1]
            if negative_embeds.shape[1:] != caption_embeds.shape[1:]:
                raise ConfigError(
                    f"negative_embeds {tuple(negative_embeds.shape[1:])} do not match caption embeddings "
                    f"{tuple(caption_embeds.shape[1:])}; encode both with the same text encoder."
                )
            negative_embeds = negative_embeds.to(self.device, self.dtype)
        self.negative_embeds = negative_embeds
        self.guidance_scale = float(guidance_scale)
        self.force_per_token = force_per_token
        self.text_len = text_len
        self.calls = 0
        self.samples = 0

    @property
    def num_latents(self) -> int:
        return int(self.caption_index.numel())

    def context(self, latent_index: torch.Tensor) -> torch.Tensor:
        """Cond context ``[K, N*text_len, D]`` of windows whose latents are ``latent_index [K, N]``."""
        latent_index = latent_index.to(self.device, torch.int64)
        if int(latent_index.min()) < 0 or int(latent_index.max()) >= self.num_latents:
            raise ConfigError(
                f"latent indices {int(latent_index.min())}..{int(latent_index.max())} are outside the video's {self.num_latents} "
                "latents."
            )
        return stack_frame_captions(self.caption_embeds, self.caption_index[latent_index])

    def uncond_context(self, num_windows: int, window_latents: int) -> torch.Tensor:
        """Uncond context ``[K, N*text_len, D]``: the negative prompt's embedding repeated for every frame."""
        neg = self.negative_embeds
        return neg.expand(num_windows * window_latents, *neg.shape[1:]).reshape(
            num_windows, window_latents * neg.shape[1], -1)

    def timesteps(self, t: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """Transformer timestep for ``t [K, N]``: ``[K]`` when each window's frames share t, else ``[K, N*hw]``."""
        return token_timesteps(t, tokens_per_frame, per_token=self.force_per_token)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, latent_index: torch.Tensor) -> torch.Tensor:
        """``x [K, C, N, h, w]`` (normalized latents), ``t [K, N]`` in [0, 1000], ``latent_index [K, N]`` (absolute
        latent index of each position) -> ``v`` float32
        ``[K, C, N, h, w]``, guided."""
        if x.ndim != 5 or t.shape != x.shape[:1] + x.shape[2:3] or latent_index.shape != t.shape:
            raise ConfigError(
                f"WanDenoiser expects x [K, C, N, h, w], t [K, N] and latent_index [K, N]; got {tuple(x.shape)}, "
                f"{tuple(t.shape)}, {tuple(latent_index.shape)}."
            )
        _, _, n, h, w = x.shape
        p_t, p_h, p_w = self.transformer.config.patch_size
        if h % p_h or w % p_w or n % p_t:
            raise ConfigError(f"latent size {n}x{h}x{w} is not divisible by the patch size {(p_t, p_h, p_w)}.")
        tokens_per_frame = (h // p_h) * (w // p_w)
        tin = self.timesteps(t.to(self.device, torch.float32), tokens_per_frame)
        return self.predict(x, tin, self.context(latent_index))

    def predict(self, x: torch.Tensor, tin: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """The checked-input part of ``__call__`` (what the memory planner traces): ``x [K, C, N, h, w]``, transformer
        timestep ``tin`` (``[K]`` or ``[K, N*hw]``), cond context ``ctx [K, N*text_len, D]`` -> guided ``v``."""
        k, n = x.shape[0], x.shape[2]
        xin = x.to(self.device, self.dtype)
        guided = self.guidance_scale != 1.0
        if guided:
            xin = torch.cat([xin, xin])
            tin = torch.cat([tin, tin])
            ctx = torch.cat([ctx, self.uncond_context(k, n)])
        with torch.no_grad():
            out = self.transformer(hidden_states=xin, timestep=tin, encoder_hidden_states=ctx, return_dict=False)[0]
        self.calls += 1
        self.samples += xin.shape[0]
        out = out.float()
        if guided:
            cond, uncond = out[:k], out[k:]
            out = uncond + self.guidance_scale * (cond - uncond)
        return out.to(x.device)


# --------------------------------------------------------------------------------------------------------------------
# Latent normalization and decoding
# --------------------------------------------------------------------------------------------------------------------


def _stats(mean: torch.Tensor, std: torch.Tensor, like: torch.Tensor, channel_dim: int):
    shape = [1] * like.ndim
    shape[channel_dim] = -1
    return (torch.as_tensor(mean, dtype=torch.float32).to(like.device).view(shape),
            torch.as_tensor(std, dtype=torch.float32).to(like.device).view(shape))


def normalize_latents(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Raw VAE latents -> the samplers' space: ``(z - mean) / std`` per channel (float32)."""
    m, s = _stats(mean, std, z, channel_dim)
    return (z.float() - m) / s


def denormalize_latents(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """The samplers' space -> raw VAE latents: ``x * std + mean`` per channel (float32)."""
    m, s = _stats(mean, std, x, channel_dim)
    return x.float() * s + m


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """``[3, T, H, W]`` in [-1, 1] -> ``[T, H, W, 3]`` uint8 on the same device (as diffusers' video processor:
    (x + 1) / 2)."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    return to_uint8_frames(video).cpu().numpy()


def _can_stream(vae) -> bool:
    return all(hasattr(vae, a) for a in ("clear_cache", "post_quant_conv", "decoder")) and not (
        getattr(vae, "use_tiling", False) or getattr(getattr(vae, "config", None), "patch_size", None)
    )


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"`` (at most a few ranges)."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans[:6])
    return text + (", ..." if len(spans) > 6 else "")


def decode_latents(
    vae,
    latents: torch.Tensor,
    latents_mean: torch.Tensor,
    latents_std: torch.Tensor,
    *,
    stream: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Decode normalized latents ``[C, L, h, w]`` into frames ``[1 + 4 (L - 1), 8 h, 8 w, 3]`` uint8.

    ``stream=True`` runs the Wan VAE's causal per-latent loop here (the same cache, the same order, so the frames
    equal one ``vae.decode`` call) and converts each latent's 1 or 4 frames to uint8 right away; ``False`` makes one
    ``vae.decode`` call (also used when the VAE is tiled or patched). ``progress(done, total)`` is called per latent.
    """
    if latents.ndim != 4:
        raise ConfigError(f"latents must be one video [C, L, h, w], got {tuple(latents.shape)}.")
    bad = ~torch.isfinite(latents)
    if bool(bad.any()):  # would decode into black or garbage frames without a word
        frames_hit = bad.flatten(2).any(dim=2).any(dim=0).nonzero().flatten().tolist()  # [C, L, hw] -> [L]
        raise NumericalError(
            f"The latents to decode hold NaN or inf ({int(bad.sum())} values, latent frames "
            f"{_ranges(frames_hit)}); they come from a run that went non-finite: sample again in float32 or bfloat16 "
            f"instead of float16, with a lower guidance scale, or check the model weights."
        )
    param = _param(vae)
    z = denormalize_latents(latents, latents_mean, latents_std).to(param.device, param.dtype)[None]  # [1, C, L, h, w]
    num = z.shape[2]
    if not (stream and _can_stream(vae)):
        with torch.no_grad():
            video = vae.decode(z, return_dict=False)[0][0]
        if progress:
            progress(num, num)
        return _to_uint8(video)
    chunks: list[np.ndarray] = []
    with torch.no_grad():
        for i, out in enumerate(iter_decoded_latents(vae, z)):
            chunks.append(_to_uint8(out[0]))
            if progress:
                progress(i + 1, num)
    return np.concatenate(chunks, axis=0)


def iter_decoded_latents(vae, z: torch.Tensor):
    """The Wan VAE's causal decode, one latent at a time: raw latents ``z [1, C, L, h, w]`` -> yields ``[1, 3, T_i,
    H, W]`` (T_0 = 1, then 4) in [-1, 1], exactly the frames of one ``vae.decode`` call (same cache, same order)."""
    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        for i in range(z.shape[2]):
            vae._conv_idx = [0]
            kwargs: dict[str, Any] = {"first_chunk": True} if i == 0 else {}
            yield vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, **kwargs)
    finally:
        vae.clear_cache()
