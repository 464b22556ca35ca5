"""Windows over a long latent sequence: the plan of window starts and the fusion of overlapping predictions.

Parallel Multi-Window Denoising (paper 4.4) views ``L`` latents as overlapping windows of the training length ``N``
with stride ``S``; the last window is flush with the end so no latent is left out (MultiDiffusion / Gen-L-Video
style plans drop the tail). At every step each window is predicted and the predictions are averaged where windows
overlap, with per-position weights:

- ``flat``: uniform (the paper's plain average; the default).
- ``pyramid``: ``1, 2, .., peak, .., 2, 1`` (FreeNoise): window centres count more than window edges.
- ``overlap-linear``: a linear ramp across the ``overlap`` positions at each edge, 1 elsewhere.

Weights only matter where windows overlap: a latent seen by one window gets exactly that window's prediction.
"""

from __future__ import annotations

import torch

from framecap_core.choices import FUSIONS
from framecap_core.errors import ConfigError

FUSION_KINDS = tuple(FUSIONS)


def plan_windows(num_latents: int, window: int, stride: int) -> list[int]:
    """Start indices of the windows covering ``num_latents`` latents.

    The first start is 0, consecutive starts differ by ``stride`` except the last, which is ``num_latents - window``
    (flush with the end); every latent is covered and no start repeats. If ``num_latents <= window`` the plan is
    ``[0]`` and the one window is the whole sequence (samplers then use a window of ``num_latents``).

    Example: ``plan_windows(10, 4, 3) == [0, 3, 6]``, ``plan_windows(11, 4, 3) == [0, 3, 6, 7]``.
    """
    if not isinstance(num_latents, int) or num_latents < 1:
        raise ConfigError(f"num_latents must be an integer >= 1, got {num_latents!r}.")
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an integer >= 1 latent, got {window!r}; use the training length, e.g. 21.")
    if not isinstance(stride, int) or stride < 1:
        raise ConfigError(f"stride must be an integer >= 1, got {stride!r}; use e.g. window // 2 = {max(window // 2, 1)}.")
    if stride > window:
        raise ConfigError(
            f"stride ({stride}) is larger than the window ({window}), which would leave latents uncovered; "
            f"use a stride <= {window}, e.g. {max(window // 2, 1)}."
        )
    if num_latents <= window:
        return [0]
    last = num_latents - window
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def window_chunks(windows, batch: int) -> list[list[int]]:
    """The denoiser calls of a PMWD step: ``windows`` (the step's windows, in order) cut into consecutive chunks of
    ``batch``, the last one shorter: ``window_chunks(range(5), 2) == [[0, 1], [2, 3], [4]]``.

    A pure function of the windows and the batch size, shared by one process and by every process count of a
    sharded run (processes take whole chunks, :mod:`framecap_core.distributed`): a transformer's rounding depends on
    which windows share a call, so the same chunks are what make N processes compute the bits of one.
    """
    windows = list(windows)
    return [windows[c0:c0 + batch] for c0 in range(0, len(windows), batch)]


def window_overlaps(starts: list[int], window: int) -> list[int]:
    """Number of latents each window shares with the previous one (0 for the first)."""
    return [0] + [max(0, prev + window - cur) for prev, cur in zip(starts[:-1], starts[1:])]


def fusion_weights(window: int, kind: str = "flat", overlap: int | None = None) -> torch.Tensor:
    """Per-position weights of one window, ``[window]`` float32, all > 0.

    - ``flat``: all 1.
    - ``pyramid``: ``w[i] = min(i + 1, window - i)``, e.g. window 5 -> ``1, 2, 3, 2, 1``.
    - ``overlap-linear``: ``w[i] = (min(i, window - 1 - i) + 1) / (overlap + 1)`` on the ``overlap`` positions at
      each edge, 1 elsewhere; e.g. window 6, overlap 2 -> ``1/3, 2/3, 1, 1, 2/3, 1/3``. ``overlap`` defaults to
      ``window // 2``; PMWD passes ``window - stride``.
    """
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an integer >= 1, got {window!r}.")
    i = torch.arange(window, dtype=torch.float32)
    edge = torch.minimum(i, window - 1 - i)  # distance to the nearest window edge
    if kind == "flat":
        return torch.ones(window)
    if kind == "pyramid":
        return edge + 1
    if kind == "overlap-linear":
        overlap = window // 2 if overlap is None else overlap
        if not isinstance(overlap, int) or overlap < 0:
            raise ConfigError(f"overlap must be an integer >= 0, got {overlap!r}; PMWD uses window - stride.")
        ramp = (edge + 1) / (overlap + 1)
        return torch.where(edge < overlap, ramp, torch.ones(window))
    raise ConfigError(f"unknown fusion {kind!r}; use one of {', '.join(FUSION_KINDS)}.")


class WindowFuser:
    """Accumulates weighted window predictions into a sequence, chunk by chunk (so all windows never need to be
    held at once), then normalises by the sum of weights each latent received.

    ``fused[:, l] = sum_k w_k[l - start_k] * pred_k[:, l - start_k] / sum_k w_k[l - start_k]`` over the windows k
    that contain latent l; latents no window contains stay 0.
    """

    def __init__(self, num_latents: int, like: torch.Tensor):
        """``like``: a window prediction ``[K, C, N, H, W]``; the sum is float32 on its device."""
        _, c, _, h, w = like.shape
        self.acc = torch.zeros(c, num_latents, h, w, dtype=torch.float32, device=like.device)
        self.norm = torch.zeros(num_latents, dtype=torch.float32, device=like.device)

    def add(self, predictions: torch.Tensor, starts: list[int], weights: torch.Tensor) -> None:
        """Add ``predictions [K, C, N, H, W]`` of the windows starting at ``starts`` (K ints) with ``weights``
        ``[N]`` (shared) or ``[K, N]`` (per window)."""
        k, _, n = predictions.shape[:3]
        if len(starts) != k:
            raise ConfigError(f"{k} window predictions but {len(starts)} window starts.")
        weights = weights.to(device=self.acc.device, dtype=torch.float32)
        if weights.ndim == 1:
            weights = weights.expand(k, n)
        for j, start in enumerate(starts):
            w = weights[j]
            self.acc[:, start:start + n] += w[None, :, None, None] * predictions[j].float()
            self.norm[start:start + n] += w

    def result(self) -> torch.Tensor:
        """Fused ``[C, L, H, W]`` float32."""
        covered = self.norm > 0
        norm = torch.where(covered, self.norm, torch.ones_like(self.norm))
        return self.acc / norm[None, :, None, None]


def fuse(predictions: torch.Tensor, starts: list[int], weights: torch.Tensor, num_latents: int) -> torch.Tensor:
    """Weighted average of overlapping window predictions.

    Args:
        predictions: ``[K, C, N, H, W]``, window k covers latents ``starts[k] .. starts[k] + N - 1``.
        starts: K window starts.
        weights: ``[N]`` or ``[K, N]``, > 0.
        num_latents: ``L``.

    Returns:
        ``[C, L, H, W]`` float32: per latent, the sum of weighted predictions over the sum of weights.
    """
    fuser = WindowFuser(num_latents, predictions)
    fuser.add(predictions, starts, weights)
    return fuser.result()
