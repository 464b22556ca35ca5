"""The optimizer (AdamW over the trainable parameters) and its learning-rate schedule (linear warmup, then constant /
linear / cosine)."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_at_step(config: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then constant / linear / cosine to 0."""
    base = config.learning_rate
    if step < config.lr_warmup_steps:
        return base * (step + 1) / config.lr_warmup_steps
    if config.lr_schedule == "constant":
        return base
    span = max(1, config.max_steps - config.lr_warmup_steps)
    progress = min(1.0, (step - config.lr_warmup_steps) / span)
    if config.lr_schedule == "linear":
        return base * (1.0 - progress)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))
