"""``framecap generate``: a timeline (or a story) -> a long multi-scene mp4 and its storyboard."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from framecap_core import choices
from framecap_core.errors import ConfigError, ModelLoadError
from framecap_core.model_settings import GENERATION_DEFAULT_KEYS, read_model_settings

DESCRIPTION = """\
Generate a long, multi-scene video with Wan2.1-T2V: every latent frame gets the caption of its scene
(frame-level cross-attention), and the video is denoised as overlapping windows of the training length.

Writes VIDEO.mp4 (H.264), VIDEO.storyboard.png (the timeline, the windows, one frame per scene, the settings)
and VIDEO.timeline.json (the exact timeline used). --dry-run prints the plan (latents, windows, window forwards
per step, the caption of every latent) without loading a model.

Windows are given in pixel frames, like the timeline and ComfyUI's context windows: --window must be 4k+1
(81 frames = 21 latents, Wan's training length) and --overlap a multiple of 4 (28 frames = 7 latents).

Methods:
""" + choices.describe_choices(choices.METHODS) + "\n"

EPILOG = """\
model sources (--model):
  a diffusers Wan folder (Wan2.1-T2V-1.3B-Diffusers), a folder of ComfyUI files (models/ with diffusion_models,
  vae, text_encoders), a transformer .safetensors file (its VAE / text encoder are looked up beside it), or "toy"
  (the bundled small model). Single files can also be named one by one with --transformer-file, --vae-file and
  --text-encoder-file. A model folder's framecap.json may carry its own defaults (e.g. width, height, steps,
  window) used for every option you do not set.

examples:
  framecap generate --model toy --prompt "A fox runs through snow. Then it leaps into a river." --seconds 10 \\
      --out fox.mp4
  framecap generate --model ./Wan2.1-T2V-1.3B-Diffusers --timeline story.json --out story.mp4 --steps 30
  framecap generate --model ComfyUI/models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors \\
      --timeline "[0s-10s: a red fox in snow] [10s-20s: the fox jumps]" --out fox.mp4 --method sliding
  framecap generate --timeline story.json --seconds 30 --dry-run

