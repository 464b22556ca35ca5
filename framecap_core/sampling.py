"""Samplers for long videos on the ``Denoiser`` protocol: PMWD and its baselines.

All samplers take the initial noise of one video, ``[C, L, H, W]`` (L latent frames, normalized latent space), and
return the clean latents ``[C, L, H, W]``. They only see a ``Denoiser``: windows of latents in, flow velocities out;
they know nothing about text or models, so they are tested with analytic denoisers.

- ``pmwd``: Parallel Multi-Window Denoising (paper 4.4). At every step all windows are predicted from the same
  ``x_t`` (in chunks of ``window_batch_size`` stacked on the batch axis), the velocities are fused where windows
  overlap, then ONE solver step moves the whole sequence. With a Diffusion Forcing matrix (``schedule.
  df_sigma_matrix``) each latent has its own sigma and gets its own Euler update.
- ``single_window``: the whole sequence as one window (plain sampling; PMWD with one window).
- ``sliding_window``: the sequential autoregressive baseline: each window after the first keeps ``context`` latents
  of the previous result (clean, or re-noised to ``context_noise``) and generates the rest from noise.
- ``fifo``: FIFO-Diffusion (arXiv 2405.11473): a queue with diagonally increasing noise; one clean latent out per
  iteration.

Solvers: flow Euler ``x <- x + (s_next - s) * v`` (per frame, so it handles per-frame sigmas), and diffusers'
``UniPCMultistepScheduler`` (flow prediction) when every frame shares a timestep. Multistep solvers keep history,
which is why PMWD fuses all windows first and steps once per sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import torch

from framecap_core.choices import METHODS as METHOD_CHOICES
from framecap_core.choices import SOLVERS as SOLVER_CHOICES
from framecap_core.errors import ConfigError, NumericalError
from framecap_core.schedule import (
    DEFAULT_SHIFT,
    NUM_TRAIN_TIMESTEPS,
    df_sigma_matrix,
    df_step_indices,
    flow_sigmas,
)
from framecap_core.windows import FUSION_KINDS, WindowFuser, fusion_weights, plan_windows, window_chunks

SOLVERS = tuple(name for name in SOLVER_CHOICES if name != "auto")  # the concrete solvers ("auto" picks one)
METHODS = tuple(METHOD_CHOICES)


class Denoiser(Protocol):
    """The seam between samplers and models.

    ``__call__(x [K, C, N, H, W], t [K, N], latent_index [K, N]) -> v [K, C, N, H, W]``: K windows of N latent frames
    (normalized latent space), per-frame timesteps in [0, 1000] (float32), the absolute latent-frame index of each
    position (int64, to pick captions). Returns the flow velocity ``v = noise - x0``, classifier-free guidance
    already applied.
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor, latent_index: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplerEvent:
    """Progress of a sampler, passed to ``callback`` after every chunk of windows (``kind="window"``) and after
    every solver step (``kind="step"``). A callback may raise (e.g. to cancel); the exception propagates.

    Attributes:
        method: "pmwd", "single", "sliding" or "fifo".
        kind: "window" or "step".
        step: 0-based index of the step this event belongs to, counted over the whole run (sliding: all windows'
            steps; fifo: the initial window's steps, then one per queue iteration).
        num_steps: steps in the whole run; the last "step" event has ``step == num_steps - 1``.
        window: windows evaluated so far in this step (== ``num_windows`` at the "step" event).
        num_windows: windows evaluated in this step.
        forwards: window forwards so far in the run; ``total_forwards`` when the run ends.
        total_forwards: window forwards the run makes (== ``estimate_cost(...).window_forwards``).
        sigma: the largest sigma being denoised in this step.
    """

    method: str
    kind: str
    step: int
    num_steps: int
    window: int
    num_windows: int
    forwards: int
    total_forwards: int
    sigma: float


Callback = Callable[[SamplerEvent], None]


class SamplerCost(NamedTuple):
    """What a sampler run costs: ``window_forwards`` (windows the denoiser evaluates, the unit of compute),
    ``denoiser_calls`` (batched calls) and ``steps`` (solver steps / iterations)."""

    window_forwards: int
    denoiser_calls: int
    steps: int


# --------------------------------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------------------------------


