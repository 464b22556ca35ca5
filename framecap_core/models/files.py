"""Model files on disk: where the shipped configs and the toy model live, safetensors reading (pickle refused),
what a single file holds (told apart by its tensor names), the candidate files of a folder, ``framecap.json``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..convert import TRANSFORMER_PREFIXES
from ..errors import ModelLoadError
from ..grid import TEXT_LEN as DEFAULT_TEXT_LEN  # noqa: F401  (re-exported: Wan pads / truncates captions to it)
from ..model_settings import FRAMECAP_JSON, read_model_settings  # noqa: F401  (FRAMECAP_JSON re-exported)

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # framecap_core/
SHIPPED_CONFIG_DIR = PACKAGE_DIR / "configs" / "wan2.1_t2v_1.3b"
TOY_MODEL_DIR = PACKAGE_DIR / "toy_model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

# Tensor names that identify what a single file holds (checked after stripping known prefixes).
_TRANSFORMER_MARKERS = ("head.modulation", "blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight",
                        "condition_embedder.text_embedder.linear_1.weight", "patch_embedding.weight")
_VAE_MARKERS = ("decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma")
_TEXT_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight",)
_TEXT_PREFIXES = ("text_encoders.umt5xxl.transformer.", "text_encoders.t5xxl.transformer.", "umt5xxl.transformer.",
                  "t5xxl.transformer.", "text_encoder.")


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


def load_pretrained_folder(load: Callable[..., Any], folder: Path, what: str, **kwargs: Any) -> Any:
    """``load(folder, **kwargs)`` (a diffusers / transformers ``from_pretrained``) with every failure as one
    :class:`ModelLoadError` naming the folder.

    Each ``.safetensors`` file in ``folder`` is checked first from its header (a truncated, empty or random file
    gets the message a single file passed with ``--checkpoint`` gets), so a damaged download never reaches the
    library's own chained errors.
    """
    for weights in sorted(folder.glob("*.safetensors")):
        safetensors_keys(weights)
    try:
        return load(str(folder), **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers / transformers / safetensors / json raise many types for a damaged folder
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(
            f"Cannot load the {what} from {folder} ({type(exc).__name__}: {detail}); the folder is incomplete or "
            f"damaged: download or save it again."
        ) from None


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
    """Settings a model folder carries in ``framecap.json`` (e.g. ``{"text_len": 64}``); {} when absent
    (:func:`framecap_core.model_settings.read_model_settings`, the one reader)."""
    return read_model_settings(folder).raw
