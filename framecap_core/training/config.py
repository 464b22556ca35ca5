"""Every fine-tuning setting (:class:`TrainConfig`), read from JSON / YAML plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..limits import MAX_NUM_LATENTS, MAX_SIDE, check_int
from ..schedule import DEFAULT_SHIFT, DFTrainingNoise

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_KIND_WORDS = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "text"}


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
        self._check_types()
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

    def _check_types(self) -> None:
        """Every setting of the type its field says, numbers finite, sizes within the limits (a config file or an
        override of the wrong type is one message here, not a TypeError deep in training)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None and "None" in kind:
                continue
            base = kind.replace("| None", "").strip()
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(float(value)),
                "bool": isinstance(value, bool),
                "str": isinstance(value, str),
            }.get(base, isinstance(value, list) if base.startswith("list") else True)
            if not ok:
                raise ConfigError(
                    f"{f.name} must be {_KIND_WORDS.get(base, base)}, got {value!r}; fix it in the config or with "
                    f"--set {f.name}=VALUE.",
                    field=f.name,
                )
        for name in ("height", "width"):
            check_int(getattr(self, name), name, 16, MAX_SIDE, "use e.g. 832x480 (multiples of 16)")
        check_int(self.window_latents, "window_latents", 1, MAX_NUM_LATENTS, "use 21 (81 frames)")

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
    """``["lora_rank=32", "resume=latest"]`` applied to a config dict, each value read as its setting's type
    (:func:`parse_setting`); a value that is not of that type is refused naming the override."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not key=value; write e.g. --set learning_rate=2e-5.")
        if key not in TrainConfig.field_names():
            raise ConfigError(f"Unknown setting {key!r} in override {item!r}; valid: {', '.join(TrainConfig.field_names())}.")
        data[key] = parse_setting(key, raw.strip(), f"--set {item}")
    return data


_NONE_WORDS = ("null", "none", "None", "")
_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


def parse_setting(key: str, raw: str, where: str) -> Any:
    """The text ``raw`` read as the type of setting ``key``: ``int`` (``32``, ``1e3``), ``float`` (``2e-5``),
    ``bool`` (``true``/``false``/``1``/``0``), ``str`` (as written), a list (JSON, or comma-separated), or ``None``
    (``null`` / ``none``) where the setting allows it. Raises :class:`ConfigError` naming ``where``."""
    field_type = str({f.name: f.type for f in dataclasses.fields(TrainConfig)}[key])
    optional = "None" in field_type
    if optional and raw in _NONE_WORDS:
        return None
    base = field_type.replace("| None", "").strip()

    def refuse(kind: str, example: str) -> ConfigError:
        return ConfigError(f"{where}: {key} takes {kind}, not {raw!r}; e.g. --set {key}={example}.", field=key)

    if base == "bool":
        if raw.lower() not in _BOOL_WORDS:
            raise refuse("true or false", "true")
        return _BOOL_WORDS[raw.lower()]
    if base == "int":
        try:
            number = float(raw)
        except ValueError:
            raise refuse("a whole number", "32") from None
        if not math.isfinite(number) or not number.is_integer():
            raise refuse("a whole number", "32")
        return int(number) if abs(number) < 2**53 else int(raw)
    if base == "float":
        try:
            number = float(raw)
        except ValueError:
            raise refuse("a number", "2e-5") from None
        if not math.isfinite(number):
            raise refuse("a finite number", "2e-5")
        return number
    if base.startswith("list"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(value, list):
            value = [value]
        if "float" in base:
            try:
                return [float(v) for v in value]
            except (TypeError, ValueError):
                raise refuse("a list of numbers", "[0,0.2]") from None
        return [str(v) for v in value]
    return raw
