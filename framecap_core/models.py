"""Load Wan2.1 text-to-video from the files users have, offline.

Accepted sources (``--model`` on the command line, :func:`load_wan` in code):

- a diffusers folder as ``WanPipeline.save_pretrained`` writes it (``model_index.json``, ``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), e.g. a local copy of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``;
- ComfyUI / original single files: a transformer ``wan2.1_t2v_1.3B_{fp16,bf16}.safetensors`` (original Wan key names,
  with or without the ``model.diffusion_model.`` prefix, or diffusers key names), a VAE ``wan_2.1_vae.safetensors``
  and a text encoder ``umt5_xxl_fp16.safetensors`` / ``umt5_xxl_fp8_e4m3fn_scaled.safetensors`` (the tokenizer
  embedded as a ``spiece_model`` tensor). Architectures come from the configs shipped in
  ``framecap_core/configs/wan2.1_t2v_1.3b`` unless ``config_dir`` names another diffusers-style config folder;
- a folder holding such single files (ComfyUI's ``models/`` folder or a flat folder): the files are told apart by
  their tensor names;
- ``"toy"``: the small model bundled in ``framecap_core/toy_model``.

On top of the base, ``checkpoint=`` applies a fine-tune: a full transformer state dict (diffusers or original key
names) or a LoRA (peft folder with ``adapter_config.json``, or one safetensors file in peft / diffusers
``transformer.`` / kohya ``lora_down``/``lora_up`` form), merged into the weights with ``lora_scale``.

Only safetensors are read: pickle files (``.bin``, ``.pt``, ``.ckpt``) can run code when loaded and are refused.
Every missing or mismatching file raises :class:`~framecap_core.errors.ModelLoadError` naming the file and what
was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .convert import TRANSFORMER_PREFIXES, shared_prefix, transformer_to_diffusers_keys, vae_to_diffusers_keys
from .errors import ModelLoadError

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_CONFIG_DIR = PACKAGE_DIR / "configs" / "wan2.1_t2v_1.3b"
TOY_MODEL_DIR = PACKAGE_DIR / "toy_model"
DEFAULT_TEXT_LEN = 512  # Wan pads / truncates every caption to 512 UMT5 tokens
FRAMECAP_JSON = "framecap.json"  # optional per-folder settings, e.g. {"text_len": 64} for small models

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}

# Tensor names that identify what a single file holds (checked after stripping known prefixes).
_TRANSFORMER_MARKERS = ("head.modulation", "blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight",
                        "condition_embedder.text_embedder.linear_1.weight", "patch_embedding.weight")
_VAE_MARKERS = ("decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma")
_TEXT_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight",)
_TEXT_PREFIXES = ("text_encoders.umt5xxl.transformer.", "text_encoders.t5xxl.transformer.", "umt5xxl.transformer.",
                  "t5xxl.transformer.", "text_encoder.")


# ------------------------------------------------------------------------------------------------ small helpers


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``"auto"`` / None -> cuda when available, else cpu; anything else as torch understands it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from exc


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``"bf16" | "fp16" | "fp32" | torch.dtype``; ``"auto"`` / None -> bf16 on cuda, fp32 on cpu."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; use one of bf16, fp16, fp32 or auto.") from None


def _refuse_pickle(path: Path, what: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path} is a pickle file ({path.suffix}); FrameCap only loads .safetensors because pickle files can run "
            f"code when loaded. Convert the {what} to safetensors (e.g. safetensors.torch.save_file) or use the "
            f"safetensors release of the model."
        )


def _file_identity(path: Path) -> str:
    try:
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return str(path)


def _digest(*parts: Any) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def safetensors_keys(path: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file, read from its header only."""
    from safetensors import safe_open

    path = Path(path)
    _refuse_pickle(path, "file")
    if not path.is_file():
        raise ModelLoadError(f"{path} not found.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"{path} is not a readable safetensors file ({exc}).") from None


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of ``path`` (a ``what`` file, named in errors); pickle refused."""
    from safetensors import safe_open

    path = Path(path)
    _refuse_pickle(path, what)
    if not path.is_file():
        raise ModelLoadError(f"{what} file {path} not found; expected a .safetensors file.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:
        raise ModelLoadError(f"{what} file {path} is not a readable safetensors file ({exc}).") from None


def detect_file_kind(path: str | os.PathLike) -> str:
    """What a safetensors file holds: ``"transformer"``, ``"vae"``, ``"text_encoder"``, ``"lora"`` or ``"unknown"``."""
    keys, _ = safetensors_keys(path)
    if any(".lora_A." in k or ".lora_B." in k or ".lora_down." in k or ".lora_up." in k for k in keys):
        return "lora"
    names = set(keys)
    for prefix in ("", *TRANSFORMER_PREFIXES):
        if any(prefix + m in names for m in _TRANSFORMER_MARKERS):
            return "transformer"
    if any(m in names for m in _VAE_MARKERS):
        return "vae"
    for prefix in ("", *_TEXT_PREFIXES):
        if any(prefix + m in names for m in _TEXT_MARKERS):
            return "text_encoder"
    return "unknown"


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "transformer" / "config.json").is_file())


def list_model_files(folder: str | os.PathLike, *, max_depth: int = 2) -> dict[str, list[Path]]:
    """Candidate model files under ``folder`` by kind (what a loader node offers in its drop-downs).

    Returns ``{"diffusers": [...folders], "transformer": [...], "vae": [...], "text_encoder": [...], "lora": [...]}``;
    single files are classified by their tensor names (header only), pickles and unreadable files are skipped.
    """
    folder = Path(folder)
    found: dict[str, list[Path]] = {k: [] for k in ("diffusers", "transformer", "vae", "text_encoder", "lora")}
    if not folder.is_dir():
        return found

    def walk(path: Path, depth: int) -> None:
        if is_diffusers_folder(path):
            found["diffusers"].append(path)
            return
        try:
            entries = sorted(path.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if (entry / "adapter_config.json").is_file():
                    found["lora"].append(entry)
                elif depth < max_depth:
                    walk(entry, depth + 1)
            elif entry.suffix == ".safetensors":
                try:
                    kind = detect_file_kind(entry)
                except ModelLoadError:
                    continue
                if kind in found:
                    found[kind].append(entry)

    walk(folder, 0)
    return found


def read_framecap_json(folder: str | os.PathLike | None) -> dict:
    """Settings a model folder carries in ``framecap.json`` (e.g. ``{"text_len": 64}``); {} when absent."""
    if folder is None:
        return {}
    path = Path(folder) / FRAMECAP_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object such as {{\"text_len\": 512}}.")
    return data


# ----------------------------------------------------------------------------------------------------- sources


@dataclass
class ModelSource:
    """Where each component comes from. ``folder`` is a diffusers folder (None when single files are used)."""

    folder: Path | None = None
    transformer_file: Path | None = None
    vae_file: Path | None = None
    text_encoder_file: Path | None = None
    tokenizer_path: Path | None = None
    config_dir: Path = SHIPPED_CONFIG_DIR
    settings: dict = field(default_factory=dict)  # from framecap.json
    description: str = ""

    @property
    def name(self) -> str:
        if self.folder is not None:
            return self.folder.name
        return self.transformer_file.stem if self.transformer_file else "wan"


def _pick_single(candidates: list[Path], kind: str, flag: str, where: Path) -> Path | None:
    if not candidates:
        return None
    if len(candidates) > 1:
        names = ", ".join(str(c) for c in candidates)
        raise ModelLoadError(f"Several {kind} files found under {where}: {names}. Choose one with {flag}.")
    return candidates[0]


def resolve_model_source(
    source: str | os.PathLike | None = None,
    *,
    transformer_file: str | os.PathLike | None = None,
    vae_file: str | os.PathLike | None = None,
    text_encoder_file: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
) -> ModelSource:
    """Work out which files make up the model (nothing is loaded).

    ``source``: a diffusers folder, ``"toy"``, a folder of single files, a single transformer file, or None when
    ``transformer_file`` is given. Explicit ``*_file`` arguments win over what is found in ``source``.
    """
    explicit = {
        "transformer_file": Path(transformer_file) if transformer_file else None,
        "vae_file": Path(vae_file) if vae_file else None,
        "text_encoder_file": Path(text_encoder_file) if text_encoder_file else None,
    }
    for key, path in explicit.items():
        if path is not None:
            _refuse_pickle(path, key.replace("_file", "").replace("_", " "))
            if not path.is_file():
                raise ModelLoadError(f"{key.replace('_', ' ')} {path} not found.")
    tok = Path(tokenizer_path) if tokenizer_path else None
    if tok is not None and not tok.exists():
        raise ModelLoadError(f"tokenizer {tok} not found; pass a tokenizer folder or a spiece.model file.")
    cfg = Path(config_dir) if config_dir else None
    if cfg is not None and not cfg.is_dir():
        raise ModelLoadError(f"config folder {cfg} not found; pass a folder laid out like a diffusers Wan folder.")

    folder: Path | None = None
    if source is not None and str(source) == "toy":
        if not is_diffusers_folder(TOY_MODEL_DIR):
            raise ModelLoadError(
                f"The bundled toy model is missing ({TOY_MODEL_DIR} has no model_index.json); reinstall FrameCap or "
                f"rebuild it with scripts/build_toy_model.py."
            )
        folder = TOY_MODEL_DIR
    elif source is not None:
        path = Path(source)
        if not path.exists():
            raise ModelLoadError(
                f"Model {str(source)!r} not found. --model takes a diffusers Wan folder (as written by save_pretrained),"
                f" a folder of ComfyUI single files, a transformer .safetensors file, or 'toy'."
            )
        if path.is_file():
            _refuse_pickle(path, "transformer")
            kind = detect_file_kind(path)
            if kind != "transformer":
                raise ModelLoadError(
                    f"{path} holds a {kind} model, not a Wan transformer; pass the transformer file as --model "
                    f"(e.g. wan2.1_t2v_1.3B_fp16.safetensors) and this file with its own option."
                )
            explicit["transformer_file"] = explicit["transformer_file"] or path
            # ComfyUI layout: models/diffusion_models/<file> beside models/vae and models/text_encoders (or clip).
            siblings = [path.parent.parent / name for name in ("vae", "text_encoders", "clip")]
            found = _merge_found(path.parent, *siblings)
            explicit["vae_file"] = explicit["vae_file"] or _pick_single(found["vae"], "VAE", "--vae-file", path.parent)
            explicit["text_encoder_file"] = explicit["text_encoder_file"] or _pick_single(
                found["text_encoder"], "text encoder", "--text-encoder-file", path.parent
            )
        elif is_diffusers_folder(path):
            folder = path
        else:
            found = list_model_files(path)
            if found["diffusers"] and not found["transformer"]:
                folder = _pick_single(found["diffusers"], "diffusers model", "--model", path)
            else:
                explicit["transformer_file"] = explicit["transformer_file"] or _pick_single(
                    found["transformer"], "transformer", "--transformer-file", path
                )
                explicit["vae_file"] = explicit["vae_file"] or _pick_single(found["vae"], "VAE", "--vae-file", path)
                explicit["text_encoder_file"] = explicit["text_encoder_file"] or _pick_single(
                    found["text_encoder"], "text encoder", "--text-encoder-file", path
                )
                if explicit["transformer_file"] is None:
                    pickles = [p for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
                    hint = f" (found pickle files {[str(p) for p in pickles[:3]]}, which are refused)" if pickles else ""
                    raise ModelLoadError(
                        f"{path} is neither a diffusers Wan folder (no model_index.json or transformer/config.json) nor"
                        f" a folder with a Wan transformer .safetensors file{hint}. Point --model at a diffusers folder"
                        f" or pass --transformer-file."
                    )

    if folder is None and explicit["transformer_file"] is None:
        raise ModelLoadError(
            "No model given: pass a diffusers Wan folder, 'toy', or --transformer-file (with --vae-file and "
            "--text-encoder-file) for ComfyUI single files."
        )

    settings = read_framecap_json(folder)
    if folder is not None:
        _check_diffusers_folder(folder, need_vae=explicit["vae_file"] is None,
                                need_text=explicit["text_encoder_file"] is None)
    parts = []
    if folder is not None:
        parts.append(f"diffusers folder {folder}")
    for key, path in explicit.items():
        if path is not None:
            parts.append(f"{key.replace('_file', '')} {path}")
    return ModelSource(
        folder=folder,
        transformer_file=explicit["transformer_file"],
        vae_file=explicit["vae_file"],
        text_encoder_file=explicit["text_encoder_file"],
        tokenizer_path=tok,
        config_dir=cfg or (folder if folder is not None else SHIPPED_CONFIG_DIR),
        settings=settings,
        description=", ".join(parts),
    )


def _merge_found(*folders: Path) -> dict[str, list[Path]]:
    merged: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for folder in folders:
        for kind, paths in list_model_files(folder).items():
            for p in paths:
                if p.resolve() not in seen:
                    seen.add(p.resolve())
                    merged.setdefault(kind, []).append(p)
    return {k: merged.get(k, []) for k in ("diffusers", "transformer", "vae", "text_encoder", "lora")}


def _weights_present(sub: Path, stem: str) -> bool:
    return (sub / f"{stem}.safetensors").is_file() or (sub / f"{stem}.safetensors.index.json").is_file()


def _check_diffusers_folder(folder: Path, *, need_vae: bool = True, need_text: bool = True) -> None:
    checks = [("transformer", "diffusion_pytorch_model", "--transformer-file")]
    if need_vae:
        checks.append(("vae", "diffusion_pytorch_model", "--vae-file"))
    if need_text:
        checks.append(("text_encoder", "model", "--text-encoder-file"))
    for sub, stem, flag in checks:
        path = folder / sub
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{sub}/config.json not found in {folder}; expected a diffusers-format Wan folder as written by "
                f"save_pretrained, or pass {flag}."
            )
        if not _weights_present(path, stem):
            pickles = [p.name for p in path.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
            if pickles:
                raise ModelLoadError(
                    f"{sub}/ in {folder} only has pickle weights ({', '.join(pickles)}); FrameCap loads safetensors "
                    f"only. Re-save with save_pretrained(..., safe_serialization=True) or download the safetensors "
                    f"files."
                )
            raise ModelLoadError(
                f"{sub}/{stem}.safetensors not found in {folder}; expected a diffusers-format Wan folder as written by "
                f"save_pretrained, or pass {flag}."
            )


def _component_folder(path: Path, component: str, stem: str, alternative: str) -> Path:
    """``path/component`` (or ``path`` itself) when it holds ``config.json`` and ``stem`` weights, else an error
    naming what is missing; ``alternative`` says which single file could be passed instead."""
    sub = path / component if (path / component).is_dir() else path
    if not (sub / "config.json").is_file() or not _weights_present(sub, stem):
        if sub != path:
            _check_diffusers_folder(path, need_vae=component == "vae", need_text=component == "text_encoder")
        raise ModelLoadError(
            f"{component}/{stem}.safetensors not found in {path}; expected a diffusers-format Wan folder or "
            f"{alternative}."
        )
    return sub


def _config_subdir(config_dir: Path, component: str) -> Path:
    """``config_dir/component`` when it has a config.json, else ``config_dir`` itself when it has one."""
    for candidate in (config_dir / component, config_dir):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelLoadError(
        f"No {component} config in {config_dir}: expected {config_dir / component / 'config.json'}. Pass a config "
        f"folder laid out like a diffusers Wan folder (config_dir=...)."
    )


# ---------------------------------------------------------------------------------------- state-dict loading core


def _keep_fp32(name: str, keep: list[str] | None) -> bool:
    return bool(keep) and any(m in name.split(".") for m in keep)


def _load_into_meta_model(model_cls, config, state: dict[str, torch.Tensor], *, dtype: torch.dtype, what: str,
                          path: Path, keep_fp32: list[str] | None = None, from_config=None):
    """Build ``model_cls`` without allocating weights, check ``state`` against it, and load it (fp8 upcast)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = from_config(config) if from_config else model_cls(config)
    expected = model.state_dict()
    _check_state_against(expected, state, what=what, path=path)
    ready = {}
    for name in expected:
        tensor = state[name]
        target = torch.float32 if _keep_fp32(name, keep_fp32) else dtype
        ready[name] = tensor.to(target) if tensor.is_floating_point() else tensor
    model.load_state_dict(ready, strict=True, assign=True)
    return model.eval()


def _check_state_against(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, what: str,
                         path: Path, allow_missing: bool = False) -> None:
    """Raise a ModelLoadError naming the first tensor whose shape differs, then missing / unexpected names."""
    size = _size_summary(state, expected)
    for name, tensor in state.items():
        ref = expected.get(name)
        if ref is not None and tuple(tensor.shape) != tuple(ref.shape):
            raise ModelLoadError(
                f"{what} file {path}: tensor {name!r} has shape {tuple(tensor.shape)} but the configured model expects "
                f"{tuple(ref.shape)}{size}. The file belongs to a different model size; pass the matching config "
                f"folder (config_dir=...) or a Wan2.1-T2V-1.3B file."
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if (missing and not allow_missing) or unexpected:
        detail = []
        if missing and not allow_missing:
            detail.append(f"{len(missing)} expected tensor(s) missing, e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
        raise ModelLoadError(
            f"{what} file {path} does not match the Wan2.1 {what} architecture{size}: {'; '.join(detail)}. Is it the "
            f"right kind of file (a {what}) for a Wan2.1 text-to-video model? For another size pass a matching "
            f"config_dir."
        )


def _num_blocks(keys) -> int:
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"(?:encoder\.block|blocks)\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def _size_summary(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """`` (file: 2 blocks, config: 30 blocks)`` when the layer counts differ, else ""."""
    have, want = _num_blocks(state), _num_blocks(expected)
    return f" (file: {have} blocks, config: {want} blocks)" if have and want and have != want else ""


def dequantize_scaled_fp8(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict:
    """ComfyUI ``*_fp8_e4m3fn_scaled`` layout -> plain weights: ``W = float(W_fp8) * scale_weight``.

    Drops the ``scaled_fp8`` marker and ``scale_input`` tensors; float8 tensors without a scale are upcast as is.
    """
    out = {}
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale_key = key[: -len("weight")] + "scale_weight" if key.endswith("weight") else None
            value = value.to(torch.float32)
            if scale_key and scale_key in state:
                value = value * state[scale_key].to(torch.float32)
            value = value.to(dtype)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ transformer


def load_transformer(
    source: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
):
    """A ``WanTransformer3DModel`` from a diffusers folder, a ``transformer/`` folder or a single safetensors file.

    ``config``: the config folder for single files (default: the shipped Wan2.1-T2V-1.3B configs).
    """
    from diffusers import WanTransformer3DModel

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source) if str(source) != "toy" else TOY_MODEL_DIR
    if path.is_dir():
        sub = path / "transformer" if (path / "transformer").is_dir() else path
        if not (sub / "config.json").is_file():
            raise ModelLoadError(
                f"transformer/config.json not found in {path}; expected a diffusers-format Wan folder as written by "
                f"save_pretrained, or a transformer .safetensors file."
            )
        if not _weights_present(sub, "diffusion_pytorch_model"):
            if sub != path:
                _check_diffusers_folder(path, need_vae=False, need_text=False)
            raise ModelLoadError(f"diffusion_pytorch_model.safetensors not found in {sub}.")
        model = WanTransformer3DModel.from_pretrained(str(sub), torch_dtype=dt, use_safetensors=True)
        return model.to(dev).eval()
    state, _ = read_safetensors(path, "transformer")
    state = transformer_to_diffusers_keys(state)
    state = dequantize_scaled_fp8(state, torch.float32) if _has_fp8(state) else state
    cfg_dir = _config_subdir(Path(config) if config else SHIPPED_CONFIG_DIR, "transformer")
    cfg = WanTransformer3DModel.load_config(str(cfg_dir))
    model = _load_into_meta_model(
        WanTransformer3DModel, cfg, state, dtype=dt, what="transformer", path=path,
        keep_fp32=WanTransformer3DModel._keep_in_fp32_modules, from_config=WanTransformer3DModel.from_config,
    )
    return model.to(dev)


def _has_fp8(state: dict[str, torch.Tensor]) -> bool:
    return any(v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for v in state.values())


# -------------------------------------------------------------------------------------------------------- VAE


def load_vae(
    source: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """An ``AutoencoderKLWan`` from a diffusers folder, a ``vae/`` folder or a single file (original or diffusers
    names). The VAE runs in fp32 by default, as diffusers' Wan examples do."""
    from diffusers import AutoencoderKLWan

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source) if str(source) != "toy" else TOY_MODEL_DIR
    if path.is_dir():
        sub = _component_folder(path, "vae", "diffusion_pytorch_model", "a VAE .safetensors file such as wan_2.1_vae.safetensors")
        return AutoencoderKLWan.from_pretrained(str(sub), torch_dtype=dt, use_safetensors=True).to(dev).eval()
    state, _ = read_safetensors(path, "VAE")
    state = vae_to_diffusers_keys(state)
    cfg_dir = _config_subdir(Path(config) if config else SHIPPED_CONFIG_DIR, "vae")
    cfg = AutoencoderKLWan.load_config(str(cfg_dir))
    model = _load_into_meta_model(AutoencoderKLWan, cfg, state, dtype=dt, what="VAE", path=path,
                                  from_config=AutoencoderKLWan.from_config)
    return model.to(dev)


# -------------------------------------------------------------------------------------- text encoder, tokenizer


def tokenizer_from_spiece(spiece: bytes):
    """A transformers ``T5Tokenizer`` built offline from sentencepiece model bytes (UMT5's tokenizer)."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory(prefix="framecap_spiece_") as tmp:
        (Path(tmp) / "spiece.model").write_bytes(spiece)
        return T5Tokenizer.from_pretrained(tmp, extra_ids=0)


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer from a folder (``tokenizer.json`` / ``spiece.model`` + configs) or a ``spiece.model`` file."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            keys, _ = safetensors_keys(path)
            if "spiece_model" not in keys:
                raise ModelLoadError(f"{path} has no embedded tokenizer (no 'spiece_model' tensor).")
            state, _ = read_safetensors(path, "text encoder")
            return tokenizer_from_spiece(state["spiece_model"].numpy().tobytes())
        return tokenizer_from_spiece(path.read_bytes())
    if path.is_dir():
        if (path / "tokenizer").is_dir():
            path = path / "tokenizer"
        from transformers import AutoTokenizer

        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            try:
                return AutoTokenizer.from_pretrained(str(path))
            except Exception as exc:
                if not (path / "spiece.model").is_file():
                    raise ModelLoadError(f"Could not read the tokenizer in {path} ({exc}).") from None
        if (path / "spiece.model").is_file():
            return tokenizer_from_spiece((path / "spiece.model").read_bytes())
    raise ModelLoadError(
        f"No tokenizer at {path}: expected a folder with tokenizer.json or spiece.model (the tokenizer/ folder of a "
        f"diffusers Wan model), or a spiece.model file."
    )


def _text_state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = shared_prefix(state.keys(), _TEXT_PREFIXES)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = dequantize_scaled_fp8(state, torch.float32) if _has_fp8(state) or "scaled_fp8" in state else state
    state = {k: v for k, v in state.items() if k != "spiece_model" and not k.startswith("logit_scale")}
    # UMT5EncoderModel ties encoder.embed_tokens to shared: files carry one or the other.
    emb = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    if emb is not None:
        state["shared.weight"] = emb
        state["encoder.embed_tokens.weight"] = emb
    return state


def load_text_encoder(
    source: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
):
    """``(UMT5EncoderModel, tokenizer)`` from a diffusers folder or a ComfyUI UMT5 single file (fp16/bf16/fp32 or
    fp8-scaled, tokenizer embedded as ``spiece_model`` unless ``tokenizer_path`` is given)."""
    from transformers import UMT5Config, UMT5EncoderModel

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source) if str(source) != "toy" else TOY_MODEL_DIR
    if path.is_dir():
        sub = _component_folder(path, "text_encoder", "model", "a UMT5 .safetensors file such as umt5_xxl_fp16.safetensors")
        model = UMT5EncoderModel.from_pretrained(str(sub), dtype=dt, use_safetensors=True).to(dev).eval()
        tokenizer = load_tokenizer(tokenizer_path or (path / "tokenizer" if (path / "tokenizer").is_dir() else path))
        return model, tokenizer
    raw, _ = read_safetensors(path, "text encoder")
    spiece = raw.get("spiece_model")
    state = _text_state_to_hf(raw)
    cfg_dir = _config_subdir(Path(config) if config else SHIPPED_CONFIG_DIR, "text_encoder")
    cfg = UMT5Config.from_pretrained(str(cfg_dir))
    keep = UMT5EncoderModel._keep_in_fp32_modules if dt == torch.float16 else None
    model = _load_into_meta_model(UMT5EncoderModel, cfg, state, dtype=dt, what="text encoder", path=path,
                                  keep_fp32=keep)
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
    elif spiece is not None:
        tokenizer = tokenizer_from_spiece(spiece.numpy().tobytes())
    else:
        raise ModelLoadError(
            f"text encoder file {path} has no embedded tokenizer ('spiece_model' tensor); pass --tokenizer with the "
            f"tokenizer/ folder of a diffusers Wan model or a spiece.model file."
        )
    return model.to(dev), tokenizer


# --------------------------------------------------------------------------------------------- fine-tunes, LoRA


_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_]+)?\.weight$")


def _lora_module_to_diffusers(module: str) -> str:
    for prefix in ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.", "lora_unet_"):
        if module.startswith(prefix):
            module = module[len(prefix):]
    if ".self_attn." in module or ".cross_attn." in module or re.search(r"\.ffn\.[02]$", module) or module.startswith(
        ("time_embedding.", "text_embedding.", "head.", "time_projection.")
    ):
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        (module,) = [k[: -len(".weight")] for k in convert_wan_transformer_to_diffusers({module + ".weight": None})]
    return module


def _lora_alpha_config(path: Path, metadata: dict[str, str]) -> dict:
    """LoRA settings (r, lora_alpha, use_rslora, ...): the file's own header first, then adapter_config.json."""
    for key in ("lora_adapter_metadata", "adapter_config"):
        if key in metadata:
            try:
                return json.loads(metadata[key])
            except json.JSONDecodeError:
                pass
    candidate = path / "adapter_config.json" if path.is_dir() else path.with_name("adapter_config.json")
    if candidate.is_file():
        try:
            return json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{candidate} is not valid JSON ({exc}).") from None
    return {}


def merge_lora(transformer, state: dict[str, torch.Tensor], *, scale: float = 1.0, adapter_config: dict | None = None,
               path: Path | None = None) -> int:
    """Merge LoRA weights into ``transformer`` in place: ``W += scale * (alpha / r) * B @ A``; returns the number of
    merged layers. Keys: peft (``<module>.lora_A.weight``, optionally ``base_model.model.`` / ``transformer.``
    prefixed, original Wan or diffusers module names) or kohya (``lora_down`` / ``lora_up`` with ``.alpha``)."""
    adapter_config = adapter_config or {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            alphas[_lora_module_to_diffusers(key[: -len(".alpha")])] = float(value)
            continue
        match = _LORA_KEY.match(key)
        if not match:
            raise ModelLoadError(f"LoRA file {path}: tensor {key!r} is not a LoRA weight (lora_A / lora_B expected).")
        kind = "A" if match["kind"] in ("lora_A", "lora_down") else "B"
        pairs.setdefault(_lora_module_to_diffusers(match["module"]), {})[kind] = value
    modules = dict(transformer.named_modules())
    rank_pattern = adapter_config.get("rank_pattern") or {}
    alpha_pattern = adapter_config.get("alpha_pattern") or {}
    merged = 0
    for module_name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"LoRA file {path}: {module_name} has only lora_{next(iter(ab))}; both A and B needed.")
        layer = modules.get(module_name)
        if layer is None or not hasattr(layer, "weight"):
            raise ModelLoadError(
                f"LoRA file {path}: layer {module_name!r} does not exist in the Wan transformer; the LoRA was made for "
                f"another model."
            )
        a, b = ab["A"].float(), ab["B"].float()
        weight = layer.weight
        if a.ndim != 2 or b.ndim != 2 or b.shape[0] != weight.shape[0] or a.shape[1] != weight.shape[1]:
            raise ModelLoadError(
                f"LoRA file {path}: {module_name} has A {tuple(a.shape)} / B {tuple(b.shape)}, which does not fit the "
                f"layer weight {tuple(weight.shape)}; the LoRA was made for another model size."
            )
        rank = a.shape[0]
        suffix_match = [k for k in rank_pattern if module_name.endswith(k)]
        rank_cfg = rank_pattern[suffix_match[0]] if suffix_match else adapter_config.get("r", rank)
        alpha_match = [k for k in alpha_pattern if module_name.endswith(k)]
        alpha = (alpha_pattern[alpha_match[0]] if alpha_match else
                 alphas.get(module_name, adapter_config.get("lora_alpha", rank_cfg)))
        factor = alpha / (rank**0.5 if adapter_config.get("use_rslora") else rank)
        with torch.no_grad():
            delta = (b.to(weight.device) @ a.to(weight.device)) * (factor * scale)
            weight.copy_((weight.float() + delta).to(weight.dtype))
        merged += 1
    if merged == 0:
        raise ModelLoadError(f"LoRA {path} holds no LoRA weights.")
    return merged


def apply_checkpoint(transformer, checkpoint: str | os.PathLike, *, lora_scale: float = 1.0) -> str:
    """Apply a fine-tuned checkpoint to ``transformer`` in place; returns ``"full"`` or ``"lora"``.

    Accepted: a safetensors file with a full (or partial) transformer state dict in diffusers or original key names;
    a LoRA safetensors file (peft / diffusers ``transformer.`` / kohya keys; alpha from ``adapter_config.json``
    beside it, the ``lora_adapter_metadata`` header, ``.alpha`` tensors, or alpha = rank); a peft adapter folder
    (``adapter_config.json`` + ``adapter_model.safetensors``); a diffusers folder / ``transformer/`` folder.
    """
    path = Path(checkpoint)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            weights = path / "adapter_model.safetensors"
            if not weights.is_file():
                _refuse_pickle(path / "adapter_model.bin", "LoRA") if (path / "adapter_model.bin").exists() else None
                raise ModelLoadError(f"adapter_model.safetensors not found in LoRA folder {path}.")
            state, metadata = read_safetensors(weights, "LoRA")
            merge_lora(transformer, state, scale=lora_scale, adapter_config=_lora_alpha_config(path, metadata),
                       path=weights)
            return "lora"
        for candidate in (path / "transformer" / "diffusion_pytorch_model.safetensors",
                          path / "diffusion_pytorch_model.safetensors", path / "model.safetensors"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise ModelLoadError(
                f"No checkpoint found in folder {path}: expected adapter_config.json + adapter_model.safetensors (LoRA)"
                f" or diffusion_pytorch_model.safetensors (full fine-tune)."
            )
    state, metadata = read_safetensors(path, "checkpoint")
    if any(_LORA_KEY.match(k) for k in state):
        merge_lora(transformer, state, scale=lora_scale, adapter_config=_lora_alpha_config(path, metadata), path=path)
        return "lora"
    state = transformer_to_diffusers_keys(state)
    if _has_fp8(state):
        state = dequantize_scaled_fp8(state)
    expected = transformer.state_dict()
    _check_state_against(expected, state, what="checkpoint", path=path, allow_missing=True)
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor.to(expected[name].dtype))
    return "full"


# --------------------------------------------------------------------------------------------------- the model


@dataclass
class WanModel:
    """A loaded Wan2.1 text-to-video model and what the pipeline needs to know about it.

    ``latents_mean`` / ``latents_std`` ``[16]``: the VAE's per-channel statistics (normalized latent = (z - mean) /
    std). ``id`` changes whenever any weight file, the checkpoint, the LoRA scale or the dtype changes;
    ``text_encoder_id`` only with the text encoder (what caption caches key on).
    """

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    text_len: int
    latents_mean: torch.Tensor
    latents_std: torch.Tensor
    vae_scale: int = 8
    vae_scale_temporal: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    name: str = "wan"
    id: str = ""
    text_encoder_id: str = ""
    source: str = ""
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    frame_level: bool = False
    scheduler_config: dict | None = None

    @property
    def latent_channels(self) -> int:
        return int(self.latents_mean.numel())

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_dim)


def _component_identity(folder: Path | None, sub: str, file: Path | None) -> str:
    if file is not None:
        return _file_identity(file)
    if folder is None:
        return "none"
    return ";".join(_file_identity(p) for p in sorted((folder / sub).glob("*")) if p.is_file())


def load_wan(
    source: str | os.PathLike | None = None,
    *,
    transformer_file: str | os.PathLike | None = None,
    vae_file: str | os.PathLike | None = None,
    text_encoder_file: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    lora: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
    dtype: str | torch.dtype = "auto",
    vae_dtype: str | torch.dtype = torch.float32,
    text_encoder_dtype: str | torch.dtype | None = None,
    device: str | torch.device = "auto",
    frame_level: bool = True,
    text_len: int | None = None,
    load_vae_model: bool = True,
    load_text_encoder_model: bool = True,
) -> WanModel:
    """Load a Wan2.1 text-to-video model (see the module docstring for the accepted sources).

    ``checkpoint``: a fine-tune applied on top (full state dict or LoRA, detected); ``lora``: a LoRA applied after
    it, both merged with ``lora_scale``. ``text_len``: tokens per caption (default: the folder's ``framecap.json``,
    else 512). ``frame_level``: install frame-level cross-attention on the transformer.
    """
    src = resolve_model_source(
        source, transformer_file=transformer_file, vae_file=vae_file, text_encoder_file=text_encoder_file,
        tokenizer_path=tokenizer_path, config_dir=config_dir,
    )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    te_dt = resolve_dtype(text_encoder_dtype, dev) if text_encoder_dtype is not None else dt
    vae_dt = resolve_dtype(vae_dtype, dev)

    transformer = load_transformer(src.transformer_file or src.folder, config=src.config_dir, dtype=dt, device=dev)
    applied = []
    for extra in (checkpoint, lora):
        if extra is not None:
            kind = apply_checkpoint(transformer, extra, lora_scale=lora_scale)
            applied.append(f"{kind} {extra}")

    vae = None
    vae_source = src.vae_file or src.folder
    if load_vae_model:
        if vae_source is None:
            raise ModelLoadError("No VAE given: pass --vae-file (e.g. wan_2.1_vae.safetensors) or a diffusers folder.")
        vae = load_vae(vae_source, config=src.config_dir, dtype=vae_dt, device=dev)
    vae_config = vae.config if vae is not None else _vae_config(src)

    text_encoder = tokenizer = None
    te_source = src.text_encoder_file or src.folder
    if load_text_encoder_model:
        if te_source is None:
            raise ModelLoadError(
                "No text encoder given: pass --text-encoder-file (e.g. umt5_xxl_fp16.safetensors) or a diffusers folder."
            )
        text_encoder, tokenizer = load_text_encoder(
            te_source, config=src.config_dir, tokenizer_path=src.tokenizer_path, dtype=te_dt, device=dev
        )

    settings = src.settings
    tl = int(text_len if text_len is not None else settings.get("text_len", DEFAULT_TEXT_LEN))
    if tl < 1:
        raise ModelLoadError(f"text_len must be >= 1, got {tl}.")
    if frame_level:
        from .attention import install_frame_level_attention

        install_frame_level_attention(transformer, text_len=tl)

    scheduler_config = None
    if src.folder is not None and (src.folder / "scheduler" / "scheduler_config.json").is_file():
        scheduler_config = json.loads((src.folder / "scheduler" / "scheduler_config.json").read_text())
    elif (SHIPPED_CONFIG_DIR / "scheduler" / "scheduler_config.json").is_file():
        scheduler_config = json.loads((SHIPPED_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())

    te_id = _digest(_component_identity(src.folder, "text_encoder", src.text_encoder_file),
                    src.tokenizer_path, te_dt, load_text_encoder_model)
    model_id = _digest(
        _component_identity(src.folder, "transformer", src.transformer_file),
        _component_identity(src.folder, "vae", src.vae_file), te_id, checkpoint and _file_identity(Path(checkpoint)),
        lora and _file_identity(Path(lora)), lora_scale, dt, vae_dt,
    )
    description = src.description + (f"; {'; '.join(applied)}" if applied else "")
    return WanModel(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_len=tl,
        latents_mean=torch.tensor(vae_config["latents_mean"], dtype=torch.float32),
        latents_std=torch.tensor(vae_config["latents_std"], dtype=torch.float32),
        vae_scale=int(vae_config.get("scale_factor_spatial") or 8),
        vae_scale_temporal=int(vae_config.get("scale_factor_temporal") or 4),
        patch_size=tuple(transformer.config.patch_size),
        name=src.name,
        id=model_id,
        text_encoder_id=te_id,
        source=description,
        dtype=dt,
        device=dev,
        frame_level=frame_level,
        scheduler_config=scheduler_config,
    )


def _vae_config(src: ModelSource) -> dict:
    from diffusers import AutoencoderKLWan

    base = src.folder if src.folder is not None and src.vae_file is None else src.config_dir
    return dict(AutoencoderKLWan.load_config(str(_config_subdir(Path(base), "vae"))))
