"""Noise schedules for flow matching: the shifted sigma grid, Diffusion Forcing training noise, DF inference matrices.

Conventions (rectified flow, as in Wan2.1):

- ``x_s = (1 - s) * x0 + s * noise`` with ``s`` ("sigma") in ``[0, 1]``; 1 is pure noise, 0 is clean.
- the model predicts the velocity ``v = noise - x0``; the model timestep is ``t = 1000 * s``.
- the grid is shifted towards high noise: ``s' = shift * s / (1 + (shift - 1) * s)``.

Everything here is a small pure function of its arguments (plus an explicit ``torch.Generator`` for the random ones),
so each one can be checked against the formula in its docstring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from framecap_core.errors import ConfigError

# Shift of the sigma grid. Values in the wild for Wan2.1: diffusers' WanPipeline scheduler 3.0, the Wan reference
# CLI 5.0 (its T2V default), the Wan README 8-12 for the 1.3B model at 480p, ComfyUI templates 8.0. We take the
# reference implementation's T2V default, 5.0; every function and setting exposes it.
DEFAULT_SHIFT = 5.0

# The model's timestep is 1000 * sigma (Wan's num_train_timesteps).
NUM_TRAIN_TIMESTEPS = 1000


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ConfigError(f"shift must be > 0, got {shift}; use e.g. shift={DEFAULT_SHIFT} (1.0 = no shift).")


def shift_sigmas(s: torch.Tensor | float, shift: float = DEFAULT_SHIFT) -> torch.Tensor | float:
    """Time-shift sigmas towards the noisy end: ``shift * s / (1 + (shift - 1) * s)``.

    Maps 0 -> 0 and 1 -> 1, is increasing in ``s``, and is the identity for ``shift == 1``.
    Works elementwise on a tensor of any shape, or on a float.
    """
    _check_shift(shift)
    return shift * s / (1 + (shift - 1) * s)


def flow_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The shifted flow-matching sigma grid of a sampler with ``num_steps`` steps.

    Returns:
        ``[num_steps + 1]`` float32, strictly decreasing from exactly 1.0 to exactly 0.0: step ``i`` moves
        ``x`` from ``sigmas[i]`` to ``sigmas[i + 1]``. It is ``shift_sigmas(linspace(1, 0, num_steps + 1))``.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps must be an integer >= 1, got {num_steps!r}; use e.g. 30.")
    _check_shift(shift)
    base = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigmas = shift_sigmas(base, shift)
    # The ends are exact: the first step starts from pure noise and the last one lands on the clean sample.
    sigmas[0], sigmas[-1] = 1.0, 0.0
    return sigmas.to(torch.float32)


# --------------------------------------------------------------------------------------------------------------------
# Diffusion Forcing training noise (paper section 4.3)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DFTrainingNoise:
    """Knobs of the Diffusion Forcing training-noise sampler (paper 4.3).

    Per sample: a reference latent frame ``r`` (uniform over the frames) gets a level ``s_r`` (uniform in [0, 1],
    then shifted with ``shift``); every other frame ``f`` gets ``clip(s_r + (f - r) * delta, 0, 1)``: earlier frames
    cleaner, later frames noisier. ``delta`` is the step size between neighbouring latent frames, in sigma units,
    drawn uniformly from ``step_size_range``; with probability ``zero_step_prob`` it is 0, so synchronous sampling
    (every frame at one level, what PMWD and plain sampling do) stays in the training distribution.

    Attributes:
        step_size_range: ``(low, high)`` with ``0 <= low <= high``. Default ``(0.0, 0.1)``: across a 21-latent
            window the spread reaches up to 2.0, i.e. from fully clean to fully noisy within one window.
        zero_step_prob: probability of ``delta = 0``. Default 0.2.
        shift: shift applied to the uniform reference level. Default ``DEFAULT_SHIFT``, the inference grid's shift,
            so training levels are distributed like the levels the sampler visits.
    """

    step_size_range: tuple[float, float] = (0.0, 0.1)
    zero_step_prob: float = 0.2
    shift: float = DEFAULT_SHIFT

    def __post_init__(self) -> None:
        low, high = self.step_size_range
        if not (0.0 <= low <= high):
            raise ConfigError(
                f"step_size_range must be (low, high) with 0 <= low <= high, got {self.step_size_range}; "
                "use e.g. (0.0, 0.1)."
            )
        if not (0.0 <= self.zero_step_prob <= 1.0):
            raise ConfigError(f"zero_step_prob must be in [0, 1], got {self.zero_step_prob}; use e.g. 0.2.")
        _check_shift(self.shift)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for training configs and checkpoint metadata)."""
        d = asdict(self)
        d["step_size_range"] = list(self.step_size_range)
        return d


class DFNoiseDraw(NamedTuple):
    """What the DF training sampler drew; log it to see the noise distribution.

    Shapes are ``[B, N]`` / ``[B]`` for the batched sampler and ``[N]`` / ``[]`` for the single-sample one.
    """

    sigmas: torch.Tensor  # per-frame sigma in [0, 1]
    reference: torch.Tensor  # reference frame r (int64)
    level: torch.Tensor  # its sigma s_r
    step_size: torch.Tensor  # delta (0 when the zero-step branch was taken)


