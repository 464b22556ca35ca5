"""The training loop (accelerate: devices, DDP, mixed precision, trackers).

:func:`train` reads top to bottom: set up (accelerator, latent cache, transformer, optimizer, resume), then for
every optimizer step accumulate the gradients of its micro-batches, step, log and checkpoint, and export the
transformer at the end. Each stage is one small function below it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, NumericalError
from ..fileio import atomic_write_text
from .batches import draw_batch
from .checkpoint import latest_intact_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .export import export_transformer
from .loss import df_flow_matching_loss
from .model import load_base_transformer, prepare_transformer, trainable_parameters
from .optim import lr_at_step, make_optimizer, set_learning_rate

# Settings a resumed run may change without leaving the loss curve of an uninterrupted run.
_RESUME_MAY_CHANGE = {"resume", "max_steps", "output_dir", "cache_dir", "manifest", "base_model", "checkpoint_every",
                      "keep_checkpoints", "log_every", "report_to", "export_format"}
_EXPORT_SUFFIX = {"diffusers": "", "original": "_comfyui", "lora": "_lora", "lora_original": "_lora_comfyui"}


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total (including before a resume)
    losses: list[float]  # loss of each step run by this call, in order
    output_dir: Path
    export_path: Path | None = None
    checkpoint: Path | None = None


def train(
    config: TrainConfig,
    *,
    transformer=None,
    cache=None,
    accelerator=None,
    stop_at_step: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Fine-tune with Diffusion Forcing and frame-level captions; see :mod:`framecap_core.training`.

    Args:
        config: the settings.
        transformer: a base ``WanTransformer3DModel`` (default: loaded from ``config.base_model``).
        cache: a :class:`framecap_core.data.LatentCache` (default: opened from ``config.cache_dir``).
        accelerator: an ``accelerate.Accelerator`` (default: made from the config).
        stop_at_step: stop (with a checkpoint) after this many optimizer steps in total, as if interrupted.

    Per step, ``output_dir/train_log.jsonl`` gets ``{"step", "loss", "lr", "grad_norm", "df": [per-sample draws]}``
    and the trackers get ``loss``, ``lr``, ``df/level``, ``df/step_size``, ``df/reference``.
    """
    from tqdm.auto import tqdm

    # setup
    output_dir = Path(config.output_dir)
    if accelerator is None:
        accelerator = _make_accelerator(config, output_dir)
    if cache is None:
        cache = _open_cache(config)
    text_len = _checked_text_len(cache, config)
    if transformer is None:
        transformer = load_base_transformer(config)
    transformer = prepare_transformer(transformer, config, text_len)
    params = list(trainable_parameters(transformer).values())
    optimizer = make_optimizer(params, config)
    start_step, resumed = _resume(config, output_dir, transformer, optimizer, log)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    scaler = getattr(accelerator, "scaler", None)  # fp16 loss scaling: its scale is part of an exact resume
    if resumed is not None and scaler is not None and resumed.get("extra", {}).get("scaler"):
        scaler.load_state_dict(resumed["extra"]["scaler"])
    log_path = _start_logging(accelerator, config, output_dir, start_step)

    # the loop
    end_step = config.max_steps if stop_at_step is None else min(stop_at_step, config.max_steps)
    losses: list[float] = []
    last_checkpoint = None
    bar = tqdm(total=config.max_steps, initial=start_step, desc="training", disable=not (progress and
               accelerator.is_local_main_process), unit="step")
    log_file = open(log_path, "a", encoding="utf-8") if accelerator.is_main_process else None  # noqa: SIM115
    try:
        for step in range(start_step, end_step):
            lr = lr_at_step(config, step)
            set_learning_rate(optimizer, lr)
            step_loss, draws = _accumulate_gradients(model, cache, config, step, accelerator,
                                                     patch_size=unwrapped.config.patch_size)
            grad_norm = _optimizer_step(optimizer, params, config, accelerator)
            step_loss = _mean_over_processes(step_loss, accelerator)
            draws = _draws_of_all_processes(draws, accelerator)
            losses.append(step_loss)
            done = step + 1
            _log_step(bar, log_file, accelerator, config, done, step_loss, lr, grad_norm, draws)
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == end_step:
                saved = _save_checkpoint(accelerator, output_dir, done, unwrapped, optimizer, config, text_len, scaler)
                last_checkpoint = saved or last_checkpoint
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    # the end
    final_step = max(end_step, start_step)
    export_path = _export_final(unwrapped, config, output_dir, final_step, accelerator, log)
    if config.report_to != "none":
        accelerator.end_training()
    return TrainResult(step=final_step, losses=losses, output_dir=output_dir, export_path=export_path,
                       checkpoint=last_checkpoint)


# ---------------------------------------------------------------------------------------------------------- setup


MPI_WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")


