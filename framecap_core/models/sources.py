"""Which files make up a model (:func:`resolve_model_source`): a diffusers folder, ``"toy"``, a folder of ComfyUI
single files or one transformer file, completed by explicit ``*_file`` arguments; nothing is loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError
from .files import (
    PICKLE_SUFFIXES,
    SHIPPED_CONFIG_DIR,
    TOY_MODEL_DIR,
    _refuse_pickle,
    detect_file_kind,
    is_diffusers_folder,
    list_model_files,
    read_framecap_json,
)


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


# Single-file components: the ModelSource field, the kind list_model_files reports, its name in errors, its flag.
_SINGLE_FILES = (
    ("transformer_file", "transformer", "transformer", "--transformer-file"),
    ("vae_file", "vae", "VAE", "--vae-file"),
    ("text_encoder_file", "text_encoder", "text encoder", "--text-encoder-file"),
)
ComponentFiles = dict[str, Path | None]  # {"transformer_file" | "vae_file" | "text_encoder_file": path or None}


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
    files = _explicit_files(transformer_file, vae_file, text_encoder_file)
    tokenizer = _existing_tokenizer(tokenizer_path)
    config = _existing_config_dir(config_dir)
    folder, files = _locate(source, files) if source is not None else (None, files)
    if folder is None and files["transformer_file"] is None:
        raise ModelLoadError(
            "No model given: pass a diffusers Wan folder, 'toy', or --transformer-file (with --vae-file and "
            "--text-encoder-file) for ComfyUI single files."
        )
    settings = read_framecap_json(folder)
    if folder is not None:
        _check_diffusers_folder(folder, need_vae=files["vae_file"] is None,
                                need_text=files["text_encoder_file"] is None)
    return ModelSource(
        folder=folder,
        transformer_file=files["transformer_file"],
        vae_file=files["vae_file"],
        text_encoder_file=files["text_encoder_file"],
        tokenizer_path=tokenizer,
        config_dir=config or (folder if folder is not None else SHIPPED_CONFIG_DIR),
        settings=settings,
        description=_describe(folder, files),
    )


def _explicit_files(transformer_file, vae_file, text_encoder_file) -> ComponentFiles:
    """The ``*_file`` arguments as paths; each given one must be an existing safetensors file."""
    files = {
        "transformer_file": Path(transformer_file) if transformer_file else None,
        "vae_file": Path(vae_file) if vae_file else None,
        "text_encoder_file": Path(text_encoder_file) if text_encoder_file else None,
    }
    for key, path in files.items():
        if path is not None:
            _refuse_pickle(path, key.replace("_file", "").replace("_", " "))
            if not path.is_file():
                raise ModelLoadError(f"{key.replace('_', ' ')} {path} not found.")
    return files


def _existing_tokenizer(tokenizer_path: str | os.PathLike | None) -> Path | None:
    tokenizer = Path(tokenizer_path) if tokenizer_path else None
    if tokenizer is not None and not tokenizer.exists():
        raise ModelLoadError(f"tokenizer {tokenizer} not found; pass a tokenizer folder or a spiece.model file.")
    return tokenizer


def _existing_config_dir(config_dir: str | os.PathLike | None) -> Path | None:
    config = Path(config_dir) if config_dir else None
    if config is not None and not config.is_dir():
        raise ModelLoadError(f"config folder {config} not found; pass a folder laid out like a diffusers Wan folder.")
    return config


def _locate(source: str | os.PathLike, files: ComponentFiles) -> tuple[Path | None, ComponentFiles]:
    """``(diffusers folder or None, component files)`` for ``--model``: ``"toy"``, a diffusers folder, a transformer
    file (with its ComfyUI siblings) or a folder of single files."""
    if str(source) == "toy":
        return _toy_folder(), files
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(
            f"Model {str(source)!r} not found. --model takes a diffusers Wan folder (as written by save_pretrained),"
            f" a folder of ComfyUI single files, a transformer .safetensors file, or 'toy'."
        )
    if path.is_file():
        return None, _beside_transformer_file(path, files)
    if is_diffusers_folder(path):
        return path, files
    return _in_folder_of_files(path, files)


def _toy_folder() -> Path:
    if not is_diffusers_folder(TOY_MODEL_DIR):
        raise ModelLoadError(
            f"The bundled toy model is missing ({TOY_MODEL_DIR} has no model_index.json); reinstall FrameCap or "
            f"rebuild it with scripts/build_toy_model.py."
        )
    return TOY_MODEL_DIR


def _beside_transformer_file(path: Path, files: ComponentFiles) -> ComponentFiles:
    """``--model`` is a transformer file: the VAE and text encoder not given are looked for beside it."""
    _refuse_pickle(path, "transformer")
    kind = detect_file_kind(path)
    if kind != "transformer":
        raise ModelLoadError(
            f"{path} holds a {kind} model, not a Wan transformer; pass the transformer file as --model "
            f"(e.g. wan2.1_t2v_1.3B_fp16.safetensors) and this file with its own option."
        )
    files = {**files, "transformer_file": files["transformer_file"] or path}
    # ComfyUI layout: models/diffusion_models/<file> beside models/vae and models/text_encoders (or clip).
    siblings = [path.parent.parent / name for name in ("vae", "text_encoders", "clip")]
    return _fill_from(files, _merge_found(path.parent, *siblings), path.parent)


def _in_folder_of_files(path: Path, files: ComponentFiles) -> tuple[Path | None, ComponentFiles]:
    """``--model`` is a folder that is not itself a diffusers folder: one diffusers folder inside it, or single files."""
    found = list_model_files(path)
    if found["diffusers"] and not found["transformer"]:
        return _pick_single(found["diffusers"], "diffusers model", "--model", path), files
    files = _fill_from(files, found, path)
    if files["transformer_file"] is None:
        pickles = [p for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
        hint = f" (found pickle files {[str(p) for p in pickles[:3]]}, which are refused)" if pickles else ""
        raise ModelLoadError(
            f"{path} is neither a diffusers Wan folder (no model_index.json or transformer/config.json) nor"
            f" a folder with a Wan transformer .safetensors file{hint}. Point --model at a diffusers folder"
            f" or pass --transformer-file."
        )
    return None, files


def _fill_from(files: ComponentFiles, found: dict[str, list[Path]], where: Path) -> ComponentFiles:
    """Each component not given explicitly takes the one file of its kind in ``found`` (several is an error)."""
    filled = dict(files)
    for key, kind, name, flag in _SINGLE_FILES:
        if filled[key] is None:
            filled[key] = _pick_single(found[kind], name, flag, where)
    return filled


def _describe(folder: Path | None, files: ComponentFiles) -> str:
    parts = [f"diffusers folder {folder}"] if folder is not None else []
    parts += [f"{key.replace('_file', '')} {path}" for key, path in files.items() if path is not None]
    return ", ".join(parts)


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
