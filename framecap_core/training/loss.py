"""The Diffusion Forcing flow-matching loss: per-frame sigmas ``s [B, N]``, ``x_s = (1 - s) x0 + s noise``, the
model predicts ``v = noise - x0`` at per-token timesteps ``1000 s``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backend import token_timesteps
from ..schedule import NUM_TRAIN_TIMESTEPS


def frame_timesteps(sigmas: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Transformer timesteps for per-frame sigmas ``[B, N]``: ``1000 * s`` through
    :func:`framecap_core.backend.token_timesteps`, the rule sampling uses too (``[B]`` when every frame of a sample
    shares one sigma, else ``[B, N * tokens_per_frame]``)."""
    return token_timesteps(sigmas * float(NUM_TRAIN_TIMESTEPS), tokens_per_frame)


def df_flow_matching_loss(
    transformer,
    x0: torch.Tensor,
    context: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    *,
    patch_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Flow-matching loss with per-frame noise levels.

    Args:
        x0: ``[B, C, N, h, w]`` clean normalized latents.
        context: ``[B, N*text_len, D]`` frame-major captions (frame-level attention installed), or ``[B, text_len, D]``.
        sigmas: ``[B, N]`` per-frame sigma in ``[0, 1]`` (Diffusion Forcing draw).
        noise: ``[B, C, N, h, w]`` standard normal.
        patch_size: the transformer's ``(p_t, p_h, p_w)``; default ``transformer.config.patch_size`` (pass it when
            the transformer is wrapped, e.g. by DDP).

    Returns:
        scalar ``mean((model(x_s, 1000 s) - (noise - x0))^2)`` with ``x_s = (1 - s) x0 + s noise``, in float32.
    """
    s = sigmas[:, None, :, None, None].to(x0.dtype)
    x_t = (1.0 - s) * x0 + s * noise
    target = noise - x0
    _, p_h, p_w = patch_size if patch_size is not None else transformer.config.patch_size
    timestep = frame_timesteps(sigmas, (x0.shape[-2] // p_h) * (x0.shape[-1] // p_w))
    pred = transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), target.float())