class Solver:
    """One update ``x_s -> x_s_next`` of a sub-sequence of latents from its (fused) velocity.

    ``index`` is the row of the sigma schedule being taken; ``sigma``/``sigma_next`` are ``[n]`` per-frame sigmas of
    the ``n`` latents in ``x [C, n, H, W]``.
    """

    name = "solver"

    def timesteps(self, index: int, sigma: torch.Tensor) -> torch.Tensor:
        """Model timesteps ``[n]`` (float32) for the frames at ``sigma [n]``."""
        return sigma.float() * NUM_TRAIN_TIMESTEPS

    def step(self, x: torch.Tensor, v: torch.Tensor, index: int, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EulerSolver(Solver):
    """Flow Euler: ``x <- x + (sigma_next - sigma) * v`` per frame (stateless, so per-frame sigmas are fine).

    Computed in float32, returned in ``x``'s dtype. A frame with ``sigma_next == sigma`` is left unchanged.
    """

    name = "euler"

    def step(self, x, v, index, sigma, sigma_next):
        ds = (sigma_next.float() - sigma.float()).to(x.device).view(1, -1, 1, 1)
        return (x.float() + ds * v.float()).to(x.dtype)


class UniPCSolver(Solver):
    """diffusers' ``UniPCMultistepScheduler`` (``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``) on
    our sigma grid. Every frame must share the timestep; one instance serves one trajectory (it keeps history).

    The model is fed the scheduler's timesteps (int ``1000 * sigma``, as diffusers' Wan pipeline does).
    """

    name = "unipc"

    def __init__(self, sigmas: torch.Tensor, *, solver_order: int = 2, device: torch.device | str | None = None):
        """``sigmas``: ``[S + 1]`` decreasing grid ending at 0."""
        from diffusers import UniPCMultistepScheduler

        grid = sigmas.detach().double().cpu()
        if grid[-1] != 0:
            raise ConfigError("solver='unipc' needs a sigma grid that ends at 0; use solver='euler' for partial grids.")
        # flow_shift=1: our grid is already shifted; diffusers appends the final 0 itself.
        self.scheduler = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,
            solver_order=solver_order,
            final_sigmas_type="zero",
        )
        self.scheduler.set_timesteps(sigmas=grid[:-1].numpy().astype(np.float64), device=device)
        # The scheduler must walk exactly our grid (it nudges a leading 1.0 down by 1e-6 to keep log() finite).
        if not torch.allclose(self.scheduler.sigmas.double(), grid, atol=2e-6, rtol=0):
            raise ConfigError("diffusers' UniPC scheduler did not reproduce the sigma grid; use solver='euler'.")
        self.scheduler.set_begin_index(0)

    def timesteps(self, index, sigma):
        return self.scheduler.timesteps[index].to(sigma.device, torch.float32).expand(sigma.shape[0])

    def step(self, x, v, index, sigma, sigma_next):
        t = self.scheduler.timesteps[index]
        return self.scheduler.step(v[None].to(x.dtype), t, x[None]).prev_sample[0]


def _uniform_grid(matrix: torch.Tensor) -> torch.Tensor | None:
    """The column if every row of ``matrix [M + 1, L]`` is constant, else None."""
    grid = matrix[:, 0]
    return grid if bool((matrix == grid[:, None]).all()) else None


def make_solver(solver: str, matrix: torch.Tensor, *, device: torch.device | str | None = None) -> Solver:
    """Build the solver named ``solver`` for the sigma schedule ``matrix [M + 1, L]``."""
    if solver == "euler":
        return EulerSolver()
    if solver == "unipc":
        grid = _uniform_grid(matrix)
        if grid is None:
            raise ConfigError(
                "solver='unipc' needs every frame at the same timestep, but this schedule has per-frame timesteps "
                "(Diffusion Forcing step size > 0); use solver='euler', or DF step size 0."
            )
        return UniPCSolver(grid, device=device)
    raise ConfigError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}.")


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _check_noise(noise: torch.Tensor) -> None:
    if not isinstance(noise, torch.Tensor) or noise.ndim != 4:
        raise ConfigError(
            f"noise must be one video's latents [C, L, H, W], got shape {tuple(getattr(noise, 'shape', ()))}."
        )


def _check_grid(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """A 1-D sigma grid ``[S + 1]``: finite, in [0, 1], non-increasing, at least one step."""
    grid = torch.as_tensor(sigmas, dtype=torch.float32).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2:
        raise ConfigError(f"sigmas must be a 1-D grid of >= 2 levels (from schedule.flow_sigmas), got {tuple(grid.shape)}.")
    _check_levels(grid[:, None])
    return grid


def _check_levels(matrix: torch.Tensor) -> None:
    if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()) or bool((matrix > 1).any()):
        raise ConfigError("sigmas must be finite and in [0, 1]; build them with schedule.flow_sigmas.")
    if bool((matrix[1:] > matrix[:-1]).any()):
        raise ConfigError("sigmas must be non-increasing from one step to the next (from noise to clean).")


def _sigma_matrix(sigmas, df_sigma_matrix, num_latents: int) -> torch.Tensor:
    """Canonical per-frame schedule ``[M + 1, L]`` (CPU float32) from a grid ``[S + 1]`` or a DF matrix."""
    if df_sigma_matrix is None and sigmas is not None and torch.as_tensor(sigmas).ndim == 2:
        df_sigma_matrix = sigmas
    if df_sigma_matrix is not None:
        matrix = torch.as_tensor(df_sigma_matrix, dtype=torch.float32).detach().cpu()
        if matrix.ndim != 2 or matrix.shape[1] != num_latents or matrix.shape[0] < 2:
            raise ConfigError(
                f"df_sigma_matrix must be [M + 1, L] with L = {num_latents} latents, got {tuple(matrix.shape)}; "
                "build it with schedule.df_sigma_matrix(num_steps, num_latents, ...)."
            )
        _check_levels(matrix)
        return matrix
    if sigmas is None:
        raise ConfigError("pass sigmas (schedule.flow_sigmas(num_steps, shift)) or df_sigma_matrix.")
    grid = _check_grid(sigmas)
    return grid[:, None].expand(grid.shape[0], num_latents).contiguous()


def _window_latent_index(starts: Sequence[int], n: int, device) -> torch.Tensor:
    """Absolute latent indices ``[K, n]`` (int64) of windows starting at ``starts``."""
    return torch.as_tensor(list(starts), device=device, dtype=torch.int64)[:, None] + torch.arange(n, device=device)