def check_all_processes_started(environ=None) -> None:
    """Refuse a run that ``accelerate launch --cpu --num_processes N`` (N > 1) started alone.

    accelerate's ``--cpu`` launcher starts several processes only through MPI (``--mpirun_hostfile``); otherwise
    it starts ONE, with the rendezvous address it sets for several (``MASTER_ADDR``) but no ``WORLD_SIZE``, and that
    process would train alone on a different global batch. Raises :class:`ConfigError` naming the commands that
    start several CPU processes.
    """
    import os

    env = os.environ if environ is None else environ
    cpu_launcher = env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes")
    started_alone = "MASTER_ADDR" in env and "WORLD_SIZE" not in env and not any(
        v in env for v in MPI_WORLD_SIZE_VARIABLES)
    if cpu_launcher and started_alone:
        raise ConfigError(
            "accelerate launch --cpu started only this one process: accelerate's CPU launcher starts several only "
            "through MPI (--mpirun_hostfile), so --num_processes N would train alone here. For N CPU processes "
            "(gloo) run accelerate launch --multi_gpu --num_processes N training/finetune.py ... (FrameCap forms a "
            "gloo group when there is no GPU) or torchrun --nproc_per_node N training/finetune.py ...; for one "
            "process drop --num_processes (or unset MASTER_ADDR)."
        )


def _make_accelerator(config: TrainConfig, output_dir: Path):
    """The accelerator; several processes (``accelerate launch --multi_gpu``, ``torchrun``) train data parallel —
    NCCL on GPUs, gloo on CPUs (accelerate only forms a CPU group when told it runs on the CPU)."""
    import os

    from accelerate import Accelerator

    check_all_processes_started()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(output_dir),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(
            f"{launched} processes were started but accelerate sees {accelerator.num_processes}; each would train "
            f"alone and overwrite the others' checkpoints. Launch with accelerate launch --multi_gpu --num_processes "
            f"{launched} or torchrun --nproc_per_node {launched}."
        )
    return accelerator


def _open_cache(config: TrainConfig):
    from ..data import LatentCache

    if not config.cache_dir:
        raise ConfigError("cache_dir is not set; set it (training/finetune.py builds the cache there from the manifest).")
    cache = LatentCache(config.cache_dir)
    built = (cache.settings.get("height"), cache.settings.get("width"))
    if None not in built and built != (config.height, config.width):
        raise ConfigError(
            f"The latent cache in {config.cache_dir!r} was built at {built[0]}x{built[1]} (height x width), but this "
            f"run trains at {config.height}x{config.width}; set cache_dir to a new folder to build a cache at this "
            f"size, or set height={built[0]} width={built[1]}.",
            field="height",
        )
    return cache


def _checked_text_len(cache, config: TrainConfig) -> int:
    """Tokens per caption of the cache, after checking that its clips fit the window and ``config.text_len``."""
    if cache.min_latents < config.window_latents:
        raise ConfigError(
            f"window_latents={config.window_latents} but the shortest cached clip has {cache.min_latents} latent "
            f"frames; lower window_latents or rebuild the dataset with longer clips."
        )
    text_len = cache.text_len
    if config.text_len is not None and config.text_len != text_len:
        raise ConfigError(
            f"text_len={config.text_len} but the latent cache holds captions of {text_len} tokens; remove text_len "
            f"from the config (it is read from the cache) or rebuild the cache with the matching text encoder."
        )
    return text_len


def _resume(config: TrainConfig, output_dir: Path, transformer, optimizer,
            log: Callable[[str], None]) -> tuple[int, dict[str, Any] | None]:
    """``(start step, checkpoint state or None)``: with ``config.resume`` ("latest" or a checkpoint folder) the
    trainable weights, optimizer state and RNG states are restored from it."""
    if config.resume == "latest":
        resume_from = latest_intact_checkpoint(output_dir, log)
    elif config.resume:
        resume_from = Path(config.resume)
    else:
        resume_from = None
    if resume_from is None:
        return 0, None
    state = load_checkpoint(resume_from, transformer, optimizer)
    start_step = int(state["step"])
    log(f"resumed from {resume_from} at step {start_step}")
    saved, now = state.get("config", {}), config.to_dict()
    changed = sorted(k for k in now if k not in _RESUME_MAY_CHANGE and k in saved and saved[k] != now[k])
    if changed:
        log(f"warning: settings changed since the checkpoint ({', '.join(changed)}); the run continues with the "
            f"new values, so it will not follow the loss curve of an uninterrupted run.")
    return start_step, state


def _start_logging(accelerator, config: TrainConfig, output_dir: Path, start_step: int) -> Path:
    """The main process writes ``config.json`` and cuts the step log back to ``start_step``; trackers start."""
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start_step)
        atomic_write_text(output_dir / "config.json", json.dumps(config.to_dict(), indent=1))
    if config.report_to != "none":
        accelerator.init_trackers("framecap", config=_flat_hparams(config))
    return log_path


