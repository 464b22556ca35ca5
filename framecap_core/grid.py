"""The pixel/latent grid: how Wan's VAE and transformer tile a video, and how long a caption is.

Time. The Wan VAE keeps pixel frame 0 as latent 0 and packs every following group of ``TEMPORAL_STRIDE`` (4) pixel
frames into one latent: latent ``j >= 1`` covers pixel frames ``4j - 3 .. 4j``. A video therefore has ``4k + 1``
pixel frames and ``k + 1`` latents (81 frames -> 21 latents)::

    pixel  0 | 1 2 3 4 | 5 6 7 8 | ...
    latent 0 |    1    |    2    | ...

A latent takes the caption of the scene owning most of its pixel frames; on a tie the earlier scene wins
(:func:`latent_owners`, the one definition of that rule).

Space. One latent pixel covers ``vae_scale`` (8 for Wan2.1) pixels each way, and the transformer patches ``(p_h,
p_w)`` (2 x 2) latent pixels into one token, so width and height must be multiples of ``vae_scale * p`` (16). The
defaults below are Wan2.1's; a loaded ``WanModel`` carries its own ``vae_scale`` / ``patch_size``.

Text. Wan pads or truncates every caption to ``TEXT_LEN`` (512) UMT5 tokens; a model folder's ``framecap.json`` may
set a smaller ``text_len`` for small models.

Pure Python: no torch, no numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "PATCH_SIZE",
    "TEMPORAL_STRIDE",
    "TEXT_LEN",
    "VAE_SCALE",
    "latent_frame_range",
    "latent_owners",
    "latent_size",
    "latent_start_frame",
    "num_frames_for_latents",
    "num_latents_for_frames",
    "size_multiple",
]

TEMPORAL_STRIDE = 4  # pixel frames per latent frame after latent 0
VAE_SCALE = 8  # pixels per latent pixel, each way (Wan2.1's VAE)
PATCH_SIZE = (1, 2, 2)  # transformer patch (t, h, w) in latent frames / pixels (Wan2.1)
TEXT_LEN = 512  # UMT5 tokens per caption (Wan pads / truncates to this)


def num_latents_for_frames(num_frames: int) -> int:
    """Latent frames of a ``4k + 1`` pixel-frame video: ``(num_frames - 1) // 4 + 1`` (81 -> 21). Unchecked."""
    return (num_frames - 1) // TEMPORAL_STRIDE + 1


def num_frames_for_latents(num_latents: int) -> int:
    """Pixel frames decoded from ``num_latents`` latents: ``4 (num_latents - 1) + 1`` (21 -> 81)."""
    return TEMPORAL_STRIDE * (num_latents - 1) + 1


def latent_start_frame(latent_index: int) -> int:
    """First pixel frame of latent ``latent_index``: 0 for latent 0, ``4j - 3`` for latent ``j >= 1``."""
    return 0 if latent_index == 0 else TEMPORAL_STRIDE * latent_index - (TEMPORAL_STRIDE - 1)


def latent_frame_range(latent_index: int) -> range:
    """Pixel frames latent ``latent_index`` covers: ``[0]`` for latent 0, ``4j - 3 .. 4j`` for ``j >= 1``."""
    return range(latent_start_frame(latent_index), TEMPORAL_STRIDE * latent_index + 1)


def latent_owners(owner_of_frame: Sequence[int]) -> list[int]:
    """The owner (e.g. scene index) of each latent, by majority of its pixel frames; a tie goes to the owner seen
    first in frame order (the earlier scene when owners are non-decreasing).

    ``owner_of_frame``: one owner per pixel frame (``4k + 1`` entries). Returns ``k + 1`` owners.
    """
    owners = []
    for latent in range(num_latents_for_frames(len(owner_of_frame))):
        counts: dict[int, int] = {}
        for frame in latent_frame_range(latent):
            owner = owner_of_frame[frame]
            counts[owner] = counts.get(owner, 0) + 1
        # max() keeps the first maximum and dict order is frame order, so a tie goes to the earlier owner.
        owners.append(max(counts, key=counts.__getitem__))
    return owners


def size_multiple(vae_scale: int = VAE_SCALE, patch_size: Sequence[int] = PATCH_SIZE) -> int:
    """What width and height must be multiples of: one transformer token in pixels (8 x 2 = 16 for Wan2.1)."""
    return vae_scale * max(int(patch_size[1]), int(patch_size[2]))


def latent_size(height: int, width: int, vae_scale: int = VAE_SCALE) -> tuple[int, int]:
    """``(h, w)`` of the latents of ``height x width`` pixel frames."""
    return height // vae_scale, width // vae_scale