def sample_df_training_sigmas_batch(
    batch_size: int,
    num_frames: int,
    *,
    generator: torch.Generator | None = None,
    config: DFTrainingNoise | None = None,
    device: torch.device | str | None = None,
) -> DFNoiseDraw:
    """Per-frame training sigmas for a batch: ``s[b, f] = clip(s_r[b] + (f - r[b]) * delta[b], 0, 1)``.

    Draws, per sample ``b``: ``r ~ U{0..N-1}``, ``s_r = shift_sigmas(U[0, 1])``, ``delta ~ U(step_size_range)``, then
    ``delta = 0`` with probability ``zero_step_prob``. See ``DFTrainingNoise``.

    Returns:
        ``DFNoiseDraw(sigmas [B, N] float32, reference [B] int64, level [B] float32, step_size [B] float32)``.
        With ``delta >= 0`` each row is non-decreasing in ``f``.
    """
    if batch_size < 1 or num_frames < 1:
        raise ConfigError(f"batch_size and num_frames must be >= 1, got {batch_size} and {num_frames}.")
    cfg = config or DFTrainingNoise()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # All draws happen on the generator's device, in a fixed order, so a seed gives the same noise everywhere.
    reference = torch.randint(0, num_frames, (batch_size,), generator=generator, device=gen_device)
    level = shift_sigmas(torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float64), cfg.shift)
    low, high = cfg.step_size_range
    step = low + (high - low) * torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float64)
    zero = torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float64) < cfg.zero_step_prob
    step = torch.where(zero, torch.zeros_like(step), step)
    frames = torch.arange(num_frames, device=gen_device, dtype=torch.float64)
    sigmas = (level[:, None] + (frames[None, :] - reference[:, None]) * step[:, None]).clamp(0.0, 1.0)
    out = DFNoiseDraw(sigmas.float(), reference, level.float(), step.float())
    if device is not None:
        out = DFNoiseDraw(*(x.to(device) for x in out))
    return out


def sample_df_training_sigmas(
    num_frames: int,
    *,
    generator: torch.Generator | None = None,
    config: DFTrainingNoise | None = None,
    device: torch.device | str | None = None,
) -> DFNoiseDraw:
    """One sample of ``sample_df_training_sigmas_batch``: ``sigmas [N]``, ``reference``/``level``/``step_size`` 0-d."""
    draw = sample_df_training_sigmas_batch(1, num_frames, generator=generator, config=config, device=device)
    return DFNoiseDraw(*(x[0] for x in draw))


# --------------------------------------------------------------------------------------------------------------------
# Diffusion Forcing inference matrices
# --------------------------------------------------------------------------------------------------------------------


def df_num_iterations(num_steps: int, num_latents: int, *, df_step: int = 0, causal_block_size: int = 1) -> int:
    """``M = num_steps + df_step * (num_blocks - 1)``, ``num_blocks = ceil(num_latents / causal_block_size)``."""
    num_blocks = -(-num_latents // causal_block_size)
    return num_steps + df_step * (num_blocks - 1)


def df_step_indices(num_steps: int, num_latents: int, *, df_step: int = 0, causal_block_size: int = 1) -> torch.Tensor:
    """Grid index of every latent at every iteration of Diffusion Forcing sampling.

    Latent ``l`` belongs to block ``b = l // causal_block_size``; block ``b`` starts ``b * df_step`` iterations
    after block 0, so ``index[m, l] = clip(m - b * df_step, 0, num_steps)``: 0 = not started (pure noise),
    ``num_steps`` = finished (clean). The last block may be shorter than ``causal_block_size``.

    Returns:
        ``[M + 1, L]`` int64 with ``M = df_num_iterations(...)``; row 0 is all 0, row M all ``num_steps``.
    """
    for name, value, low in (("num_steps", num_steps, 1), ("num_latents", num_latents, 1),
                             ("df_step", df_step, 0), ("causal_block_size", causal_block_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    num_iterations = df_num_iterations(num_steps, num_latents, df_step=df_step, causal_block_size=causal_block_size)
    m = torch.arange(num_iterations + 1)[:, None]
    lag = (torch.arange(num_latents) // causal_block_size * df_step)[None, :]
    return (m - lag).clamp(0, num_steps)


def df_sigma_matrix(
    num_steps: int,
    num_latents: int,
    *,
    df_step: int = 0,
    causal_block_size: int = 1,
    shift: float = DEFAULT_SHIFT,
    sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-latent sigmas of Diffusion Forcing sampling: ``matrix[m, l] = grid[df_step_indices(...)[m, l]]``.

    Iteration ``m`` moves latent ``l`` from ``matrix[m, l]`` to ``matrix[m + 1, l]``. Each column walks through
    exactly the grid (holding at 1 before its block starts, at 0 after it finishes); block ``b`` lags block 0 by
    ``b * df_step`` iterations, so in every row earlier latents are never noisier than later ones.
    ``df_step = 0`` is synchronous sampling: every row is constant, the column is the grid itself.
    (In SkyReels-V2 terms ``df_step`` is ``ar_step``.)

    Args:
        num_steps: steps per latent (the grid has ``num_steps + 1`` levels).
        num_latents: ``L``.
        df_step: lag in iterations between consecutive blocks (0 = synchronous).
        causal_block_size: latents that share a schedule.
        shift: grid shift, used when ``sigmas`` is None.
        sigmas: optional custom grid ``[num_steps + 1]`` (decreasing, from 1 to 0) instead of ``flow_sigmas``.

    Returns:
        ``[M + 1, L]`` float32, ``M = num_steps + df_step * (ceil(L / causal_block_size) - 1)``.
    """
    if sigmas is None:
        grid = flow_sigmas(num_steps, shift)
    else:
        grid = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
        if grid.ndim != 1 or grid.numel() != num_steps + 1:
            raise ConfigError(f"sigmas must have num_steps + 1 = {num_steps + 1} entries, got shape {tuple(grid.shape)}.")
    return grid[df_step_indices(num_steps, num_latents, df_step=df_step, causal_block_size=causal_block_size)]