def _call(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, latent_index: torch.Tensor, *, what: str) -> torch.Tensor:
    """Run the denoiser and check its output: shape of ``x``, all finite."""
    v = denoiser(x, t, latent_index)
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        raise ConfigError(
            f"the denoiser returned shape {tuple(getattr(v, 'shape', ()))} for input {tuple(x.shape)} at {what}; "
            "a Denoiser must return a velocity shaped like its input [K, C, N, H, W]."
        )
    if not bool(torch.isfinite(v).all()):
        raise NumericalError(
            f"the denoiser returned NaN or inf at {what}; try float32 or bfloat16 instead of float16, a lower "
            "guidance scale, or check the model weights."
        )
    return v


class _Progress:
    """Counts steps and window forwards over a run and reports them to the callback."""

    def __init__(self, method: str, cost: SamplerCost, callback: Callback | None):
        self.method, self.cost, self.callback = method, cost, callback
        self.step = 0
        self.forwards = 0

    def _emit(self, kind: str, window: int, num_windows: int, sigma: float) -> None:
        if self.callback is not None:
            self.callback(SamplerEvent(self.method, kind, self.step, self.cost.steps, window, num_windows,
                                       self.forwards, self.cost.window_forwards, sigma))

    def windows_done(self, count: int, done: int, num_windows: int, sigma: float) -> None:
        self.forwards += count
        self._emit("window", done, num_windows, sigma)

    def step_done(self, num_windows: int, sigma: float) -> None:
        self._emit("step", num_windows, num_windows, sigma)
        self.step += 1

    def where(self, window_start: int | None = None) -> str:
        loc = f"step {self.step + 1}/{self.cost.steps}"
        return loc if window_start is None else f"{loc}, window starting at latent {window_start}"


# --------------------------------------------------------------------------------------------------------------------
# PMWD and single window
# --------------------------------------------------------------------------------------------------------------------


def _moving(matrix: torch.Tensor) -> torch.Tensor:
    """``[M, L]`` bool: latent l changes at iteration m."""
    return matrix[1:] != matrix[:-1]


def _pmwd_plan(moving: torch.Tensor, starts: list[int], n: int, every_step: bool) -> list[list[int]]:
    """For each iteration, the indices of the windows to evaluate.

    With a stateless per-frame solver a window whose latents all stay put contributes nothing (its predictions are
    multiplied by ``sigma_next - sigma = 0``), so it is skipped; rows where nothing moves are skipped entirely.
    ``every_step`` (multistep solvers) evaluates every window at every iteration.
    """
    if every_step:
        return [list(range(len(starts)))] * moving.shape[0]
    per_window = torch.stack([moving[:, s:s + n].any(dim=1) for s in starts], dim=1)  # [M, K]
    return [torch.nonzero(row).flatten().tolist() for row in per_window]


