"""Stage 2, filling the latent cache from a manifest: each clip's training frames encoded by the Wan VAE into
normalized latents, its unique captions encoded once by the text encoder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..grid import VAE_SCALE, size_multiple
from .cache import CACHE_INDEX, EMPTY_CAPTION_FILE, CacheWriter, cached_clip_ids
from .captions import clip_latent_captions
from .manifest import read_manifest
from .video_io import read_clip_frames


def encode_video_latents(vae, frames: np.ndarray, *, device: Any = "cpu", dtype: Any = None):
    """Normalized Wan latents of one clip: ``[F, H, W, 3]`` uint8 -> ``[C, L, H/8, W/8]`` float32,
    ``(vae.encode(x).latent_dist.mode() - latents_mean) / latents_std`` (the space the transformer works in)."""
    import torch

    from ..backend import normalize_latents

    dtype = dtype or next(vae.parameters()).dtype
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W]
    video = (video.float() / 127.5 - 1.0).to(device=device, dtype=dtype)
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode().float().cpu()
    return normalize_latents(z[0], vae.config.latents_mean, vae.config.latents_std, channel_dim=0).contiguous()


@dataclass
class CacheSummary:
    clips: int = 0
    cached: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


def build_latent_cache(
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    vae,
    encode_text: Callable[[list[str]], Any],
    height: int,
    width: int,
    shard_size: int = 64,
    device: Any = "cpu",
    dtype: Any = None,
    shard: tuple[int, int] = (0, 1),
    text_dtype: str = "bfloat16",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CacheSummary:
    """Encode every clip of ``manifest`` into safetensors shards under ``cache_dir``; resumable.

    Per clip ``<id>`` the shard holds ``<id>/latents [C, L, h, w]`` (normalized, float32), ``<id>/text
    [U, stored, text_dim]`` (the clip's unique captions up to their longest token count, bf16 by default; read
    back zero-padded to ``text_len``) and ``<id>/caption_index [L]`` (int64).
    ``index.json`` maps each clip to its shard and records the settings; clips already indexed are skipped.
    Unreadable clips are logged, counted and skipped.

    Args:
        encode_text: ``captions [U] -> [U, text_len, text_dim]`` tensor (e.g. ``framecap_core.text`` bound to a
            text encoder).
        height, width: training resolution; multiples of 16 (VAE stride 8 times patch 2).
        shard: ``(i, n)``: only clips whose position in the manifest is ``i`` modulo ``n`` (for several machines;
            each writes its own shards and ``index.<i>-of-<n>.json``; :class:`LatentCache` reads them all).
    """
    import torch
    from tqdm.auto import tqdm

    multiple = size_multiple()  # Wan2.1's VAE stride x patch (the cache is for Wan2.1-shaped models)
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise DatasetError(f"height and width must be multiples of {multiple} (VAE stride {VAE_SCALE} x patch 2); got "
                           f"{height}x{width}.")
    manifest = Path(manifest)
    index_no, count = shard
    if not (0 <= index_no < count):
        raise DatasetError(f"shard must be i/n with 0 <= i < n, got {index_no}/{count}.")
    records = [r for i, r in enumerate(read_manifest(manifest)) if i % count == index_no]
    writer = CacheWriter(
        cache_dir,
        settings={"height": height, "width": width, "manifest": str(manifest.resolve())},
        shard_size=shard_size,
        index_name=CACHE_INDEX if count == 1 else f"index.{index_no}-of-{count}.json",
        prefix="shard" if count == 1 else f"shard-{index_no}of{count}",
        text_dtype=text_dtype,
    )
    summary = CacheSummary(clips=len(records))
    cached = writer.done | cached_clip_ids(cache_dir)  # clips in any index (e.g. of an earlier sharded build)
    todo = [r for r in records if r.clip_id not in cached]
    summary.skipped = len(records) - len(todo)
    with writer:
        for record in tqdm(todo, desc="caching latents", disable=not progress, unit="clip"):
            try:
                frames = read_clip_frames(record, manifest.parent, height, width)
            except DatasetError as exc:
                summary.failed += 1
                summary.failures.append(f"{record.clip_id}: {exc}")
                log(f"skipping clip {record.clip_id}: {exc}")
                continue
            latents = encode_video_latents(vae, frames, device=device, dtype=dtype)
            unique, latent_index = clip_latent_captions(record)
            if len(latent_index) != latents.shape[1]:
                raise DatasetError(
                    f"clip {record.clip_id}: the VAE gave {latents.shape[1]} latent frames for {record.num_frames} "
                    f"pixel frames, expected {len(latent_index)}; use a Wan VAE (temporal stride 4)."
                )
            with torch.no_grad():
                text = torch.as_tensor(encode_text(unique)).float().cpu()
            if text.ndim != 3 or text.shape[0] != len(unique):
                raise DatasetError(
                    f"encode_text returned shape {tuple(text.shape)} for {len(unique)} captions; it must return "
                    f"[num_captions, text_len, text_dim]."
                )
            writer.add(record.clip_id, latents, text, latent_index, unique)
            summary.cached += 1
        if not (Path(cache_dir) / EMPTY_CAPTION_FILE).is_file():
            with torch.no_grad():
                writer.write_empty_caption(encode_text([""]))
    return summary
