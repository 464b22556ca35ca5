"""Caption embeddings narrower than the transformer's ``text_dim``, read as if zero-padded to it.

Wan's transformer projects UMT5-XXL features (``text_dim`` 4096) with ``condition_embedder.text_embedder.linear_1``.
A model built with a smaller text encoder (the bundled toy model: 32 features) keeps ``text_dim`` 4096 so that its
files have the shapes ComfyUI's model detection assumes; its captions are then the encoder's features followed by
zeros. :func:`accept_narrow_text` lets the transformer take the narrow features directly: ``linear(pad(x)) =
x @ W[:, :d].T + b``, exactly the zero-padded result without building ``[B, tokens, 4096]`` tensors (which would
cost the toy model half its training time). Full-width features take the unchanged path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError

__all__ = ["ZeroPaddedInputLinear", "accept_narrow_text", "pad_text_features"]


class ZeroPaddedInputLinear(torch.nn.Linear):
    """``nn.Linear`` whose input may be narrower than ``in_features`` (``[..., d]``, ``d <= in_features``): the
    missing features are taken as zeros. Same parameters and state-dict keys as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        if d > self.in_features:
            raise ConfigError(f"Text features are {d} wide, more than the transformer's text_dim {self.in_features}; "
                              f"use the text encoder the transformer was built for.")
        return F.linear(x, self.weight[:, :d] if d < self.in_features else self.weight, self.bias)


def accept_narrow_text(transformer) -> None:
    """Let a diffusers ``WanTransformer3DModel`` take ``encoder_hidden_states [B, S, d]`` with ``d <= text_dim``, as
    if zero-padded to ``text_dim`` (in place; idempotent)."""
    linear = transformer.condition_embedder.text_embedder.linear_1
    if type(linear) is torch.nn.Linear:
        linear.__class__ = ZeroPaddedInputLinear


def pad_text_features(features: torch.Tensor, text_dim: int) -> torch.Tensor:
    """``[..., d]`` -> ``[..., text_dim]``, zeros after the first ``d`` features (for a consumer that needs the
    full width, e.g. ComfyUI's Wan model)."""
    d = features.shape[-1]
    if d > text_dim:
        raise ConfigError(f"Text features are {d} wide, more than text_dim {text_dim}; use the text encoder the "
                          f"transformer was built for.")
    return F.pad(features, (0, text_dim - d)) if d < text_dim else features