def pmwd(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float] | None = None,
    *,
    window: int,
    stride: int,
    fusion: str = "flat",
    window_batch_size: int | None = None,
    solver: str = "euler",
    df_sigma_matrix: torch.Tensor | None = None,
    window_starts: Sequence[int] | None = None,
    callback: Callback | None = None,
    process_group=None,
) -> torch.Tensor:
    """Parallel Multi-Window Denoising.

    Windows of ``window`` latents start at ``plan_windows(L, window, stride)`` (the last one flush with the end). At
    every step all windows are predicted from the same ``x_t`` — in chunks of ``window_batch_size`` windows stacked
    on the batch axis — their velocities are fused (``fusion_weights(window, fusion, overlap=window - stride)``,
    normalised by the sum of weights per latent), and one solver step moves the whole sequence.

    Args:
        denoiser: a ``Denoiser``.
        noise: ``[C, L, H, W]`` initial latents (pure noise when the schedule starts at sigma 1). The run keeps
            ``noise.dtype`` (use float32).
        sigmas: ``[S + 1]`` grid from ``schedule.flow_sigmas`` (or a ``[M + 1, L]`` matrix); unused when
            ``df_sigma_matrix`` is given.
        window: window length N in latents (the model's training length, 21 for Wan2.1); capped at L.
        stride: latents between window starts, ``1 <= stride <= window``.
        fusion: "flat" (the paper's average), "pyramid" or "overlap-linear".
        window_batch_size: windows per denoiser call (None = all windows of a step in one call).
        solver: "euler" or "unipc" (UniPC only when all frames share the timestep).
        df_sigma_matrix: ``[M + 1, L]`` per-frame schedule from ``schedule.df_sigma_matrix``; frames then get their
            own timesteps and Euler updates ``x += (s_next - s) * v``.
        window_starts: the window starts already planned (a :class:`SamplerPlan`'s); default
            ``plan_windows(L, window, stride)``.
        callback: called with a ``SamplerEvent`` after every chunk of windows and every step.
        process_group: a ``torch.distributed`` process group whose processes share every step's windows
            (:mod:`framecap_core.distributed`); every process calls ``pmwd`` with the same arguments and gets the
            same latents as one process would. A process's "window" events count its own share of the step
            (``window`` / ``num_windows``); "step" events and ``forwards`` count all processes' windows. None:
            this process evaluates every window.

    Returns:
        ``[C, L, H, W]`` latents at the schedule's last row (clean when it ends at 0).
    """
    _check_noise(noise)
    num_latents = noise.shape[1]
    matrix = _sigma_matrix(sigmas, df_sigma_matrix, num_latents)
    starts = list(window_starts) if window_starts is not None else plan_windows(num_latents, window, stride)
    n = min(window, num_latents)
    if fusion not in FUSION_KINDS:
        raise ConfigError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSION_KINDS)}.")
    weights = fusion_weights(n, fusion, overlap=max(n - stride, 0)).to(noise.device)
    if window_batch_size is not None and (not isinstance(window_batch_size, int) or window_batch_size < 1):
        raise ConfigError(f"window_batch_size must be an integer >= 1 or None (all windows), got {window_batch_size!r}.")
    solv = make_solver(solver, matrix, device=noise.device)
    plan = _pmwd_plan(_moving(matrix), starts, n, every_step=not isinstance(solv, EulerSolver))
    batch = window_batch_size or len(starts)
    cost = SamplerCost(sum(len(a) for a in plan), sum(-(-len(a) // batch) for a in plan), sum(1 for a in plan if a))
    progress = _Progress("pmwd", cost, callback)
    if process_group is not None:
        return _pmwd_sharded(denoiser, noise, matrix, starts, n, weights, batch, solv, plan, progress, fusion,
                             process_group)

    x = noise.clone()
    for m, active, sigma, sigma_next, t, top in _pmwd_steps(plan, matrix, solv, noise.device):
        fuser, done = None, 0
        for indices in window_chunks(active, batch):
            chunk = [starts[k] for k in indices]
            v = _window_predictions(denoiser, x, t, chunk, n, progress)
            fuser = fuser or WindowFuser(num_latents, v)
            fuser.add(v, chunk, weights)
            done += len(chunk)
            progress.windows_done(len(chunk), done, len(active), top)
        x = solv.step(x, fuser.result(), m, sigma, sigma_next)
        progress.step_done(len(active), top)
    return x



def _pmwd_steps(plan: list[list[int]], matrix: torch.Tensor, solv: Solver, device):
    """The iterations that evaluate windows: ``(m, active windows, sigma [L], sigma_next [L], t [L], top sigma)``."""
    for m, active in enumerate(plan):
        if active:
            sigma, sigma_next = matrix[m].to(device), matrix[m + 1].to(device)
            yield m, active, sigma, sigma_next, solv.timesteps(m, sigma), float(sigma.max())


def _window_predictions(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, chunk: list[int], n: int,
                        progress: _Progress) -> torch.Tensor:
    """Velocities ``[k, C, n, H, W]`` of the windows of ``x [C, L, H, W]`` starting at ``chunk``, in one call."""
    latent_index = _window_latent_index(chunk, n, x.device)  # [k, n]
    xb = torch.stack([x[:, s:s + n] for s in chunk])  # [k, C, n, H, W]
    return _call(denoiser, xb, t[latent_index], latent_index, what=progress.where(chunk[0]))


def _pmwd_sharded(denoiser, noise, matrix, starts, n, weights, batch, solv, plan, progress, fusion, group):
    """``pmwd`` with each step's windows shared by the processes of ``group`` (see :mod:`.distributed`).

    The step's windows are cut into the chunks one process would evaluate (:func:`~.windows.window_chunks`); each process
    evaluates a contiguous share of whole chunks, one collective gathers every prediction in window order, and every
    process fuses them exactly like the one-process loop and takes the same step. Every window is thus computed in
    the same call as in one process and every sum is taken in the same order: the latents are those of one process,
    bit for bit, whatever the number of processes. An exception here (including from ``callback``) is reported
    through the next collective, so the other processes stop at the same step instead of waiting for a peer that
    left.
    """
    from .distributed import WindowExchange, check_same_run, group_rank_and_size, window_shares

    rank, world = group_rank_and_size(group)
    num_latents = noise.shape[1]
    check_same_run(group, [noise, matrix, starts, n, fusion, solv.name, batch], "the PMWD run")
    exchange = WindowExchange(group, (noise.shape[0], n, *noise.shape[2:]), noise.device)
    last = max((m for m, active in enumerate(plan) if active), default=-1)
    pending: Exception | None = None  # a callback's failure after the previous collective
    x = noise.clone()
    for m, active, sigma, sigma_next, t, top in _pmwd_steps(plan, matrix, solv, noise.device):
        shares = window_shares(active, batch, world)
        sizes = [sum(map(len, share)) for share in shares]
        failure, predictions = pending, None
        if failure is None:
            try:
                parts, done = [], 0
                for indices in shares[rank]:
                    chunk = [starts[k] for k in indices]
                    parts.append(_window_predictions(denoiser, x, t, chunk, n, progress).float())
                    done += len(chunk)
                    progress.windows_done(len(chunk), done, sizes[rank], top)
                predictions = torch.cat(parts) if parts else None
            except Exception as exc:  # reported to every process by the exchange, then re-raised here
                failure = exc
        v = exchange.exchange(sizes, predictions, failure, progress.where())
        fuser = WindowFuser(num_latents, v)
        fuser.add(v, [starts[k] for k in active], weights)
        x = solv.step(x, fuser.result(), m, sigma, sigma_next)
        progress.forwards += len(active) - sizes[rank]
        if m == last:
            progress.step_done(len(active), top)
            continue
        try:
            progress.step_done(len(active), top)
        except Exception as exc:
            pending = exc
    return x


def single_window(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float] | None = None,
    *,
    solver: str = "euler",
    df_sigma_matrix: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Plain sampling: the whole sequence ``noise [C, L, H, W]`` is one window at every step.

    Same arguments as ``pmwd`` (without windows). Returns ``[C, L, H, W]``.
    """
    _check_noise(noise)
    num_latents = noise.shape[1]
    matrix = _sigma_matrix(sigmas, df_sigma_matrix, num_latents)
    solv = make_solver(solver, matrix, device=noise.device)
    moving = _moving(matrix).any(dim=1) | (not isinstance(solv, EulerSolver))
    steps = int(moving.sum())
    progress = _Progress("single", SamplerCost(steps, steps, steps), callback)
    latent_index = torch.arange(num_latents, device=noise.device)[None]
    x = noise.clone()
    for m in range(matrix.shape[0] - 1):
        if not moving[m]:
            continue
        sigma, sigma_next = matrix[m].to(noise.device), matrix[m + 1].to(noise.device)
        v = _call(denoiser, x[None], solv.timesteps(m, sigma)[None], latent_index, what=progress.where())
        progress.windows_done(1, 1, 1, float(sigma.max()))
        x = solv.step(x, v[0].float(), m, sigma, sigma_next)
        progress.step_done(1, float(sigma.max()))
    return x


# --------------------------------------------------------------------------------------------------------------------
# Sequential sliding window
# --------------------------------------------------------------------------------------------------------------------


def _denoise_segment(
    denoiser: Denoiser,
    context: torch.Tensor,
    context_sigma: float,
    new: torch.Tensor,
    first_latent: int,
    grid: torch.Tensor,
    solver: str,
    progress: _Progress,
) -> torch.Tensor:
    """Denoise ``new [C, n_new, H, W]`` along ``grid`` with ``context [C, n_ctx, H, W]`` held fixed at
    ``context_sigma`` in front of it, in one window whose first latent is ``first_latent``. Returns the new latents."""
    n_ctx, n_new = context.shape[1], new.shape[1]
    device = new.device
    matrix = grid[:, None].expand(grid.shape[0], n_new)
    solv = make_solver(solver, matrix, device=device)
    latent_index = torch.arange(first_latent, first_latent + n_ctx + n_new, device=device)[None]
    t_ctx = torch.full((n_ctx,), context_sigma * NUM_TRAIN_TIMESTEPS, device=device, dtype=torch.float32)
    x = new.clone()
    for m in range(grid.shape[0] - 1):
        sigma, sigma_next = matrix[m].to(device), matrix[m + 1].to(device)
        t = torch.cat([t_ctx, solv.timesteps(m, sigma)])[None]
        xw = torch.cat([context, x], dim=1)[None]
        v = _call(denoiser, xw, t, latent_index, what=progress.where(first_latent))
        progress.windows_done(1, 1, 1, float(sigma[0]))
        x = solv.step(x, v[0, :, n_ctx:].float(), m, sigma, sigma_next)
        progress.step_done(1, float(sigma[0]))
    return x


def sliding_window(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    *,
    window: int,
    context: int,
    context_noise: float = 0.0,
    solver: str = "euler",
    generator: torch.Generator | None = None,
    window_starts: Sequence[int] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Sequential (autoregressive) sliding window: the baseline PMWD is compared with.

    The first window (latents ``0 .. window-1``) is sampled normally. Each next window starts ``window - context``
    latents later (``plan_windows(L, window, window - context)``; the last one flush with the end, so it may reuse
    more than ``context`` latents): the latents it shares with what is already generated are its context — clean
    (``context_noise = 0``), or re-noised to ``x = (1 - a) x0 + a eps`` with ``a = context_noise`` and fed with
    ``t = 1000 a`` — held fixed, and the rest is generated from ``noise``. Errors can only flow forward.

    Args:
        noise: ``[C, L, H, W]``.
        sigmas: ``[S + 1]`` grid (every window runs all S steps).
        window: latents per window; context: ``0 <= context < window`` latents reused from the previous window.
        context_noise: sigma of the re-noised context, in ``[0, 1)``.
        generator: noise for re-noising the context; None reuses those latents' own initial noise (deterministic).
        window_starts: the window starts already planned (a :class:`SamplerPlan`'s); default
            ``plan_windows(L, window, window - context)``.

    Returns:
        ``[C, L, H, W]``.
    """
    _check_noise(noise)
    grid = _check_grid(sigmas)
    num_latents = noise.shape[1]
    if not isinstance(context, int) or not 0 <= context < window:
        raise ConfigError(
            f"context must be an integer with 0 <= context < window ({window}), got {context!r}; "
            f"use e.g. context = window // 4 = {window // 4}."
        )
    if not 0.0 <= context_noise < 1.0:
        raise ConfigError(f"context_noise must be in [0, 1), got {context_noise}; use 0 (clean) or e.g. 0.1.")
    starts = list(window_starts) if window_starts is not None else plan_windows(num_latents, window, window - context)
    n = min(window, num_latents)
    steps = (grid.shape[0] - 1) * len(starts)
    progress = _Progress("sliding", SamplerCost(steps, steps, steps), callback)
    out = torch.zeros_like(noise)
    done = 0  # latents generated so far
    for start in starts:
        ctx = out[:, start:done]
        if context_noise > 0 and ctx.shape[1] > 0:
            eps = noise[:, start:done] if generator is None else torch.randn(
                ctx.shape, generator=generator, device=generator.device, dtype=torch.float32).to(noise)
            ctx = ((1 - context_noise) * ctx.float() + context_noise * eps.float()).to(noise.dtype)
        new = _denoise_segment(denoiser, ctx, context_noise, noise[:, done:start + n], start, grid, solver, progress)
        out[:, done:start + n] = new
        done = start + n
    return out


# --------------------------------------------------------------------------------------------------------------------
# FIFO-Diffusion
# --------------------------------------------------------------------------------------------------------------------


def fifo(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float] | None = None,
    *,
    window: int,
    lookahead: bool = False,
    shift: float = DEFAULT_SHIFT,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """FIFO-Diffusion (Kim et al., arXiv 2405.11473) with a queue of ``window`` latents.

    The sigma grid has exactly ``window`` levels plus 0 (``sigmas`` must have ``window + 1`` entries; default
    ``flow_sigmas(window, shift)``): the number of steps is forced to the window length. Queue position ``j``
    (0 = front) holds a latent at ``grid[window - 1 - j]``, so noise increases diagonally from front to back. Each
    iteration takes one Euler step for every queue latent (per-frame timesteps), pops the now clean front latent
    and pushes fresh noise (at sigma 1) at the back: one latent out per iteration, ``L`` iterations.

    Initialisation: latents ``0 .. window-1`` are sampled with the same grid as one window, then re-noised
    diagonally with their own initial noise, ``q_j = (1 - s_j) x0_j + s_j noise_j``, ``s_j = grid[window - 1 - j]``
    (the back latent is exactly its initial noise).

    Lookahead (FIFO's "lookahead denoising"): two windows per iteration with stride ``window // 2`` — the queue
    itself, whose back half it updates, and a window made of the last ``window // 2`` emitted clean latents (t = 0)
    followed by the queue's front, whose back part updates the queue's front half — so every latent is updated
    with cleaner latents before it. (On the first iteration nothing has been emitted; the queue window updates all.)

    Frames indices given to the denoiser are absolute latent indices; latents past the end of the video (the queue
    runs ``window - 1`` latents past it) use index ``L - 1`` (the last caption) and are discarded. Their noise comes
    from ``generator`` (None: a fixed seed, so the result depends only on ``noise``).

    Returns:
        ``[C, L, H, W]``.
    """
    _check_noise(noise)
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an integer >= 1, got {window!r}; use the training length, e.g. 21.")
    grid = flow_sigmas(window, shift) if sigmas is None else _check_grid(sigmas)
    if grid.shape[0] != window + 1:
        raise ConfigError(
            f"FIFO takes exactly window = {window} steps (a grid of {window + 1} sigmas), got {grid.shape[0]}; "
            f"pass sigmas=None or schedule.flow_sigmas({window}, shift)."
        )
    num_latents = noise.shape[1]
    cost = _cost("fifo", num_latents, None, window=window, num_steps=None, lookahead=lookahead, df_step=0,
                 causal_block_size=1, window_batch_size=None, solver="euler")  # the progress total, no windows
    progress = _Progress("fifo", cost, callback)
    n = min(window, num_latents)
    device = noise.device
    head = _denoise_segment(denoiser, noise[:, :0], 0.0, noise[:, :n], 0, grid, "euler", progress)
    if num_latents <= window:
        return head

    # diagonal re-noising of the first window
    levels = grid[:window].flip(0).to(device)  # [window] sigma of queue position j = grid[window - 1 - j]
    lvl = levels.view(1, -1, 1, 1)
    queue = ((1 - lvl) * head.float() + lvl * noise[:, :window].float()).to(noise.dtype)
    next_levels = grid[1:].flip(0).to(device)  # after one step; the front reaches grid[window] = 0
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    pad = torch.randn((noise.shape[0], window, *noise.shape[2:]), generator=gen, device=gen.device).to(noise)
    source = torch.cat([noise, pad], dim=1)  # noise of latents 0 .. L + window - 1
    half = window // 2
    t = levels * NUM_TRAIN_TIMESTEPS
    out = torch.zeros_like(noise)
    for it in range(num_latents):
        latent_index = torch.arange(it, it + window, device=device).clamp(max=num_latents - 1)[None]
        top = float(levels[-1])
        use_lookahead = lookahead and half > 0 and it > 0
        v = _call(denoiser, queue[None], t[None], latent_index, what=progress.where(it))[0]
        progress.windows_done(1, 1, 2 if use_lookahead else 1, top)
        if use_lookahead:
            e = min(it, half)  # emitted clean latents in front of the queue
            xa = torch.cat([out[:, it - e:it], queue[:, :window - e]], dim=1)[None]
            ta = torch.cat([torch.zeros(e, device=device), t[:window - e]])[None]
            latent_index_a = torch.arange(it - e, it - e + window, device=device).clamp(max=num_latents - 1)[None]
            va = _call(denoiser, xa, ta, latent_index_a, what=progress.where(it - e))[0]
            progress.windows_done(1, 2, 2, top)
            v = torch.cat([va[:, e:e + half], v[:, half:]], dim=1)
        queue = EulerSolver().step(queue, v, it, levels, next_levels)
        out[:, it] = queue[:, 0]
        queue = torch.cat([queue[:, 1:], source[:, it + window:it + window + 1]], dim=1)
        progress.step_done(2 if use_lookahead else 1, top)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Cost accounting
# --------------------------------------------------------------------------------------------------------------------


def estimate_cost(
    method: str,
    num_latents: int,
    *,
    window: int,
    num_steps: int | None = None,
    stride: int | None = None,
    context: int | None = None,
    lookahead: bool = False,
    df_step: int = 0,
    causal_block_size: int = 1,
    window_batch_size: int | None = None,
    solver: str = "euler",
) -> SamplerCost:
    """Cost of a run without running it (dry runs, benchmarks): equals what the sampler reports in its events.

    - pmwd: per step, the windows with a latent that moves (all of them when synchronous or with UniPC).
    - single: one forward per step.
    - sliding: ``num_steps`` per window of ``plan_windows(L, window, window - context)``.
    - fifo: ``num_steps`` is ignored (forced to ``window``): ``window`` forwards for the first window, then one per
      latent (two with lookahead, except the first iteration).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")
    starts = None
    if method == "sliding":
        if context is None:
            raise ConfigError("estimate_cost('sliding') needs context.")
        starts = plan_windows(num_latents, window, window - context)
    elif method == "pmwd":
        if stride is None:
            raise ConfigError("estimate_cost('pmwd') needs stride.")
        starts = plan_windows(num_latents, window, stride)
    return _cost(method, num_latents, starts, window=window, num_steps=num_steps, lookahead=lookahead,
                 df_step=df_step, causal_block_size=causal_block_size,
                 window_batch_size=window_batch_size, solver=solver)


def _cost(method, num_latents, starts, *, window, num_steps, lookahead, df_step, causal_block_size,
          window_batch_size, solver) -> SamplerCost:
    """:func:`estimate_cost` for windows already planned (``starts``: pmwd and sliding)."""
    if method == "fifo":
        steps = window + (num_latents if num_latents > window else 0)
        extra = num_latents - 1 if lookahead and window // 2 > 0 and num_latents > window else 0
        return SamplerCost(steps + extra, steps + extra, steps)
    if num_steps is None:
        raise ConfigError(f"estimate_cost({method!r}) needs num_steps.")
    if method == "sliding":
        total = num_steps * len(starts)
        return SamplerCost(total, total, total)
    indices = df_step_indices(num_steps, num_latents, df_step=df_step, causal_block_size=causal_block_size)
    moving = _moving(indices)
    unipc = solver == "unipc"
    if method == "single":
        steps = moving.shape[0] if unipc else int(moving.any(dim=1).sum())
        return SamplerCost(steps, steps, steps)
    plan = _pmwd_plan(moving, starts, min(window, num_latents), every_step=unipc)
    batch = window_batch_size or len(starts)
    return SamplerCost(sum(len(a) for a in plan), sum(-(-len(a) // batch) for a in plan), sum(1 for a in plan if a))


def count_window_forwards(method: str, num_latents: int, **kwargs) -> int:
    """``estimate_cost(method, num_latents, **kwargs).window_forwards``."""
    return estimate_cost(method, num_latents, **kwargs).window_forwards


# --------------------------------------------------------------------------------------------------------------------
# A planned run: the one place that picks the sampler for a method
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerPlan:
    """A sampler run fixed before it starts (all lengths in latents): :func:`plan_sampler` makes it once, the
    generation plan carries it, and :func:`run_sampler` runs it with no further planning.

    Attributes:
        method: a key of :data:`~framecap_core.choices.METHODS`.
        num_latents: latents of the video.
        window_latents: latents per window (capped at the video; fifo: the queue length; single: the video).
        stride_latents: latents between window starts (fifo: 1; single: the video).
        overlap_latents: latents consecutive windows share (pmwd: fused; sliding: the context; fifo: window - 1).
        window_starts: first latent of each window (pmwd, sliding; ``(0,)`` for fifo and single).
        num_steps: the sigma grid's steps (fifo: forced to ``window_latents``, this is ignored).
        shift: flow-matching shift of the grid.
        solver: the concrete solver, "euler" or "unipc" ("auto" already resolved).
        fusion, window_batch_size: pmwd's fusion weights and windows per denoiser call (None = all).
        df_step, causal_block_size: the Diffusion Forcing schedule (pmwd, single; 0 = synchronous).
        lookahead: FIFO lookahead denoising.
        extra_noise_seed: seed of the noise FIFO pushes past the end of the video.
        cost: what the run costs (``estimate_cost``).
    """

    method: str
    num_latents: int
    window_latents: int
    stride_latents: int
    overlap_latents: int
    window_starts: tuple[int, ...]
    num_steps: int
    shift: float = DEFAULT_SHIFT
    solver: str = "euler"
    fusion: str = "flat"
    window_batch_size: int | None = None
    df_step: int = 0
    causal_block_size: int = 1
    lookahead: bool = False
    extra_noise_seed: int = 0
    cost: SamplerCost = field(default=SamplerCost(0, 0, 0))

    @property
    def forwards_per_step(self) -> int:
        """Window forwards in a full step: every window (pmwd), two with FIFO lookahead, else one."""
        if self.method == "pmwd":
            return len(self.window_starts)
        if self.method == "fifo" and self.lookahead and self.num_latents > self.window_latents:
            return 2
        return 1

    @property
    def window_spans(self) -> list[tuple[int, int]]:
        """``(start, end)`` latents of each window, end exclusive (fifo: every queue position)."""
        n, num = self.window_latents, self.num_latents
        if self.method == "fifo":
            return [(0, n)] + [(i, min(i + n, num)) for i in range(1, num - n + 1)] if num > n else [(0, n)]
        return [(s, s + n) for s in self.window_starts]


def plan_sampler(
    method: str,
    num_latents: int,
    *,
    window_latents: int,
    overlap_latents: int,
    num_steps: int,
    shift: float = DEFAULT_SHIFT,
    solver: str = "euler",
    fusion: str = "flat",
    window_batch_size: int | None = None,
    df_step: int = 0,
    causal_block_size: int = 1,
    lookahead: bool = False,
    extra_noise_seed: int = 0,
) -> SamplerPlan:
    """The window geometry and cost of ``method`` on ``num_latents`` latents (windows of ``window_latents``
    sharing ``overlap_latents``; both capped at the video)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")
    n = min(window_latents, num_latents)
    overlap = min(overlap_latents, n - 1) if n > 1 else 0
    stride = max(n - overlap, 1)
    starts: list[int] | None = None
    if method in ("pmwd", "sliding"):
        starts = plan_windows(num_latents, n, stride)
    elif method == "fifo":
        stride, overlap = 1, n - 1
    else:  # single: one window over the video
        n, stride, overlap = num_latents, num_latents, 0
    cost = _cost(method, num_latents, starts, window=n, num_steps=num_steps, lookahead=lookahead,
                 df_step=df_step, causal_block_size=causal_block_size,
                 window_batch_size=window_batch_size, solver=solver)
    return SamplerPlan(method, num_latents, n, stride, overlap, tuple(starts or (0,)), num_steps, shift, solver,
                       fusion, window_batch_size, df_step, causal_block_size, lookahead, extra_noise_seed, cost)


def _df_matrix(plan: SamplerPlan) -> torch.Tensor | None:
    if plan.df_step == 0:
        return None
    return df_sigma_matrix(plan.num_steps, plan.num_latents, df_step=plan.df_step,
                           causal_block_size=plan.causal_block_size, shift=plan.shift)


def _run_pmwd(plan: SamplerPlan, denoiser: Denoiser, noise: torch.Tensor, callback: Callback | None,
              process_group=None) -> torch.Tensor:
    return pmwd(denoiser, noise, flow_sigmas(plan.num_steps, plan.shift), window=plan.window_latents,
                stride=plan.stride_latents, fusion=plan.fusion, window_batch_size=plan.window_batch_size,
                solver=plan.solver, df_sigma_matrix=_df_matrix(plan), window_starts=plan.window_starts,
                callback=callback, process_group=process_group)


def _run_single(plan: SamplerPlan, denoiser: Denoiser, noise: torch.Tensor, callback: Callback | None,
                process_group=None) -> torch.Tensor:
    return single_window(denoiser, noise, flow_sigmas(plan.num_steps, plan.shift), solver=plan.solver,
                         df_sigma_matrix=_df_matrix(plan), callback=callback)


def _run_sliding(plan: SamplerPlan, denoiser: Denoiser, noise: torch.Tensor, callback: Callback | None,
                 process_group=None) -> torch.Tensor:
    return sliding_window(denoiser, noise, flow_sigmas(plan.num_steps, plan.shift), window=plan.window_latents,
                          context=plan.overlap_latents, solver=plan.solver, window_starts=plan.window_starts,
                          callback=callback)


def _run_fifo(plan: SamplerPlan, denoiser: Denoiser, noise: torch.Tensor, callback: Callback | None,
              process_group=None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(plan.extra_noise_seed))
    return fifo(denoiser, noise, None, window=plan.window_latents, lookahead=plan.lookahead, shift=plan.shift,
                generator=generator, callback=callback)


# The sampler of each method (the keys are choices.METHODS); only pmwd's windows can be shared by processes.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "pmwd": _run_pmwd,
    "sliding": _run_sliding,
    "fifo": _run_fifo,
    "single": _run_single,
}
SHARDABLE_METHODS = ("pmwd",)


def run_sampler(plan: SamplerPlan, denoiser: Denoiser, noise: torch.Tensor, *,
                callback: Callback | None = None, process_group=None) -> torch.Tensor:
    """Run ``plan`` on ``noise [C, L, H, W]``: the sampler of ``plan.method`` with the plan's windows and schedule.
    ``process_group``: ``torch.distributed`` processes sharing each step's windows (pmwd only).
    Returns the clean latents ``[C, L, H, W]``."""
    if process_group is not None and plan.method not in SHARDABLE_METHODS:
        raise ConfigError(f"method {plan.method!r} runs its windows one after another, so processes cannot share "
                          "them; use method 'pmwd' or run in one process.")
    return SAMPLERS[plan.method](plan, denoiser, noise, callback, process_group)
