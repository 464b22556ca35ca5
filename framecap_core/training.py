"""Diffusion Forcing fine-tuning of Wan with frame-level captions (paper sections 4.2, 4.3, 5.1).

The pieces, each a small function tested on its own:

- :class:`TrainConfig`: every setting, read from JSON / YAML plus ``key=value`` overrides.
- :func:`df_flow_matching_loss`: per-frame sigmas ``s [B, N]`` (Diffusion Forcing), ``x_s = (1 - s) x0 + s noise``,
  the model predicts ``v = noise - x0`` at per-token timesteps ``1000 s`` (scalar when a sample's frames share one),
  loss = MSE.
- :func:`draw_batch`: a deterministic batch for (seed, step, micro-step, rank): clip order is a seeded permutation
  per epoch, crops and noise come from a generator seeded by the sample's global position. Nothing random is
  carried from step to step, which is what makes resume exact.
- :func:`save_checkpoint` / :func:`load_checkpoint`: trainable weights and optimizer state as safetensors, scalars
  and RNG states as JSON, written into a temporary folder renamed into place (never pickle).
- :func:`export_transformer`: the fine-tuned transformer as one safetensors file in diffusers key names, original
  Wan / ComfyUI key names, or a LoRA adapter, with base model, training config and version in the metadata.
- :func:`train`: the loop (accelerate: devices, DDP, mixed precision, trackers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, NumericalError
from .schedule import DEFAULT_SHIFT, DFTrainingNoise, sample_df_training_sigmas

__all__ = [
    "TrainConfig",
    "TrainResult",
    "df_flow_matching_loss",
    "draw_batch",
    "export_checkpoint",
    "export_transformer",
    "frame_timesteps",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at_step",
    "save_checkpoint",
    "train",
]

CHECKPOINT_PREFIX = "step-"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """All fine-tuning settings. Defaults follow the paper where it says (full fine-tune, 81 frames = 21 latents,
    Diffusion Forcing) and common Wan fine-tuning practice elsewhere."""

    # model and data
    base_model: str = ""  # diffusers folder (with transformer/), transformer folder, or single .safetensors file
    model_config: str | None = None  # diffusers config folder for a single-file base model
    cache_dir: str = ""  # latent cache (framecap_core.data.build_latent_cache)
    manifest: str = ""  # dataset manifest; finetune.py builds the cache from it when the cache is missing
    height: int = 480  # training resolution of the cache (multiples of 16)
    width: int = 832
    vae: str | None = None  # VAE for caching (default: the base model folder's vae/)
    text_encoder: str | None = None  # text encoder for caching (default: the base model folder's)
    output_dir: str = "runs/framecap"
    text_len: int | None = None  # tokens per caption; default: what the cache holds (512 for UMT5)
    window_latents: int = 21  # training window (21 latents = 81 frames)
    # optimisation
    max_steps: int = 1000
    batch_size: int = 1  # per device
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"  # constant | linear | cosine (after warmup)
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    seed: int = 0
    # Diffusion Forcing noise (framecap_core.schedule.DFTrainingNoise)
    df_step_size_range: list[float] = field(default_factory=lambda: [0.0, 0.1])
    df_zero_step_prob: float = 0.2
    df_shift: float = DEFAULT_SHIFT
    # probability that a training window's captions are all replaced by the empty caption, so that classifier-free
    # guidance (the unconditional pass with the negative prompt "") keeps working after fine-tuning
    caption_dropout: float = 0.0
    # LoRA (rank 0 = full fine-tune)
    lora_rank: int = 0
    lora_alpha: float | None = None  # default: the rank
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # checkpoints, logging, export
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # 0 keeps all
    resume: str | None = None  # "latest", a checkpoint folder, or None
    log_every: int = 1
    report_to: str = "tensorboard"  # tensorboard | none
    export_format: str = "diffusers"  # diffusers | original | lora | lora_original | none

    _CHOICES = {
        "lr_schedule": ("constant", "linear", "cosine"),
        "mixed_precision": ("no", "bf16", "fp16"),
        "report_to": ("tensorboard", "none"),
        "export_format": ("diffusers", "original", "lora", "lora_original", "none"),
    }

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, choices in self._CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}.")
        for name in ("window_latents", "max_steps", "height", "width", "batch_size", "gradient_accumulation_steps",
                     "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1; got {value!r}.")
        for name in ("checkpoint_every", "keep_checkpoints", "lr_warmup_steps", "lora_rank", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0; got {value!r}.")
        if self.text_len is not None and (isinstance(self.text_len, bool) or not isinstance(self.text_len, int)
                                          or self.text_len < 1):
            raise ConfigError(f"text_len must be an integer >= 1 or null (from the cache); got {self.text_len!r}.")
        if isinstance(self.caption_dropout, bool) or not isinstance(self.caption_dropout, (int, float)) or not (
                0.0 <= self.caption_dropout < 1.0):
            raise ConfigError(f"caption_dropout must be a probability in [0, 1); got {self.caption_dropout!r}.")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0; got {self.learning_rate!r} (e.g. 1e-5).")
        if self.export_format.startswith("lora") and self.lora_rank == 0:
            raise ConfigError(
                f"export_format={self.export_format!r} needs lora_rank > 0; set lora_rank (e.g. 32) or export "
                f"'diffusers' / 'original'."
            )
        if len(self.df_step_size_range) != 2:
            raise ConfigError(f"df_step_size_range must be [low, high]; got {self.df_step_size_range!r}.")
        self.df_noise()  # validates the DF settings

    def df_noise(self) -> DFTrainingNoise:
        low, high = (float(x) for x in self.df_step_size_range)
        return DFTrainingNoise(step_size_range=(low, high), zero_step_prob=float(self.df_zero_step_prob),
                               shift=float(self.df_shift))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"Unknown training setting(s) {unknown}; valid ones: {', '.join(cls.field_names())}."
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
        """Read a ``.json`` or ``.yaml``/``.yml`` config, then apply ``key=value`` overrides (values parsed as JSON,
        else taken as strings: ``lora_rank=32``, ``resume=latest``, ``df_step_size_range=[0,0.2]``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Training config {str(path)!r} does not exist; see training/configs/ for examples.")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}).") from None
        if not isinstance(data, dict):
            raise ConfigError(f"Training config {str(path)!r} must be a mapping of setting -> value.")
        data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys
        return cls.from_dict(apply_overrides(data, overrides))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["lora_rank=32", "resume=latest"]`` applied to a config dict (values parsed as JSON when they parse)."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not key=value; write e.g. --set learning_rate=2e-5.")
        if key not in TrainConfig.field_names():
            raise ConfigError(f"Unknown setting {key!r} in override {item!r}; valid: {', '.join(TrainConfig.field_names())}.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if raw in ("null", "none", "None"):
            value = None
        field_type = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[key]
        if isinstance(value, int) and not isinstance(value, bool) and "float" in str(field_type):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(field_type).startswith("str"):
            value = raw
        data[key] = value
    return data


# --------------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------------


def frame_timesteps(sigmas: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Transformer timesteps for per-frame sigmas ``[B, N]``.

    Returns ``[B]`` (``1000 * s``) when every frame of each sample shares one sigma (the stock, cheaper path), else
    ``[B, N * tokens_per_frame]``: each frame's timestep repeated over its ``h*w`` tokens (frame-major, as Wan
    orders its tokens), which diffusers' Wan transformer turns into per-token modulation.
    """
    t = sigmas * 1000.0
    if bool((t == t[:, :1]).all()):
        return t[:, 0]
    return t.repeat_interleave(tokens_per_frame, dim=1)


def df_flow_matching_loss(
    transformer,
    x0: torch.Tensor,
    context: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    *,
    patch_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Flow-matching loss with per-frame noise levels.

    Args:
        x0: ``[B, C, N, h, w]`` clean normalized latents.
        context: ``[B, N*text_len, D]`` frame-major captions (frame-level attention installed), or ``[B, text_len, D]``.
        sigmas: ``[B, N]`` per-frame sigma in ``[0, 1]`` (Diffusion Forcing draw).
        noise: ``[B, C, N, h, w]`` standard normal.
        patch_size: the transformer's ``(p_t, p_h, p_w)``; default ``transformer.config.patch_size`` (pass it when
            the transformer is wrapped, e.g. by DDP).

    Returns:
        scalar ``mean((model(x_s, 1000 s) - (noise - x0))^2)`` with ``x_s = (1 - s) x0 + s noise``, in float32.
    """
    s = sigmas[:, None, :, None, None].to(x0.dtype)
    x_t = (1.0 - s) * x0 + s * noise
    target = noise - x0
    _, p_h, p_w = patch_size if patch_size is not None else transformer.config.patch_size
    timestep = frame_timesteps(sigmas, (x0.shape[-2] // p_h) * (x0.shape[-1] // p_w))
    pred = transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), target.float())


# --------------------------------------------------------------------------------------------------------------------
# Deterministic data order and randomness
# --------------------------------------------------------------------------------------------------------------------


def _derived_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@functools.lru_cache(maxsize=4)
def _epoch_order(num_clips: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_derived_seed(seed, "epoch", epoch))
    return torch.randperm(num_clips, generator=generator)


def clip_for_sample(position: int, num_clips: int, seed: int) -> int:
    """Clip of the ``position``-th sample drawn in a run: epochs walk a seeded permutation of the clips."""
    epoch, within = divmod(position, num_clips)
    return int(_epoch_order(num_clips, seed, epoch)[within])


def draw_batch(cache, config: TrainConfig, step: int, micro: int, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """The micro-batch ``micro`` of optimizer step ``step`` (0-based) on process ``rank`` of ``world``.

    Sample positions are global (``((step * accum + micro) * world + rank) * batch + b``), so data order, crops and
    noise depend only on the seed and the position: a resumed run sees exactly what an uninterrupted one would.

    Returns ``latents [B, C, N, h, w]``, ``context [B, N*text_len, D]``, ``sigmas [B, N]``, ``noise`` like latents,
    and ``draws``: per sample ``{clip, offset, reference, level, step_size, unconditional}`` for logging (with
    probability ``config.caption_dropout`` a sample's captions are all the empty caption).
    """
    noise_cfg = config.df_noise()
    empty = cache.empty_caption() if config.caption_dropout > 0 else None
    latents, contexts, sigmas, noises, draws = [], [], [], [], []
    for b in range(config.batch_size):
        position = ((step * config.gradient_accumulation_steps + micro) * world + rank) * config.batch_size + b
        generator = torch.Generator().manual_seed(_derived_seed(config.seed, "sample", position))
        window = cache.window(clip_for_sample(position, len(cache), config.seed), config.window_latents, generator)
        draw = sample_df_training_sigmas(config.window_latents, generator=generator, config=noise_cfg)
        noise = torch.randn(window["latents"].shape, generator=generator, dtype=torch.float32)
        # drawn last, so the data, crops and noise of a seed do not depend on caption_dropout
        unconditional = empty is not None and bool(torch.rand(1, generator=generator) < config.caption_dropout)
        context = empty.repeat(config.window_latents, 1) if unconditional else window["context"].float()
        latents.append(window["latents"].float())
        contexts.append(context)
        sigmas.append(draw.sigmas)
        noises.append(noise)
        draws.append({
            "clip": window["clip_id"],
            "offset": window["offset"],
            "reference": int(draw.reference),
            "level": float(draw.level),
            "step_size": float(draw.step_size),
            "unconditional": unconditional,
        })
    return {
        "latents": torch.stack(latents),
        "context": torch.stack(contexts),
        "sigmas": torch.stack(sigmas),
        "noise": torch.stack(noises),
        "draws": draws,
    }


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


# --------------------------------------------------------------------------------------------------------------------
# Model preparation
# --------------------------------------------------------------------------------------------------------------------


def load_base_transformer(config: TrainConfig):
    """The base transformer named by ``config.base_model`` in float32 (the optimizer's master weights; mixed
    precision runs the forward in bf16/fp16 through autocast): a diffusers folder, a ``transformer/`` folder, a
    single safetensors file (original / ComfyUI or diffusers key names, architecture from ``model_config`` or the
    shipped Wan2.1-T2V-1.3B config) or ``"toy"``."""
    from .models import load_transformer

    if not config.base_model:
        raise ConfigError("base_model is not set; point it at a Wan diffusers folder or a .safetensors file.")
    return load_transformer(config.base_model, config=config.model_config, dtype=torch.float32)


def prepare_transformer(transformer, config: TrainConfig, text_len: int | None = None):
    """Install frame-level attention (``text_len`` tokens per caption, default ``config.text_len``), add LoRA (when
    ``lora_rank > 0``), set trainable parameters and gradient checkpointing. Returns the transformer (in place)."""
    from .attention import install_frame_level_attention

    text_len = text_len or config.text_len
    if text_len is None:
        raise ConfigError("text_len is unknown; set it in the config or train from a latent cache (which records it).")
    install_frame_level_attention(transformer, text_len=text_len)
    if config.lora_rank > 0:
        from peft import LoraConfig

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha if config.lora_alpha is not None else config.lora_rank,
            target_modules=list(config.lora_targets),
            init_lora_weights=True,
        )
        transformer.add_adapter(lora)
        for name, param in transformer.named_parameters():
            param.requires_grad_("lora_" in name)
    else:
        transformer.requires_grad_(True)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return transformer


def trainable_parameters(transformer) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in transformer.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON, never pickle)
# --------------------------------------------------------------------------------------------------------------------


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors ``state.<param>.<key>`` and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, slots in state_dict["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, slots in rest.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(slots)
    return {"state": state, "param_groups": rest["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{i}"] = s
    return states


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    transformer,
    optimizer,
    config: TrainConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``output_dir/checkpoints/step-XXXXXXXX/`` atomically (temporary folder renamed into place).

    Contents: ``model.safetensors`` (trainable parameters by name), ``optimizer.safetensors`` (optimizer tensors,
    RNG states), ``state.json`` (step, config, optimizer scalars and param groups). Older checkpoints beyond
    ``config.keep_checkpoints`` are removed.
    """
    from safetensors.torch import save_file

    from . import __version__

    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        weights = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(transformer).items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        opt_tensors, opt_rest = _flatten_optimizer(optimizer.state_dict())
        save_file({**opt_tensors, **_rng_tensors()}, str(tmp / "optimizer.safetensors"))
        state = {
            "step": step,
            "framecap_version": __version__,
            "config": config.to_dict(),
            "optimizer": opt_rest,
            "parameter_names": list(weights),
            "extra": extra or {},
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if config.keep_checkpoints:
        for old in _checkpoints(root)[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(root: Path) -> list[Path]:
    found = []
    for path in root.glob(f"{CHECKPOINT_PREFIX}*"):
        if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", path.name) and (path / "state.json").is_file():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint folder under ``output_dir/checkpoints``, or ``None``."""
    found = _checkpoints(Path(output_dir) / "checkpoints")
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, transformer, optimizer=None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``transformer`` (and ``optimizer``).

    Returns the ``state.json`` dict (``step``, ``config``, ...). Restores the torch RNG states too.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        raise ConfigError(f"{str(path)!r} is not a FrameCap training checkpoint (no state.json); pass a step-* folder.")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    weights = load_file(str(path / "model.safetensors"))
    params = trainable_parameters(transformer)
    if set(weights) != set(params):
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise ConfigError(
            f"Checkpoint {str(path)!r} does not match the model's trainable parameters (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); resume with the same lora_rank / lora_targets / base model."
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].dtype))
    tensors = load_file(str(path / "optimizer.safetensors"))
    if optimizer is not None:
        opt = {k: v for k, v in tensors.items() if k.startswith("state.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt, state["optimizer"]))
    _restore_rng(tensors)
    return state


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------

def _merged_state_dict(transformer) -> dict[str, torch.Tensor]:
    """Full diffusers state dict; LoRA layers merged into their base weights (the model is left unmerged)."""
    lora_layers = []
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover
        LoraLayer = ()  # noqa: N806
    for module in transformer.modules():
        if LoraLayer and isinstance(module, LoraLayer):
            lora_layers.append(module)
    with torch.no_grad():
        for module in lora_layers:
            module.merge()
        try:
            state = {}
            for key, value in transformer.state_dict().items():
                if "lora_" in key:
                    continue
                state[key.replace(".base_layer.", ".")] = value.detach().cpu().contiguous().clone()
        finally:
            for module in lora_layers:
                module.unmerge()
    return state


def export_transformer(
    transformer,
    path: str | os.PathLike,
    *,
    format: str = "diffusers",  # noqa: A002 - the user-facing name
    config: TrainConfig | None = None,
    base_model: str = "",
    step: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the fine-tuned transformer as one safetensors file (atomically).

    Formats:
        - ``"diffusers"``: full state dict in diffusers key names (LoRA merged);
        - ``"original"``: full state dict in original Wan key names with the ``model.diffusion_model.`` prefix
          (drop it into ComfyUI's ``models/diffusion_models``);
        - ``"lora"``: only the LoRA weights, keys ``transformer.<module>.lora_A/B.weight`` (diffusers' LoRA format),
          the adapter config under the ``lora_adapter_metadata`` metadata key;
        - ``"lora_original"``: the same LoRA with original Wan module names behind ``diffusion_model.``
          (``diffusion_model.blocks.0.self_attn.q.lora_A.weight``), the layout ComfyUI's LoRA loader reads for Wan.

    Metadata (strings): ``framecap_format``, ``framecap_version``, ``base_model``, ``training_config`` (JSON),
    ``step``, ``text_len`` (tokens per caption it was trained with), ``frame_level_attention`` ("true": install it
    after loading).
    """
    from safetensors.torch import save_file

    from . import __version__
    from .fileio import atomic_path

    if format in ("lora", "lora_original"):
        from peft.utils import get_peft_model_state_dict

        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
        if not state:
            raise ConfigError(f"export format {format!r} needs a LoRA-trained model (lora_rank > 0).")
        if format == "lora":
            state = {f"transformer.{k}": v for k, v in state.items()}
        else:
            from .convert import transformer_to_original_keys

            state = transformer_to_original_keys(state, prefix="diffusion_model.")
    elif format in ("diffusers", "original"):
        state = _merged_state_dict(transformer)
        if format == "original":
            from .convert import transformer_to_original_keys

            state = transformer_to_original_keys(state, prefix="model.diffusion_model.")
    else:
        raise ConfigError(f"Unknown export format {format!r}; use diffusers, original, lora or lora_original.")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    from .attention import frame_level_text_len

    text_len = frame_level_text_len(transformer)
    metadata = {
        "framecap_format": format,
        "text_len": "" if text_len is None else str(text_len),
        "framecap_version": __version__,
        "base_model": base_model,
        "training_config": json.dumps(config.to_dict() if config else {}),
        "frame_level_attention": "true",
        "step": "" if step is None else str(step),
    }
    if format.startswith("lora"):
        cfg = config or TrainConfig(lora_rank=8)
        metadata["lora_adapter_metadata"] = json.dumps({
            "r": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank,
            "target_modules": list(cfg.lora_targets),
        })
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    format: str | None = None,  # noqa: A002
    transformer=None,
) -> Path:
    """Export a training checkpoint folder (``step-*``) like the end of a run would: loads the base model named in
    its config (or takes ``transformer``), re-applies LoRA and the saved weights, writes ``path``.

    ``format`` defaults to the run's ``export_format`` (``"diffusers"`` if that was ``"none"``).
    """
    checkpoint = Path(checkpoint)
    state_path = checkpoint / "state.json"
    if not state_path.is_file():
        raise ConfigError(f"{str(checkpoint)!r} is not a FrameCap training checkpoint (no state.json).")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(state["config"])
    format = format or (config.export_format if config.export_format != "none" else "diffusers")  # noqa: A001
    if transformer is None:
        transformer = load_base_transformer(config)
    text_len = state.get("extra", {}).get("text_len") or config.text_len or 512
    transformer = prepare_transformer(transformer, config, text_len)
    load_checkpoint(checkpoint, transformer)
    transformer.eval()
    return export_transformer(transformer, path, format=format, config=config, base_model=config.base_model,
                              step=int(state["step"]))


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total (including before a resume)
    losses: list[float]  # loss of each step run by this call, in order
    output_dir: Path
    export_path: Path | None = None
    checkpoint: Path | None = None


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
    from .fileio import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in kept))


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
    """Fine-tune with Diffusion Forcing and frame-level captions; see the module docstring.

    Args:
        config: the settings.
        transformer: a base ``WanTransformer3DModel`` (default: loaded from ``config.base_model``).
        cache: a :class:`framecap_core.data.LatentCache` (default: opened from ``config.cache_dir``).
        accelerator: an ``accelerate.Accelerator`` (default: made from the config).
        stop_at_step: stop (with a checkpoint) after this many optimizer steps in total, as if interrupted.

    Per step, ``output_dir/train_log.jsonl`` gets ``{"step", "loss", "lr", "grad_norm", "df": [per-sample draws]}``
    and the trackers get ``loss``, ``lr``, ``df/level``, ``df/step_size``, ``df/reference``.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .data import LatentCache

    output_dir = Path(config.output_dir)
    if accelerator is None:
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            log_with=None if config.report_to == "none" else config.report_to,
            project_dir=str(output_dir),
        )
    if cache is None:
        if not config.cache_dir:
            raise ConfigError(
                "cache_dir is not set; set it (training/finetune.py builds the cache there from the manifest)."
            )
        cache = LatentCache(config.cache_dir)
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
    if transformer is None:
        transformer = load_base_transformer(config)
    transformer = prepare_transformer(transformer, config, text_len)
    params = list(trainable_parameters(transformer).values())
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )

    start_step = 0
    resume_from = None
    if config.resume == "latest":
        resume_from = latest_checkpoint(output_dir)
    elif config.resume:
        resume_from = Path(config.resume)
    if resume_from is not None:
        state = load_checkpoint(resume_from, transformer, optimizer)
        start_step = int(state["step"])
        log(f"resumed from {resume_from} at step {start_step}")
        ignore = {"resume", "max_steps", "output_dir", "cache_dir", "manifest", "base_model", "checkpoint_every",
                  "keep_checkpoints", "log_every", "report_to", "export_format"}
        saved, now = state.get("config", {}), config.to_dict()
        changed = sorted(k for k in now if k not in ignore and k in saved and saved[k] != now[k])
        if changed:
            log(f"warning: settings changed since the checkpoint ({', '.join(changed)}); the run continues with the "
                f"new values, so it will not follow the loss curve of an uninterrupted run.")

    model, optimizer = accelerator.prepare(transformer, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    scaler = getattr(accelerator, "scaler", None)  # fp16 loss scaling: its scale is part of an exact resume
    if resume_from is not None and scaler is not None and state.get("extra", {}).get("scaler"):
        scaler.load_state_dict(state["extra"]["scaler"])
    device = accelerator.device
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start_step)
        from .fileio import atomic_write_text

        atomic_write_text(output_dir / "config.json", json.dumps(config.to_dict(), indent=1))
    if config.report_to != "none":
        accelerator.init_trackers("framecap", config=_flat_hparams(config))

    end_step = config.max_steps if stop_at_step is None else min(stop_at_step, config.max_steps)
    losses: list[float] = []
    last_checkpoint = None
    bar = tqdm(total=config.max_steps, initial=start_step, desc="training", disable=not (progress and
               accelerator.is_local_main_process), unit="step")
    log_file = open(log_path, "a", encoding="utf-8") if accelerator.is_main_process else None  # noqa: SIM115
    try:
        for step in range(start_step, end_step):
            lr = lr_at_step(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            draws: list[dict[str, Any]] = []
            for micro in range(config.gradient_accumulation_steps):
                batch = draw_batch(cache, config, step, micro, accelerator.process_index, accelerator.num_processes)
                draws.extend(batch["draws"])
                sync = micro == config.gradient_accumulation_steps - 1
                ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
                with ctx, accelerator.autocast():
                    loss = df_flow_matching_loss(
                        model,
                        batch["latents"].to(device),
                        batch["context"].to(device),
                        batch["sigmas"].to(device),
                        batch["noise"].to(device),
                        patch_size=unwrapped.config.patch_size,
                    )
                    if not torch.isfinite(loss):
                        raise NumericalError(
                            f"The training loss is {loss.item()} at step {step + 1} (clips "
                            f"{[d['clip'] for d in batch['draws']]}); lower learning_rate, use mixed_precision=bf16 "
                            f"rather than fp16, or check the latent cache for non-finite values."
                        )
                    accelerator.backward(loss / config.gradient_accumulation_steps)
                step_loss += loss.detach().float().item() / config.gradient_accumulation_steps
            grad_norm = None
            if config.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.num_processes > 1:
                step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=device), reduction="mean"))
            losses.append(step_loss)
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if log_file is not None:
                record = {"step": done, "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "df": draws,
                          "time": time.time()}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            if done % config.log_every == 0 and config.report_to != "none":
                accelerator.log({
                    "loss": step_loss,
                    "lr": lr,
                    "df/level": sum(d["level"] for d in draws) / len(draws),
                    "df/step_size": sum(d["step_size"] for d in draws) / len(draws),
                    "df/reference": sum(d["reference"] for d in draws) / len(draws),
                }, step=done)
            want_checkpoint = (config.checkpoint_every and done % config.checkpoint_every == 0) or done == end_step
            if want_checkpoint:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    extra = {"text_len": text_len}
                    if scaler is not None:
                        extra["scaler"] = scaler.state_dict()
                    last_checkpoint = save_checkpoint(output_dir, done, unwrapped, optimizer, config, extra)
                accelerator.wait_for_everyone()
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    final_step = max(end_step, start_step)
    export_path = None
    if final_step >= config.max_steps and config.export_format != "none" and accelerator.is_main_process:
        suffix = {"diffusers": "", "original": "_comfyui", "lora": "_lora", "lora_original": "_lora_comfyui"}[
            config.export_format]
        export_path = export_transformer(
            unwrapped, output_dir / f"framecap_transformer{suffix}.safetensors", format=config.export_format,
            config=config, base_model=config.base_model, step=final_step,
        )
        log(f"exported {export_path}")
    if config.report_to != "none":
        accelerator.end_training()
    return TrainResult(step=final_step, losses=losses, output_dir=output_dir, export_path=export_path,
                       checkpoint=last_checkpoint)