several GPUs (PMWD only; each process evaluates its share of every step's windows, rank 0 writes the video):
  torchrun --nproc_per_node=4 -m framecap_core generate --model ./Wan2.1-T2V-1.3B-Diffusers \\
      --timeline story.json --out story.mp4
"""

# Options whose built-in default a model's framecap.json may replace (option dest -> GenerationSettings field).
MODEL_DEFAULTABLE = GENERATION_DEFAULT_KEYS

TOY_MODEL_DIR = Path(__file__).resolve().parent.parent / "toy_model"


def _builtin_defaults() -> dict[str, Any]:
    from framecap_core.pipeline import GenerationSettings

    defaults = GenerationSettings().to_dict()
    defaults["fps"] = 16
    defaults["seconds"] = 5.0
    return defaults


def register(subparsers: argparse._SubParsersAction) -> None:
    d = {
        "method": "pmwd", "window": 81, "overlap": 28, "fusion": "flat", "df_step": 0, "causal_block_size": 1,
        "steps": 50, "guidance": 5.0, "shift": 5.0, "solver": "auto", "seed": 0, "width": 832, "height": 480,
        "fps": 16, "seconds": 5.0,
    }
    parser = subparsers.add_parser(
        "generate",
        help="timeline or story -> long multi-scene mp4 + storyboard",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("input")
    what = src.add_mutually_exclusive_group(required=True)
    what.add_argument("--timeline", metavar="SPEC",
                      help="timeline JSON file, or timeline text in any accepted syntax (keyframes, "
                           "[0s-5s: caption] spans, 'a | b | c' equal split, ...)")
    what.add_argument("--prompt", metavar="TEXT",
                      help="a story; it is split into scenes with frame-level captions (see --prompt-backend)")
    src.add_argument("--prompt-backend", choices=("offline", "gemini"), default="offline",
                     help="how --prompt becomes a timeline: offline splitter (default) or Gemini "
                          "(GEMINI_API_KEY / GOOGLE_API_KEY)")
    src.add_argument("--seconds", type=float, default=None, metavar="S",
                     help=f"video length in seconds, rounded to 4k+1 frames (default: the timeline's own length; "
                          f"{d['seconds']:g} for --prompt)")
    src.add_argument("--out", metavar="VIDEO.mp4", default=None,
                     help="output video; the storyboard and timeline are written beside it (required unless --dry-run)")
    src.add_argument("--dry-run", action="store_true", help="print the plan and exit without loading a model")
    src.add_argument("--no-storyboard", action="store_true", help="do not write VIDEO.storyboard.png")
    src.add_argument("--quiet", action="store_true", help="no progress bar")

    mdl = parser.add_argument_group("model")
    mdl.add_argument("--model", metavar="PATH|toy", default=None,
                     help="diffusers folder, ComfyUI models folder, transformer .safetensors file, or 'toy' "
                          "(required unless --transformer-file or --dry-run)")
    mdl.add_argument("--transformer-file", metavar="FILE", help="single-file transformer "
                     "(wan2.1_t2v_1.3B_fp16.safetensors, original/ComfyUI or diffusers key names)")
    mdl.add_argument("--vae-file", metavar="FILE", help="single-file VAE (wan_2.1_vae.safetensors)")
    mdl.add_argument("--text-encoder-file", metavar="FILE",
                     help="single-file UMT5 (umt5_xxl_fp16.safetensors or umt5_xxl_fp8_e4m3fn_scaled.safetensors)")
    mdl.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder or spiece.model, when the text encoder "
                     "file does not embed one")
    mdl.add_argument("--config-dir", metavar="DIR", help="diffusers-style config folder for single files "
                     "(default: the shipped Wan2.1-T2V-1.3B configs)")
    mdl.add_argument("--checkpoint", metavar="PATH", help="fine-tuned transformer (full safetensors or LoRA) "
                     "applied on top of the base")
    mdl.add_argument("--lora", metavar="PATH", help="LoRA adapter (peft folder or safetensors) merged after "
                     "--checkpoint")
    mdl.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default: 1.0)")
    mdl.add_argument("--dtype", choices=tuple(choices.DTYPES), default="auto",
                     help="transformer precision (default: auto = bf16 on GPU, fp32 on CPU)")
    mdl.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    mdl.add_argument("--offload", choices=tuple(choices.OFFLOAD), default="model",
                     help="what stays on the GPU: model (default) = each part (text encoder, transformer, VAE) only "
                          "while it runs; none = everything all the time (fastest when it fits); sequential = also "
                          "the transformer's blocks one at a time (smallest cards, slowest)")
    mdl.add_argument("--text-encoder-device", choices=tuple(choices.TEXT_ENCODER_DEVICES), default="auto",
                     help="where UMT5 runs (once per new caption): device, cpu (keeps its ~11 GB off the GPU), or "
                          "auto (default: the device when it fits its free memory, else the cpu)")
    mdl.add_argument("--weight-dtype", choices=tuple(choices.WEIGHT_DTYPES), default="default",
                     help="storage of the transformer's block weights: default (= --dtype) or fp8_e4m3fn (half the "
                          "memory of bf16, computed in --dtype; weights rounded to fp8)")
    mdl.add_argument("--vae-dtype", choices=tuple(choices.VAE_DTYPES), default="fp32",
                     help="VAE precision (default: fp32, as diffusers' Wan examples; bf16 halves decoding memory)")
    mdl.add_argument("--vram-gb", type=float, default=None, metavar="N",
                     help="with --dry-run: plan for a GPU of N GiB instead of the free memory of this machine's device")

    smp = parser.add_argument_group("sampling (a model's framecap.json may change the defaults shown)")
    smp.add_argument("--method", choices=tuple(choices.METHODS), default=None,
                     help=f"long-video method (default: {d['method']})")
    smp.add_argument("--window", type=int, default=None, metavar="FRAMES",
                     help=f"window length in pixel frames, 4k+1 (default: {d['window']} = 21 latents)")
    smp.add_argument("--overlap", type=int, default=None, metavar="FRAMES",
                     help=f"frames shared by consecutive windows, multiple of 4 (default: {d['overlap']} = 7 latents)")
    smp.add_argument("--fusion", choices=tuple(choices.FUSIONS), default=None,
                     help=f"PMWD weights where windows overlap (default: {d['fusion']}, the paper's average)")
    smp.add_argument("--df-step", type=int, default=None, metavar="N",
                     help=f"Diffusion Forcing step size: each block lags the previous one by N steps "
                          f"(default: {d['df_step']} = synchronous)")
    smp.add_argument("--causal-block-size", type=int, default=None, metavar="N",
                     help=f"latents per Diffusion Forcing block (default: {d['causal_block_size']})")
    smp.add_argument("--steps", type=int, default=None, help=f"sampling steps (default: {d['steps']})")
    smp.add_argument("--guidance", type=float, default=None,
                     help=f"classifier-free guidance scale, 1 = off (default: {d['guidance']})")
    smp.add_argument("--shift", type=float, default=None, help=f"flow-matching sigma shift (default: {d['shift']})")
    smp.add_argument("--solver", choices=tuple(choices.SOLVERS), default=None,
                     help="auto (default): UniPC when all latents share the timestep, else Euler")
    smp.add_argument("--seed", type=int, default=None, help=f"noise seed; same seed, same video (default: {d['seed']})")
    smp.add_argument("--width", type=int, default=None, help=f"width in pixels, multiple of 16 (default: {d['width']})")
    smp.add_argument("--height", type=int, default=None,
                     help=f"height in pixels, multiple of 16 (default: {d['height']})")
    smp.add_argument("--fps", type=int, default=None, help=f"frames per second, for seconds -> frames and the mp4 (default: {d['fps']}; a "
                          f"canonical timeline JSON's own fps wins)")
    smp.add_argument("--window-batch-size", type=_window_batch_size, default=None, metavar="K|auto",
                     help="PMWD windows per transformer call (default: auto = as many as fit the device's free "
                          "memory, all windows of a step when they fit; --dry-run shows the choice)")
    smp.add_argument("--negative", default=None, metavar="TEXT",
                     help="negative prompt (default: the timeline's, else a built-in list of artefacts)")
    smp.add_argument("--lookahead", action="store_true", help="FIFO lookahead denoising (two windows per iteration)")
    smp.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                     help="under torchrun: seconds a process waits for the others before it stops with an error "
                          "(default: 600; model loading must fit in it)")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------------ helpers


def _window_batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of windows or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or 'auto'), got {value}")
    return value


def _model_folder(args) -> Path | None:
    """The folder whose framecap.json may hold defaults (toy, a diffusers folder, or a single file's folder)."""
    if args.model is None:
        return None
    if args.model == "toy":
        return TOY_MODEL_DIR
    path = Path(args.model)
    return path if path.is_dir() else None


def model_defaults(folder: Path | None) -> dict[str, Any]:
    """Defaults a model folder carries in ``framecap.json``: top-level keys named like options, or a ``defaults``
    object (``{"defaults": {"width": 64, "height": 64, "steps": 8, "window": 17}}``); see
    :mod:`framecap_core.model_settings`. Plain json, so a dry run stays cheap."""
    return read_model_settings(folder).generation_defaults


def resolve_options(args) -> dict[str, Any]:
    """Flag if given, else the model's default, else the built-in default."""
    builtin = _builtin_defaults()
    from_model = model_defaults(_model_folder(args))
    values = {}
    for name in MODEL_DEFAULTABLE:
        flag = getattr(args, name, None)
        values[name] = flag if flag is not None else from_model.get(name, builtin.get(name))
    values["seed"] = args.seed if args.seed is not None else 0
    values["model_seconds"] = from_model.get("seconds")
    return values


def build_timeline(args, opts: dict[str, Any]):
    from framecap_core.errors import TimelineError
    from framecap_core.timeline import check_seconds, frames_for_seconds, parse_timeline

    fps = int(opts["fps"])
    if args.prompt is not None:
        from framecap_core.prompting import build_timeline as story_to_timeline

        seconds = float(args.seconds if args.seconds is not None else opts["seconds"])
        return story_to_timeline(args.prompt, seconds=seconds, fps=fps, backend=args.prompt_backend,
                                 negative=opts["negative"] or "")
    num_frames = check_seconds(args.seconds, fps) if args.seconds is not None else None
    try:
        return parse_timeline(args.timeline, num_frames=num_frames, fps=fps)
    except TimelineError as exc:
        if num_frames is None and "does not say how long" in str(exc):
            if opts.get("model_seconds") is not None:  # the model folder's default length
                return parse_timeline(args.timeline, num_frames=frames_for_seconds(float(opts["model_seconds"]), fps),
                                      fps=fps)
            raise TimelineError(f"{exc} On the command line: add --seconds S.") from None
        raise


def build_settings(opts: dict[str, Any], args):
    from framecap_core.pipeline import GenerationSettings

    return GenerationSettings(
        method=opts["method"], window=int(opts["window"]), overlap=int(opts["overlap"]), fusion=opts["fusion"],
        df_step=int(opts["df_step"]), causal_block_size=int(opts["causal_block_size"]), steps=int(opts["steps"]),
        guidance=float(opts["guidance"]), shift=float(opts["shift"]), solver=opts["solver"], seed=int(opts["seed"]),
        width=int(opts["width"]), height=int(opts["height"]), fps=None, dtype=args.dtype,
        device=args.device, window_batch_size=opts["window_batch_size"], negative=opts["negative"],
        lookahead=bool(args.lookahead),
    ).validate()


class _ProgressBar:
    """tqdm bars: window forwards while denoising (with the step), then latents while decoding."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.phase = None

    def __call__(self, event) -> None:
        if not self.enabled or event.phase == "encode":
            return
        from tqdm import tqdm

        if event.phase != self.phase:
            self.close()
            self.phase = event.phase
            unit = "fwd" if event.phase == "denoise" else "latent"
            self.bar = tqdm(total=event.total, desc=event.phase, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self.bar.n = event.done
        if event.phase == "denoise":
            self.bar.set_postfix_str(f"step {event.step + 1}/{event.num_steps} sigma {event.sigma:.3f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _silence_loading_bars() -> None:
    """--quiet means no bar at all: diffusers' and transformers' weight-loading bars too, not only FrameCap's."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def describe_memory(args, plan, settings) -> str:
    """The memory plan of a dry run: per-phase peaks on the device (or a ``--vram-gb`` card), a verdict, and the
    settings that fit when these do not. Architectures come from the model's configs (the shipped Wan2.1-T2V-1.3B
    ones when no model is given); nothing is loaded."""
    import torch

    from framecap_core.memory import (
        GiB,
        ModelArchitecture,
        device_budget,
        plan_generation_memory,
        text_encoder_fits,
        verdict,
    )
    from framecap_core.models import SHIPPED_CONFIG_DIR, resolve_device, resolve_dtype, resolve_model_source

    config_dir, assumed = SHIPPED_CONFIG_DIR, " (no --model: Wan2.1-T2V-1.3B assumed)"
    if args.model is not None or args.transformer_file is not None:
        try:  # a dry run plans without the files too
            source = resolve_model_source(args.model, transformer_file=args.transformer_file, vae_file=args.vae_file,
                                          text_encoder_file=args.text_encoder_file, tokenizer_path=args.tokenizer,
                                          config_dir=args.config_dir)
            config_dir = source.config_dir if source.folder is None or args.config_dir else source.folder
            assumed = ""
        except ModelLoadError:
            assumed = " (model files not found: Wan2.1-T2V-1.3B assumed)"
    if args.vram_gb is not None:
        if args.vram_gb <= 0:
            raise ConfigError(f"--vram-gb must be a positive number of GiB, got {args.vram_gb:g}; e.g. --vram-gb 12.")
        device = "cpu" if args.device == "cpu" else "cuda"
        budget, source_text = int(args.vram_gb * GiB), f"--vram-gb {args.vram_gb:g}"
    else:
        dev = resolve_device(args.device)
        device = dev.type
        budget, source_text = device_budget(dev)
    dtype = resolve_dtype(args.dtype, torch.device(device))
    arch = ModelArchitecture.from_config_dir(config_dir, dtype=dtype, weight_dtype=args.weight_dtype,
                                             vae_dtype=resolve_dtype(args.vae_dtype))
    te_device = args.text_encoder_device
    if te_device == "auto":  # as the loader decides: the device when UMT5 and its captions fit the budget
        te_device = "device" if device == "cpu" or text_encoder_fits(arch, budget, len(plan.unique_captions)) else "cpu"
    memory, alternative = plan_generation_memory(arch, plan, settings, device=device, budget=budget,
                                                 budget_source=source_text, offload=args.offload,
                                                 text_encoder_device=te_device)
    return f"{memory.describe()}\n  architectures from {config_dir}{assumed}\n{verdict(memory, alternative)}"


def _legend(settings, plan, model_name: str) -> dict[str, Any]:
    return {
        "model": model_name,
        "method": settings.method,
        "window": f"{settings.window} frames ({plan.window_latents} latents)",
        "overlap": f"{settings.overlap} frames ({plan.overlap_latents} latents)",
        "fusion": settings.fusion,
        "steps": plan.num_steps,
        "solver": plan.solver,
        "guidance": settings.guidance,
        "shift": settings.shift,
        "df_step": settings.df_step,
        "seed": settings.seed,
        "size": f"{settings.width}x{settings.height}",
        "forwards": plan.total_forwards,
    }


# ---------------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    opts = resolve_options(args)
    if world > 1 and not args.dry_run:
        return _run_distributed(args, opts, build_settings(opts, args))
    timeline = build_timeline(args, opts)
    settings = build_settings(opts, args)

    from framecap_core.pipeline import plan_generation

    plan = plan_generation(timeline, settings, num_processes=world)
    if args.dry_run:
        if int(os.environ.get("RANK", "0")) == 0:
            print(plan.describe(timeline, settings))
            print(describe_memory(args, plan, settings))
        return 0
    return _generate_and_write(args, timeline, settings, plan)


def _run_distributed(args, opts, settings) -> int:
    """One of the processes ``torchrun`` started: join the group, generate with the windows shared, and — on rank 0
    only — print, decode and write."""
    import torch.distributed as dist

    from framecap_core.distributed import broadcast_text, init_from_environment
    from framecap_core.pipeline import plan_generation
    from framecap_core.timeline import parse_timeline

    group, device = init_from_environment(args.device, timeout_s=args.dist_timeout)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if args.prompt is not None and args.prompt_backend == "gemini":  # ask the remote model once
            timeline = parse_timeline(broadcast_text(group, build_timeline(args, opts).to_json() if rank == 0
                                                     else None))
        else:
            timeline = build_timeline(args, opts)
        plan = plan_generation(timeline, settings, num_processes=world)
        return _generate_and_write(args, timeline, settings, plan, group=group, rank=rank, device=device)
    finally:
        dist.destroy_process_group()


def _generate_and_write(args, timeline, settings, plan, *, group=None, rank: int = 0, device: str | None = None
                        ) -> int:
    if args.vram_gb is not None:
        raise ConfigError("--vram-gb plans for another card and goes with --dry-run; a real run measures the free "
                          "memory of its own device.")
    if args.out is None:
        raise ConfigError("--out is required (the mp4 to write), e.g. --out video.mp4; or use --dry-run.")
    if args.model is None and args.transformer_file is None:
        raise ConfigError("--model is required: a diffusers Wan folder, a ComfyUI models folder, a transformer "
                          ".safetensors file, or 'toy' (or give --transformer-file).")
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise ConfigError(f"--out must end in .mp4, got {str(out)!r}; e.g. --out {out.with_suffix('.mp4')}.")
    # Before the model is loaded: a path that cannot be written must not cost a generation.
    from framecap_core.fileio import check_output_path
    from framecap_core.output import storyboard_path, timeline_path

    check_output_path(out, "--out")
    for beside in (timeline_path(out), storyboard_path(out)):
        check_output_path(beside, f"--out (the file beside it, {beside.name})")

    from framecap_core.models import load_wan, resolve_model_source
    from framecap_core.output import write_outputs
    from framecap_core.pipeline import generate, plan_generation

    # Find the model's files (cheap: paths and safetensors headers) before printing the plan, so that a missing or
    # wrong model is reported first and alone rather than under the plan.
    resolve_model_source(
        args.model, transformer_file=args.transformer_file, vae_file=args.vae_file,
        text_encoder_file=args.text_encoder_file, tokenizer_path=args.tokenizer, config_dir=args.config_dir,
    )
    if not math.isfinite(args.lora_scale):
        raise ConfigError(f"--lora-scale must be a finite number, got {args.lora_scale}; use 1.0 (0 turns it off).")
    for flag, value in (("--checkpoint", args.checkpoint), ("--lora", args.lora)):
        if value is not None and not Path(value).exists():
            raise ModelLoadError(f"{flag} {value} not found; pass a .safetensors file or a folder that exists.")
    main = rank == 0  # with torchrun, only rank 0 prints, needs the VAE and text encoder, and writes
    if not args.quiet and main:
        print(plan.headline(), file=sys.stderr)
    else:
        _silence_loading_bars()
    model = load_wan(
        args.model, transformer_file=args.transformer_file, vae_file=args.vae_file,
        text_encoder_file=args.text_encoder_file, tokenizer_path=args.tokenizer, config_dir=args.config_dir,
        checkpoint=args.checkpoint, lora=args.lora, lora_scale=args.lora_scale, dtype=args.dtype,
        device=device or args.device, load_vae_model=main, load_text_encoder_model=main,
        vae_dtype=args.vae_dtype, offload=args.offload, text_encoder_device=args.text_encoder_device,
        weight_dtype=args.weight_dtype,
    )
    if model.vae_scale != plan.vae_scale:  # a model with another VAE stride: its latents have another size
        plan = plan_generation(timeline, settings, plan.num_processes, vae_scale=model.vae_scale,
                               patch_size=model.patch_size)
    bar = _ProgressBar(enabled=not args.quiet and main)
    try:
        result = generate(model, plan, progress=bar, process_group=group)
    finally:
        bar.close()
    if not main:
        return 0

    fps = int(timeline.fps)  # the timeline's frames are laid out at its own fps
    files = write_outputs(result.frames, out, fps=fps, timeline=timeline, storyboard=not args.no_storyboard,
                          window_spans=plan.window_spans, title=f"FrameCap: {out.name}",
                          legend=_legend(settings, plan, model.name))
    written = [str(files.video)] + ([str(files.storyboard)] if files.storyboard else [])
    t = result.timings
    print(
        f"wrote {', '.join(written)} ({result.frames.shape[0]} frames, {result.frames.shape[0] / fps:.2f} s); "
        f"encode {t.get('encode', 0):.1f} s, denoise {t.get('denoise', 0):.1f} s, decode {t.get('decode', 0):.1f} s"
    )
    return 0
