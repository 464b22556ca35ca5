"""Generation pipeline: timeline + settings -> latents -> frames.

::

    model = load_wan("path/to/Wan2.1-T2V-1.3B-Diffusers")
    timeline = parse_timeline("[0s-4s: a red fox in snow] [4s-8s: the fox jumps]", fps=16)
    result = generate(model, timeline, GenerationSettings(method="pmwd", steps=30, seed=1))
    write_mp4(result.frames, "fox.mp4", fps=16)

Units. ``window`` and ``overlap`` are in *pixel frames*, like ComfyUI's context windows and like the timeline:
``window`` must be ``4k + 1`` (81 = Wan's training length) and is ``(window - 1) // 4 + 1`` latents (81 -> 21);
``overlap`` must be a multiple of 4 and is ``overlap // 4`` latents (28 -> 7). Windows then start every
``window_latents - overlap_latents`` latents (the stride), the last one flush with the end. Everything after
:func:`plan_generation` speaks latents.

Methods (all on the same model, captions and noise, so they compare like for like):

- ``pmwd``: Parallel Multi-Window Denoising (paper 4.4): all windows denoised at every step from the same ``x_t``,
  predictions fused where they overlap (``fusion``), one solver step for the whole video. ``df_step > 0`` adds the
  Diffusion Forcing schedule (later latents lag ``df_step`` steps per ``causal_block_size`` latents).
- ``sliding``: the sequential autoregressive baseline: each window keeps ``overlap`` latents of the previous one as
  clean context and generates the rest.
- ``fifo``: FIFO-Diffusion: a queue of one window with diagonal noise levels; the number of steps is forced to the
  window length in latents (``steps`` is ignored).
- ``single``: the whole video as one window (what stock Wan does; beyond the training length quality drops).

The same seed gives the same video: the initial noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)``
and then moved to the device, so it does not depend on the device either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import choices
from .errors import CancelledError, ConfigError
from .grid import PATCH_SIZE, TEMPORAL_STRIDE, VAE_SCALE, latent_size, num_latents_for_frames, size_multiple
from .limits import (
    MAX_FPS,
    MAX_NUM_FRAMES,
    MAX_NUM_LATENTS,
    MAX_SAMPLER_ITERATIONS,
    MAX_SIDE,
    MAX_STEPS,
    SEED_MODULUS,
    check_number,
    reduce_seed,
)
from .timeline import DEFAULT_NEGATIVE, Timeline, negative_prompt

__all__ = [
    "DEFAULT_NEGATIVE",
    "GenerationPlan",
    "GenerationResult",
    "GenerationSettings",
    "ProgressEvent",
    "generate",
    "plan_generation",
]

# The names of each choice, from the one table (choices.py) that argparse and the node widgets read too.
METHODS = tuple(choices.METHODS)
SOLVER_CHOICES = tuple(choices.SOLVERS)
FUSIONS = tuple(choices.FUSIONS)
DTYPES = tuple(choices.DTYPES)

# Spatial size one latent pixel covers (VAE 8) times the transformer patch (2) for Wan2.1: width / height must be
# multiples. A model with another VAE stride or patch is checked against its own (plan_generation).
SIZE_MULTIPLE = size_multiple()

def _default_shift() -> float:
    from .schedule import DEFAULT_SHIFT

    return DEFAULT_SHIFT


@dataclass
class GenerationSettings:
    """Every knob of a generation. ``validate()`` checks them and raises :class:`ConfigError` naming the fix.

    Attributes:
        method: "pmwd" (default), "sliding", "fifo" or "single".
        window: window length in pixel frames, ``4k + 1`` (81 = 21 latents, Wan's training length).
        overlap: frames two consecutive windows share, a multiple of 4 (28 = 7 latents, a third of the window).
            PMWD: the fused overlap; sliding: the context kept from the previous window. Unused by fifo and single.
        fusion: how PMWD averages overlapping predictions: "flat" (the paper), "pyramid", "overlap-linear".
        df_step: Diffusion Forcing step size in sampler steps between consecutive blocks (0 = synchronous).
        causal_block_size: latents per Diffusion Forcing block.
        steps: sampler steps (fifo: forced to the window length in latents).
        guidance: classifier-free guidance scale (1 = off, half the compute).
        shift: flow-matching sigma shift (``schedule.DEFAULT_SHIFT``).
        solver: "auto" (UniPC when every latent shares the timestep, else Euler), "euler" or "unipc".
        seed: initial noise seed.
        width, height: video size in pixels, multiples of 16.
        fps: frames per second of the output (the timeline's fps is used when None).
        dtype, device: transformer precision ("auto" = bf16 on GPU, fp32 on CPU) and device ("auto" = cuda if any).
        window_batch_size: PMWD windows per transformer call: "auto" (default: the most that fit the device's free
            memory, from :mod:`framecap_core.memory`'s per-window activation model; all windows when they fit), an
            integer, or None (all windows of a step in one call).
        negative: negative prompt; None = the timeline's, else :data:`DEFAULT_NEGATIVE`.
        lookahead: FIFO lookahead denoising (two windows per iteration).
    """

    method: str = "pmwd"
    window: int = 81
    overlap: int = 28
    fusion: str = "flat"
    df_step: int = 0
    causal_block_size: int = 1
    steps: int = 50
    guidance: float = 5.0
    shift: float = field(default_factory=_default_shift)
    solver: str = "auto"
    seed: int = 0
    width: int = 832
    height: int = 480
    fps: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    window_batch_size: int | str | None = "auto"
    negative: str | None = None
    lookahead: bool = False

    # -- units ----------------------------------------------------------------------------------------------------

    @property
    def window_latents(self) -> int:
        """Latents per window: ``(window - 1) // 4 + 1``."""
        return num_latents_for_frames(self.window)

    @property
    def overlap_latents(self) -> int:
        """Latents shared by consecutive windows: ``overlap // 4``."""
        return self.overlap // TEMPORAL_STRIDE

    @property
    def stride_latents(self) -> int:
        return self.window_latents - self.overlap_latents

    @property
    def fixed_window_batch_size(self) -> int | None:
        """``window_batch_size`` when it is a number (None for all windows or "auto", which a model resolves)."""
        return None if self.window_batch_size == "auto" else self.window_batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> GenerationSettings:
        return dataclasses.replace(self, **changes)

    # -- validation -----------------------------------------------------------------------------------------------

    def validate(self, *, vae_scale: int = VAE_SCALE, patch_size: tuple[int, int, int] = PATCH_SIZE) -> GenerationSettings:
        """Raise :class:`ConfigError` (what is wrong and the fix) on the first bad setting; return self.

        ``vae_scale`` / ``patch_size``: the model's VAE stride and transformer patch (Wan2.1's by default), which
        width and height must be multiples of."""

        def need_int(name: str, low: int, hint: str, high: int = MAX_NUM_LATENTS) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}; {hint}.", field=name)
            if value > high:
                raise ConfigError(f"{name}={value} is more than the limit of {high}; {hint}.", field=name)
            return value

        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}.")
        need_int("window", 1, "use 81 frames (21 latents, Wan's training length)", MAX_NUM_FRAMES)
        if (self.window - 1) % 4:
            lower = self.window - (self.window - 1) % 4
            raise ConfigError(
                f"window={self.window} frames is not of the form 4k+1 (a window must hold whole latents); use "
                f"{lower} or {lower + 4}.",
                field="window",
            )
        need_int("overlap", 0, "use about a third of the window, e.g. 28 frames for window 81", MAX_NUM_FRAMES)
        if self.overlap % 4:
            lower = self.overlap - self.overlap % 4
            raise ConfigError(
                f"overlap={self.overlap} frames is not a multiple of 4 (4 frames = 1 latent); use {lower} or "
                f"{lower + 4}.",
                field="overlap",
            )
        if self.method in ("pmwd", "sliding") and self.overlap_latents >= self.window_latents:
            suggestion = 4 * (self.window_latents // 3)
            raise ConfigError(
                f"overlap={self.overlap} frames ({self.overlap_latents} latents) must be smaller than the window "
                f"({self.window} frames = {self.window_latents} latents), or windows would never advance; use e.g. "
                f"overlap={suggestion}.",
                field="overlap",
            )
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; use one of {', '.join(FUSIONS)}.")
        need_int("df_step", 0, "use 0 (synchronous) or a small lag such as 2", MAX_STEPS)
        need_int("causal_block_size", 1, "use 1 (every latent its own block)")
        need_int("steps", 1, "use e.g. 50 (Wan's default) or 30", MAX_STEPS)
        self.seed = reduce_seed(self.seed)
        check_number(self.guidance, "guidance", 0, math.inf, "use 5.0 (1 turns it off)")
        check_number(self.shift, "shift", 0, math.inf, f"use {_default_shift()}", low_inclusive=False)
        if self.solver not in SOLVER_CHOICES:
            raise ConfigError(f"unknown solver {self.solver!r}; use one of {', '.join(SOLVER_CHOICES)}.")
        if self.solver == "unipc" and (self.df_step > 0 or self.method == "fifo"):
            raise ConfigError(
                "solver 'unipc' needs every latent at the same timestep, but "
                + ("fifo" if self.method == "fifo" else f"df_step={self.df_step}")
                + " gives per-latent timesteps; use solver 'euler' or 'auto'."
            )
        multiple = size_multiple(vae_scale, patch_size)
        for name in ("width", "height"):
            value = need_int(name, multiple, "use e.g. 832x480", MAX_SIDE)
            if value % multiple:
                lower = value - value % multiple
                raise ConfigError(
                    f"{name}={value} is not a multiple of {multiple} (VAE stride {vae_scale} x patch "
                    f"{max(patch_size[1:])}); use {max(lower, multiple)} or {lower + multiple}.",
                    field=name,
                )
        if self.fps is not None:
            need_int("fps", 1, "use 16 (Wan's frame rate)", MAX_FPS)
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}.")
        if self.window_batch_size not in (None, "auto"):
            need_int("window_batch_size", 1, "use 1 or 2 to save memory, 'auto' (as many as fit), or None (all windows)")
        if self.negative is not None and not isinstance(self.negative, str):
            raise ConfigError(f"negative must be a string, got {type(self.negative).__name__}.")
        return self

    def resolved_solver(self) -> str:
        """The solver actually used: "auto" -> "unipc" when synchronous (df_step 0, not fifo), else "euler"."""
        if self.solver != "auto":
            return self.solver
        return "unipc" if self.df_step == 0 and self.method != "fifo" else "euler"

    def resolved_negative(self, timeline: Timeline) -> str:
        return negative_prompt(timeline, self.negative)


# --------------------------------------------------------------------------------------------------------------------
# Plan (pure: no model, no weights)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class GenerationPlan:
    """What a generation will do, computed once without a model (``framecap generate --dry-run``), then handed to
    :func:`generate` (``generate(model, plan)``), whose sampler runs ``plan.sampler`` as it is.

    Attributes:
        method, solver: as resolved from the settings.
        num_frames, num_latents: video length in pixel frames and latents.
        latent_size: ``(h, w)`` latent height and width (pixels / the VAE stride).
        window_latents, stride_latents, overlap_latents: the window geometry actually used (capped at the video).
        window_spans: ``(start, end)`` latents of each window, end exclusive (fifo: every queue position).
        num_steps: sampler steps / iterations.
        forwards_per_step: window forwards in a full step (pmwd: the number of windows).
        total_forwards: window forwards of the whole run (the unit of compute).
        batch_rows_per_forward: transformer batch rows per window forward (2 with guidance, else 1).
        latent_captions: caption of every latent.
        unique_captions: distinct captions (each encoded once).
        negative: the negative prompt used.
        timeline, settings: what was planned (settings validated).
        sampler: the sampler run (:class:`~framecap_core.sampling.SamplerPlan`).
        vae_scale: the VAE stride ``latent_size`` was computed with.
        num_processes: processes sharing each step's windows (pmwd under ``torchrun``; 1 otherwise).
    """

    method: str
    solver: str
    num_frames: int
    num_latents: int
    latent_size: tuple[int, int]
    window_latents: int
    stride_latents: int
    overlap_latents: int
    window_spans: list[tuple[int, int]]
    num_steps: int
    forwards_per_step: int
    total_forwards: int
    batch_rows_per_forward: int
    latent_captions: list[str]
    unique_captions: list[str]
    negative: str
    timeline: Timeline | None = None
    settings: GenerationSettings | None = None
    sampler: Any = None
    vae_scale: int = VAE_SCALE
    num_processes: int = 1

    @property
    def forwards_per_latent(self) -> float:
        return self.total_forwards / self.num_latents

    def with_window_batch_size(self, window_batch_size: int | None) -> GenerationPlan:
        """This plan with ``window_batch_size`` decided (e.g. "auto" resolved once the model is on its device):
        the windows per denoiser call are all that changes, so nothing is planned again."""
        settings = self.settings.replace(window_batch_size=window_batch_size) if self.settings is not None else None
        return dataclasses.replace(self, settings=settings,
                                   sampler=dataclasses.replace(self.sampler, window_batch_size=window_batch_size))

    def process_share(self) -> str:
        """How the processes share a full step's windows, by whole transformer calls of the settings'
        ``window_batch_size`` windows, e.g. "2 processes, 6 and 5 windows per step (1 per call)"."""
        from .distributed import window_shares

        k, world = self.forwards_per_step, self.num_processes
        batch = self.settings.window_batch_size if self.settings is not None else "auto"
        if batch == "auto":
            return (f"{world} processes share each step's {k} windows by whole transformer calls of "
                    f"--window-batch-size auto (as many as fit one device; when all {k} fit, one process evaluates "
                    f"them all, so use --window-batch-size {-(-k // world)} or less to keep every process busy)")
        batch = batch or k
        sizes = [sum(map(len, share)) for share in window_shares(range(k), batch, world)]
        per_call = f"{batch} per call" if batch < k else "all in one call"
        if len(set(sizes)) == 1:
            return f"{world} processes, {sizes[0]} window{'s' * (sizes[0] != 1)} each per step ({per_call})"
        counts = ", ".join(str(n) for n in sizes[:-1]) + f" and {sizes[-1]}"
        return f"{world} processes, {counts} windows per step ({per_call})"

    def headline(self) -> str:
        """Three lines: method and size, window geometry, cost (what the CLI prints before a run)."""
        h, w = self.latent_size
        guidance = "cond + uncond in one batch" if self.batch_rows_per_forward > 1 else "no guidance"
        return "\n".join([
            f"method {self.method} (solver {self.solver}), {self.num_frames} frames = {self.num_latents} latents "
            f"of {h}x{w}",
            f"window {self.window_latents} latents, stride {self.stride_latents}, overlap {self.overlap_latents}; "
            f"{len(self.window_spans)} windows",
            f"{self.num_steps} steps, {self.forwards_per_step} window forwards per step, {self.total_forwards} in "
            f"total ({self.forwards_per_latent:.2f} per latent), {guidance}",
        ] + ([self.process_share()] if self.num_processes > 1 else []))

    def describe(self, timeline: Timeline | None = None, settings: GenerationSettings | None = None) -> str:
        """Human-readable plan: geometry, cost, windows and the caption of each latent."""
        lines = [self.headline()]
        if settings is not None:
            lines.append(
                f"seed {settings.seed}, guidance {settings.guidance}, shift {settings.shift}, fusion {settings.fusion}, "
                f"df_step {settings.df_step}, causal_block_size {settings.causal_block_size}, "
                f"{settings.width}x{settings.height}"
            )
        lines.append(f"negative: {self.negative}")
        lines.append("windows (latents, end inclusive):")
        spans = self.window_spans
        shown = spans if len(spans) <= 40 else spans[:20] + [None] + spans[-19:]
        for i, span in enumerate(shown):
            if span is None:
                lines.append(f"  ... {len(spans) - 39} more")
                continue
            number = i if i < 20 or len(spans) <= 40 else len(spans) - (len(shown) - i)
            lines.append(f"  {number:>3}: {span[0]:>4}-{span[1] - 1}")
        if timeline is not None:
            lines.append("scenes:")
            lines.extend("  " + line for line in timeline.summary().splitlines()[1:])
        lines.append("caption of each latent:")
        previous = None
        for i, caption in enumerate(self.latent_captions):
            marker = caption if caption != previous else '"'
            lines.append(f"  {i:>4}  {marker}")
            previous = caption
        return "\n".join(lines)


def _check_timeline(timeline: Any) -> Timeline:
    if not isinstance(timeline, Timeline):
        raise ConfigError(
            f"expected a Timeline, got {type(timeline).__name__}; build one with framecap_core.timeline.parse_timeline."
        )
    return timeline


def plan_generation(
    timeline: Timeline,
    settings: GenerationSettings,
    num_processes: int = 1,
    *,
    vae_scale: int = VAE_SCALE,
    patch_size: tuple[int, int, int] = PATCH_SIZE,
) -> GenerationPlan:
    """The plan of ``generate(model, timeline, settings)``: geometry, windows, cost and captions (no model needed).

    ``num_processes`` > 1: the processes of a ``torchrun`` launch share each step's windows; only ``pmwd`` can.
    ``vae_scale`` / ``patch_size``: the model's VAE stride and transformer patch (``WanModel.vae_scale`` /
    ``patch_size``; Wan2.1's by default)."""
    from .sampling import plan_sampler

    timeline = _check_timeline(timeline)
    settings.validate(vae_scale=vae_scale, patch_size=patch_size)
    solver = settings.resolved_solver()
    num = timeline.num_latents
    if settings.df_step > 0 and settings.method in ("pmwd", "single"):
        # The Diffusion Forcing schedule is an iterations x latents table: bound it before it is built.
        iterations = settings.steps + settings.df_step * (math.ceil(num / settings.causal_block_size) - 1)
        if iterations > MAX_SAMPLER_ITERATIONS:
            raise ConfigError(
                f"df_step={settings.df_step} makes {iterations} sampler iterations over {num} latents (steps + "
                f"df_step x (blocks - 1)), more than the limit of {MAX_SAMPLER_ITERATIONS}; lower df_step or raise "
                f"causal_block_size.",
                field="df_step",
            )
    if num_processes > 1 and settings.method != "pmwd":
        method = settings.method
        raise ConfigError(
            f"method {method!r} evaluates one window at a time, each after the previous, so {num_processes} "
            f"processes cannot share it; use method 'pmwd', whose windows are shared, or run {method!r} in one "
            f"process (without torchrun)."
        )
    sampler = plan_sampler(
        settings.method, num, window_latents=settings.window_latents,
        overlap_latents=settings.overlap_latents, num_steps=settings.steps, shift=settings.shift, solver=solver,
        fusion=settings.fusion, window_batch_size=settings.fixed_window_batch_size, df_step=settings.df_step,
        causal_block_size=settings.causal_block_size, lookahead=settings.lookahead,
        extra_noise_seed=(int(settings.seed) + 1) % SEED_MODULUS,
    )
    return GenerationPlan(
        method=settings.method,
        solver=solver,
        num_frames=timeline.num_frames,
        num_latents=timeline.num_latents,
        latent_size=latent_size(settings.height, settings.width, vae_scale),
        window_latents=sampler.window_latents,
        stride_latents=sampler.stride_latents,
        overlap_latents=sampler.overlap_latents,
        window_spans=sampler.window_spans,
        num_steps=sampler.cost.steps,
        forwards_per_step=sampler.forwards_per_step,
        total_forwards=sampler.cost.window_forwards,
        batch_rows_per_forward=2 if settings.guidance != 1 else 1,
        latent_captions=timeline.latent_captions(),
        unique_captions=timeline.unique_captions(),
        negative=settings.resolved_negative(timeline),
        num_processes=num_processes,
        timeline=timeline,
        settings=settings,
        sampler=sampler,
        vae_scale=vae_scale,
    )


# --------------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------------


def resolve_window_batch_size(model, plan: GenerationPlan, settings: GenerationSettings) -> int | None:
    """The PMWD window batch of a run: ``settings.window_batch_size``, with "auto" resolved on ``model``'s device
    (its transformer in place) by :func:`framecap_core.memory.auto_window_batch`; None means all windows."""
    if settings.window_batch_size != "auto" or settings.method != "pmwd":
        return settings.fixed_window_batch_size
    from .memory import auto_window_batch

    return auto_window_batch(
        model, num_windows=len(plan.window_spans), window_latents=plan.window_latents, latent_hw=plan.latent_size,
        guided=plan.batch_rows_per_forward > 1, per_token=settings.df_step > 0, num_latents=plan.num_latents,
        num_captions=len(plan.unique_captions), solver=plan.solver)


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of :func:`generate`.

    ``phase``: "encode" (captions), "denoise" (after every chunk of windows and every step) or "decode" (per latent).
    ``done`` / ``total``: window forwards so far / in the run for "denoise", latents for "decode", captions for
    "encode". ``step`` / ``num_steps``, ``window`` / ``num_windows`` and ``sigma`` come from the sampler
    (``kind`` is "window" or "step"); they are 0 / "" in the other phases.
    """

    phase: str
    done: int
    total: int
    kind: str = ""
    step: int = 0
    num_steps: int = 0
    window: int = 0
    num_windows: int = 0
    sigma: float = 0.0


@dataclass
class GenerationResult:
    """``latents [C, L, h, w]`` float32 (normalized space, on the CPU), ``frames [T, H, W, 3]`` uint8 (None when
    ``decode=False``), the plan, the settings, wall-clock seconds per phase and the windows per transformer call
    actually used (``window_batch_size="auto"`` resolved)."""

    latents: Any
    frames: Any
    plan: GenerationPlan
    settings: GenerationSettings
    timeline: Timeline
    timings: dict[str, float] = field(default_factory=dict)
    window_batch_size: int | None = None

    def scene_frames(self) -> list[Any] | None:
        """One decoded frame per scene (its middle frame), for the storyboard."""
        from .output import scene_frames

        return None if self.frames is None else scene_frames(self.frames, self.timeline)


ProgressCallback = Callable[[ProgressEvent], None]


def generate(
    model,
    timeline: Timeline | GenerationPlan,
    settings: GenerationSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    decode: bool = True,
    caption_encoder=None,
    context=None,
    denoiser=None,
    process_group=None,
) -> GenerationResult:
    """Generate the video of ``timeline`` with ``model`` (a :class:`~framecap_core.models.WanModel`).

    Args:
        model: the loaded model (frame-level attention installed, as ``load_wan`` does by default).
        timeline: scenes and captions; its length fixes the number of latents. Or a :class:`GenerationPlan` from
            :func:`plan_generation` (then ``settings`` stays None): the run follows that plan, planning nothing again.
        settings: knobs (defaults: :class:`GenerationSettings`); ``settings.device`` / ``dtype`` are the caller's
            business at load time, the run uses the model's.
        progress: called with a :class:`ProgressEvent` per caption batch, window chunk, step and decoded latent.
        cancel: polled at every progress point; returning True stops the run with :class:`CancelledError`.
        decode: decode the latents to frames with the model's VAE.
        caption_encoder: a :class:`~framecap_core.text.CaptionEncoder` (default: one over the model's text encoder;
            embeddings are cached process-wide, so a rerun of the same timeline encodes nothing).
        context: captions already encoded (a :class:`~framecap_core.text.TimelineContext` of this timeline, e.g.
            from the ComfyUI text-encode node); the text encoder is then not used.
        denoiser: use this ``Denoiser`` instead of building a ``WanDenoiser`` (tests, other backends).
        process_group: a ``torch.distributed`` process group whose processes share each PMWD step's windows
            (every process calls ``generate`` with the same arguments; :mod:`framecap_core.distributed`). Group rank
            0 encodes the captions and sends the embeddings to the others (which need no text encoder) and alone
            decodes (the others need no VAE and return ``frames=None``). All get the latents of a one-process run.

    Returns:
        a :class:`GenerationResult`.
    """
    import torch

    from .backend import WanDenoiser, decode_latents
    from .distributed import agree_on_min, broadcast_tensors, group_rank_and_size
    from .placement import running
    from .sampling import run_sampler

    rank, world = group_rank_and_size(process_group)
    vae_scale = int(getattr(model, "vae_scale", VAE_SCALE))
    if isinstance(timeline, GenerationPlan):
        if settings is not None:
            raise ConfigError("generate(model, plan) takes its settings from the plan; leave settings unset.")
        plan = timeline
        if plan.vae_scale != vae_scale:
            raise ConfigError(
                f"the plan was made for a VAE stride of {plan.vae_scale} but the model's is {vae_scale}; plan with "
                "plan_generation(timeline, settings, vae_scale=model.vae_scale, patch_size=model.patch_size)."
            )
        if plan.num_processes != world:
            raise ConfigError(
                f"the plan was made for {plan.num_processes} process(es) but the process group has {world}; plan "
                f"with plan_generation(timeline, settings, num_processes={world})."
            )
    else:
        plan = plan_generation(timeline, settings or GenerationSettings(), world, vae_scale=vae_scale,
                               patch_size=tuple(getattr(model, "patch_size", PATCH_SIZE)))
    timeline, settings = plan.timeline, plan.settings
    timings: dict[str, float] = {}

    def report(event: ProgressEvent) -> None:
        if cancel is not None and cancel():
            raise CancelledError(f"generation cancelled during {event.phase} ({event.done}/{event.total}).")
        if progress is not None:
            progress(event)

    t0 = time.perf_counter()
    report(ProgressEvent("encode", 0, len(plan.unique_captions)))
    own_denoiser = denoiser is None
    embeds = None
    if own_denoiser:
        from .text import CaptionEncoder, timeline_context

        ctx = context
        if rank == 0 and ctx is None:
            encoder = caption_encoder if caption_encoder is not None else CaptionEncoder.from_model(model)
            ctx = timeline_context(encoder, timeline, plan.negative)
        if ctx is not None:
            embeds = [ctx.unique_embeds, ctx.latent_indices, ctx.negative_embeds]
        if world > 1:  # rank 0's embeddings for everyone: encoded once, the same bits on every process
            embeds = broadcast_tensors(process_group, embeds)
            embeds[1] = embeds[1].long()
    report(ProgressEvent("encode", len(plan.unique_captions), len(plan.unique_captions)))
    timings["encode"] = time.perf_counter() - t0

    device = getattr(model, "device", None) or torch.device("cpu")
    channels = int(getattr(model, "latent_channels", 16))
    h, w = plan.latent_size
    generator = torch.Generator().manual_seed(int(settings.seed))
    noise = torch.randn((channels, plan.num_latents, h, w), generator=generator, dtype=torch.float32).to(device)

    def on_event(ev) -> None:
        report(ProgressEvent("denoise", ev.forwards, ev.total_forwards, ev.kind, ev.step, ev.num_steps, ev.window,
                             ev.num_windows, ev.sigma))

    t0 = time.perf_counter()
    with running(model, "transformer") if own_denoiser else contextlib.nullcontext() as transformer:
        if own_denoiser:
            denoiser = WanDenoiser(transformer, embeds[0], embeds[1], embeds[2], guidance_scale=float(settings.guidance))
        batch = resolve_window_batch_size(model, plan, settings) if own_denoiser else settings.fixed_window_batch_size
        if world > 1 and batch is not None:  # "auto" fits each device: the processes take the smallest
            batch = agree_on_min(process_group, batch)
        latents = run_sampler(plan.with_window_batch_size(batch).sampler, denoiser, noise, callback=on_event,
                              process_group=process_group)
    timings["denoise"] = time.perf_counter() - t0
    latents = latents.float().cpu()

    frames = None
    if decode and rank == 0:
        if getattr(model, "vae", None) is None:
            raise ConfigError("decode=True needs a model loaded with its VAE; load it with load_vae_model=True.")
        t0 = time.perf_counter()
        with running(model, "vae") as vae:
            frames = decode_latents(
                vae, latents, model.latents_mean, model.latents_std,
                progress=lambda done, total: report(ProgressEvent("decode", done, total)),
            )
        timings["decode"] = time.perf_counter() - t0
    return GenerationResult(latents=latents, frames=frames, plan=plan, settings=settings, timeline=timeline,
                            timings=timings, window_batch_size=batch or len(plan.window_spans))
