"""Deterministic batches: data order, crops, noise and caption dropout depend only on the seed and the sample's
global position, so nothing random is carried from step to step and a resumed run sees what an uninterrupted one would."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import torch

from ..schedule import sample_df_training_sigmas
from .config import TrainConfig


def _derived_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@functools.lru_cache(maxsize=4)
def _epoch_order(num_clips: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_derived_seed(seed, "epoch", epoch))
    return torch.randperm(num_clips, generator=generator)


def clip_for_sample(position: int, num_clips: int, seed: int) -> int:
    """Clip of the ``position``-th sample drawn in a run: epochs walk a seeded permutation of the clips."""
    epoch, within = divmod(position, num_clips)
    return int(_epoch_order(num_clips, seed, epoch)[within])


def draw_batch(cache, config: TrainConfig, step: int, micro: int, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """The micro-batch ``micro`` of optimizer step ``step`` (0-based) on process ``rank`` of ``world``.

    Sample positions are global (``((step * accum + micro) * world + rank) * batch + b``), so data order, crops and
    noise depend only on the seed and the position: a resumed run sees exactly what an uninterrupted one would.

    Returns ``latents [B, C, N, h, w]``, ``context [B, N*text_len, D]``, ``sigmas [B, N]``, ``noise`` like latents,
    and ``draws``: per sample ``{position, clip, offset, reference, level, step_size, unconditional}`` for logging (with
    probability ``config.caption_dropout`` a sample's captions are all the empty caption).
    """
    noise_cfg = config.df_noise()
    empty = cache.empty_caption() if config.caption_dropout > 0 else None
    latents, contexts, sigmas, noises, draws = [], [], [], [], []
    for b in range(config.batch_size):
        position = ((step * config.gradient_accumulation_steps + micro) * world + rank) * config.batch_size + b
        generator = torch.Generator().manual_seed(_derived_seed(config.seed, "sample", position))
        window = cache.window(clip_for_sample(position, len(cache), config.seed), config.window_latents, generator)
        draw = sample_df_training_sigmas(config.window_latents, generator=generator, config=noise_cfg)
        noise = torch.randn(window["latents"].shape, generator=generator, dtype=torch.float32)
        # drawn last, so the data, crops and noise of a seed do not depend on caption_dropout
        unconditional = empty is not None and bool(torch.rand(1, generator=generator) < config.caption_dropout)
        context = empty.repeat(config.window_latents, 1) if unconditional else window["context"].float()
        latents.append(window["latents"].float())
        contexts.append(context)
        sigmas.append(draw.sigmas)
        noises.append(noise)
        draws.append({
            "position": position,
            "clip": window["clip_id"],
            "offset": window["offset"],
            "reference": int(draw.reference),
            "level": float(draw.level),
            "step_size": float(draw.step_size),
            "unconditional": unconditional,
        })
    return {
        "latents": torch.stack(latents),
        "context": torch.stack(contexts),
        "sigmas": torch.stack(sigmas),
        "noise": torch.stack(noises),
        "draws": draws,
    }
