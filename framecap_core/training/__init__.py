"""Diffusion Forcing fine-tuning of Wan with frame-level captions (paper sections 4.2, 4.3, 5.1).

The pieces, each a small function tested on its own, one module each:

- :class:`TrainConfig` (:mod:`.config`): every setting, read from JSON / YAML plus ``key=value`` overrides.
- :func:`df_flow_matching_loss` (:mod:`.loss`): per-frame sigmas ``s [B, N]`` (Diffusion Forcing),
  ``x_s = (1 - s) x0 + s noise``, the model predicts ``v = noise - x0`` at per-token timesteps ``1000 s`` (scalar
  when a sample's frames share one), loss = MSE.
- :func:`draw_batch` (:mod:`.batches`): a deterministic batch for (seed, step, micro-step, rank): clip order is a
  seeded permutation per epoch, crops and noise come from a generator seeded by the sample's global position.
  Nothing random is carried from step to step, which is what makes resume exact.
- :func:`prepare_transformer` (:mod:`.model`): frame-level attention, LoRA or full fine-tuning, gradient
  checkpointing; :func:`lr_at_step` (:mod:`.optim`): AdamW's learning-rate schedule.
- :func:`save_checkpoint` / :func:`load_checkpoint` (:mod:`.checkpoint`): trainable weights and optimizer state as
  safetensors, scalars and RNG states as JSON, written into a temporary folder renamed into place (never pickle).
- :func:`export_transformer` (:mod:`.export`): the fine-tuned transformer as one safetensors file in diffusers key
  names, original Wan / ComfyUI key names, or a LoRA adapter, with base model, training config and version in the
  metadata.
- :func:`train` (:mod:`.loop`): the loop (accelerate: devices, DDP, mixed precision, trackers).
"""

from .batches import clip_for_sample, draw_batch
from .checkpoint import (
    CHECKPOINT_PREFIX,
    checkpoint_problem,
    latest_checkpoint,
    latest_intact_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .config import LORA_TARGETS, TrainConfig, apply_overrides
from .export import export_checkpoint, export_transformer
from .loop import TrainResult, check_all_processes_started, train
from .loss import df_flow_matching_loss, frame_timesteps
from .model import load_base_transformer, prepare_transformer, trainable_parameters
from .optim import lr_at_step, make_optimizer, set_learning_rate

__all__ = [
    "CHECKPOINT_PREFIX",
    "LORA_TARGETS",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "check_all_processes_started",
    "clip_for_sample",
    "df_flow_matching_loss",
    "draw_batch",
    "export_checkpoint",
    "export_transformer",
    "frame_timesteps",
    "checkpoint_problem",
    "latest_checkpoint",
    "latest_intact_checkpoint",
    "load_base_transformer",
    "load_checkpoint",
    "lr_at_step",
    "make_optimizer",
    "prepare_transformer",
    "save_checkpoint",
    "set_learning_rate",
    "train",
    "trainable_parameters",
]
