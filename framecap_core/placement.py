"""Where the parts of a Wan model rest and where they run.

A generation needs one part at a time: the UMT5 text encoder while new captions are encoded, the transformer while
denoising, the VAE while decoding. ``offload`` chooses how much of the model stays on the compute device:

- ``"none"``: every part stays on the device for the whole run (the fastest when it all fits);
- ``"model"`` (default): parts rest in CPU memory and each moves to the device for its phase only, so the device
  holds one part at a time (peak = the largest phase, not the sum of the parts);
- ``"sequential"``: as ``"model"``, and the transformer's blocks stream through the device one at a time inside
  every forward (its embeddings and head stay), for cards that cannot hold the whole transformer.

``text_encoder_device="cpu"`` runs UMT5 on the CPU (it runs once per unique caption; its 11 GB of bf16 weights then
never touch the GPU). Placement moves weights, never changes arithmetic: the same seed gives the same video under
every placement on the same device.

The transformer's linear weights can be *stored* in float8 (``weight_dtype="fp8_e4m3fn"``, as ComfyUI's
``weight_dtype`` option): each linear layer casts its weight to the compute dtype (bf16) inside its forward, which
halves the weight memory of the blocks at the cost of fp8 rounding of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from . import choices
from .errors import ConfigError

OFFLOAD_MODES = tuple(choices.OFFLOAD)
WEIGHT_DTYPES = tuple(choices.WEIGHT_DTYPES)
TEXT_ENCODER_DEVICES = tuple(choices.TEXT_ENCODER_DEVICES)
COMPONENTS = ("text_encoder", "transformer", "vae")
_FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn}


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; use one of {', '.join(choices)}.")
    return value


# --------------------------------------------------------------------------------------------------------------------
# fp8 weight storage
# --------------------------------------------------------------------------------------------------------------------


class StoredWeightLinear(torch.nn.Linear):
    """A ``Linear`` whose weight is stored in a narrow dtype (float8) and cast to the input's dtype per forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


def store_linear_weights(transformer: torch.nn.Module, weight_dtype: str) -> int:
    """Store the weights of every linear layer inside the transformer's blocks in ``weight_dtype`` (in place; biases,
    norms, embeddings and the head keep their dtype); returns the number of layers converted."""
    check_choice("weight_dtype", weight_dtype, WEIGHT_DTYPES)
    if weight_dtype == "default":
        return 0
    target = _FP8[weight_dtype]
    converted = 0
    for block in getattr(transformer, "blocks", []):
        for module in block.modules():
            if type(module) is torch.nn.Linear:
                module.weight.data = module.weight.data.to(target)
                module.__class__ = StoredWeightLinear
                converted += 1
    return converted


def weight_storage(transformer: torch.nn.Module) -> str:
    """``"fp8_e4m3fn"`` when the transformer's block linears are stored in float8, else ``"default"``."""
    for module in transformer.modules():
        if isinstance(module, StoredWeightLinear):
            for name, dtype in _FP8.items():
                if module.weight.dtype == dtype:
                    return name
    return "default"


# --------------------------------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _without_child(module: torch.nn.Module, name: str) -> Iterator[None]:
    child = module._modules.pop(name)
    try:
        yield
    finally:
        module._modules[name] = child


@dataclass
class Placement:
    """Where a model's parts rest (``home``) and run (``run_device``); ``running`` moves a part for one phase.

    ``moves`` records every move as ``(part, "run" | "rest", device)`` and ``block_moves`` counts the transformer
    blocks streamed by sequential offload (tests and the curious read them).
    """

    device: torch.device
    offload: str = "model"
    text_encoder_device: str = "device"
    storage: torch.device = field(default_factory=lambda: torch.device("cpu"))
    moves: list[tuple[str, str, str]] = field(default_factory=list)
    block_moves: int = 0

    def __post_init__(self):
        self.device = torch.device(self.device)
        check_choice("offload", self.offload, OFFLOAD_MODES)
        check_choice("text_encoder_device", self.text_encoder_device, ("cpu", "device"))

    def run_device(self, part: str) -> torch.device:
        if part == "text_encoder" and self.text_encoder_device == "cpu":
            return torch.device("cpu")
        return self.device

    def home(self, part: str) -> torch.device:
        """Where ``part`` is loaded and rests between phases."""
        return self.run_device(part) if self.offload == "none" else self.storage

    @contextlib.contextmanager
    def running(self, module: torch.nn.Module | None, part: str) -> Iterator[torch.nn.Module | None]:
        """``module`` (the model's ``part``) on its run device for the ``with`` block, then back home."""
        if module is None:
            yield None
            return
        target = self.run_device(part)
        self.moves.append((part, "run", str(target)))
        hooks = []
        if part == "transformer" and self.offload == "sequential" and hasattr(module, "blocks"):
            with _without_child(module, "blocks"):
                module.to(target)
            def arrive(block, args):
                block.to(target)
                self.block_moves += 1

            def leave(block, args, out):
                block.to(self.storage)

            for block in module.blocks:
                hooks.append(block.register_forward_pre_hook(arrive))
                hooks.append(block.register_forward_hook(leave))
        else:
            module.to(target)
        try:
            yield module
        finally:
            for hook in hooks:
                hook.remove()
            home = self.home(part)
            module.to(home)
            self.moves.append((part, "rest", str(home)))


@contextlib.contextmanager
def running(model, part: str) -> Iterator[torch.nn.Module | None]:
    """The model's ``part`` ("text_encoder", "transformer" or "vae") on its run device for the ``with`` block, as
    the model's placement says; a model without a placement is used where it is."""
    module = getattr(model, part, None)
    placement = getattr(model, "placement", None)
    if placement is None:
        yield module
        return
    with placement.running(module, part) as moved:
        yield moved