def _flat_hparams(config: TrainConfig) -> dict[str, Any]:
    # TensorBoard's hparams take only scalars and strings
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.to_dict().items()}


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log records after ``last_step`` (the steps a resumed run will redo)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ----------------------------------------------------------------------------------------------------------- step


def _accumulate_gradients(model, cache, config: TrainConfig, step: int, accelerator,
                          patch_size) -> tuple[float, list[dict[str, Any]]]:
    """Forward and backward over the ``gradient_accumulation_steps`` micro-batches of optimizer step ``step``
    (gradients synchronized across processes on the last one only). Returns the step's mean loss on this process
    and the Diffusion Forcing draws of its samples."""
    accumulation = config.gradient_accumulation_steps
    step_loss = 0.0
    draws: list[dict[str, Any]] = []
    for micro in range(accumulation):
        batch = draw_batch(cache, config, step, micro, accelerator.process_index, accelerator.num_processes)
        draws.extend(batch["draws"])
        sync = micro == accumulation - 1
        ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
        with ctx, accelerator.autocast():
            loss = _micro_batch_loss(model, batch, step, accelerator.device, patch_size)
            accelerator.backward(loss / accumulation)
        step_loss += loss.detach().float().item() / accumulation
    return step_loss, draws


def _micro_batch_loss(model, batch: dict[str, Any], step: int, device, patch_size) -> torch.Tensor:
    """The Diffusion Forcing loss of one micro-batch; a non-finite loss stops the run with what to change."""
    loss = df_flow_matching_loss(
        model,
        batch["latents"].to(device),
        batch["context"].to(device),
        batch["sigmas"].to(device),
        batch["noise"].to(device),
        patch_size=patch_size,
    )
    if not torch.isfinite(loss):
        raise NumericalError(
            f"The training loss is {loss.item()} at step {step + 1} (clips "
            f"{[d['clip'] for d in batch['draws']]}); lower learning_rate, use mixed_precision=bf16 "
            f"rather than fp16, or check the latent cache for non-finite values."
        )
    return loss


def _optimizer_step(optimizer, params: list[torch.nn.Parameter], config: TrainConfig, accelerator) -> float | None:
    """Clip the gradients (when ``max_grad_norm > 0``), step, zero them; returns the norm before clipping."""
    grad_norm = None
    if config.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _mean_over_processes(value: float, accelerator) -> float:
    if accelerator.num_processes > 1:
        return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean"))
    return value


def _draws_of_all_processes(draws: list[dict[str, Any]], accelerator) -> list[dict[str, Any]]:
    """Every process's draws of the step in global sample order, so the log shows the whole global batch (the same
    records as one process drawing it alone)."""
    if accelerator.num_processes == 1:
        return draws
    from accelerate.utils import gather_object

    return sorted(gather_object(draws), key=lambda d: d["position"])


# ------------------------------------------------------------------------------------------ logging, checkpoints


def _log_step(bar, log_file, accelerator, config: TrainConfig, done: int, loss: float, lr: float,
              grad_norm: float | None, draws: list[dict[str, Any]]) -> None:
    """Progress bar, one ``train_log.jsonl`` record per step, tracker scalars every ``log_every`` steps."""
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
    if log_file is not None:
        record = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm, "df": draws, "time": time.time()}
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
    if done % config.log_every == 0 and config.report_to != "none":
        accelerator.log({
            "loss": loss,
            "lr": lr,
            "df/level": sum(d["level"] for d in draws) / len(draws),
            "df/step_size": sum(d["step_size"] for d in draws) / len(draws),
            "df/reference": sum(d["reference"] for d in draws) / len(draws),
        }, step=done)


def _save_checkpoint(accelerator, output_dir: Path, done: int, unwrapped, optimizer, config: TrainConfig,
                     text_len: int, scaler) -> Path | None:
    """Every process waits; the main one writes the checkpoint (with the fp16 loss scale) and returns its folder."""
    path = None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        extra: dict[str, Any] = {"text_len": text_len}
        if scaler is not None:
            extra["scaler"] = scaler.state_dict()
        path = save_checkpoint(output_dir, done, unwrapped, optimizer, config, extra)
    accelerator.wait_for_everyone()
    return path


def _export_final(unwrapped, config: TrainConfig, output_dir: Path, final_step: int, accelerator,
                  log: Callable[[str], None]) -> Path | None:
    """After the last step (not after a stop), the main process exports the transformer in ``export_format``."""
    if final_step < config.max_steps or config.export_format == "none" or not accelerator.is_main_process:
        return None
    path = export_transformer(
        unwrapped, output_dir / f"framecap_transformer{_EXPORT_SUFFIX[config.export_format]}.safetensors",
        format=config.export_format, config=config, base_model=config.base_model, step=final_step,
    )
    log(f"exported {path}")
    return path
