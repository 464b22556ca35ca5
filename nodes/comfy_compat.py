"""Everything the nodes need from ComfyUI, in one place, with fallbacks for when ComfyUI is absent.

Inside ComfyUI this module uses ``folder_paths`` (model and output folders), ``comfy.utils.ProgressBar`` (the
progress bar; each update also lets the server notice the user's Cancel), ``comfy.model_management``
(interrupt check, default device, freeing VRAM before a big load) and ``latent_preview`` (live previews). Outside ComfyUI (plain Python, pytest) the same
functions work on a models folder and an output folder of their own:

- models: ``FRAMECAP_MODELS_DIR`` (or :func:`set_fallback_dirs`), laid out like ComfyUI's ``models/`` folder
  (``diffusers/``, ``diffusion_models/``, ``text_encoders/``, ``vae/``, ``loras/``);
- outputs: ``FRAMECAP_OUTPUT_DIR`` (or :func:`set_fallback_dirs`), default ``./output``.

Only :mod:`nodes.native_backend` (the native MODEL path, which drives ComfyUI's own sampling function and patch
points) imports ComfyUI too, inside its functions. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

try:  # ComfyUI puts its root on sys.path, so these resolve only inside ComfyUI
    import folder_paths as _folder_paths  # type: ignore[import-not-found]
except ImportError:
    _folder_paths = None

try:
    import comfy.utils as _comfy_utils  # type: ignore[import-not-found]
except ImportError:
    _comfy_utils = None

try:
    import comfy.model_management as _model_management  # type: ignore[import-not-found]
except ImportError:
    _model_management = None

IN_COMFYUI = _folder_paths is not None

# ComfyUI folder names -> sub-folders searched by the fallback (ComfyUI's legacy names included).
_FALLBACK_SUBDIRS = {
    "diffusers": ("diffusers",),
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "loras": ("loras",),
}
_MODEL_SUFFIXES = (".safetensors", ".sft")

_fallback_models_dir: Path | None = None
_fallback_output_dir: Path | None = None


def set_fallback_dirs(models_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None) -> None:
    """Models / output folders used when ComfyUI is absent (tests, scripts). None leaves a setting unchanged."""
    global _fallback_models_dir, _fallback_output_dir
    if models_dir is not None:
        _fallback_models_dir = Path(models_dir)
    if output_dir is not None:
        _fallback_output_dir = Path(output_dir)


def _models_dir() -> Path | None:
    if _fallback_models_dir is not None:
        return _fallback_models_dir
    env = os.environ.get("FRAMECAP_MODELS_DIR", "").strip()
    return Path(env) if env else None


# ----------------------------------------------------------------------------------------------------- folders


def get_folder_paths(folder_name: str) -> list[str]:
    """Folders searched for ``folder_name`` ("diffusers", "diffusion_models", "text_encoders", "vae", "loras")."""
    if _folder_paths is not None:
        try:
            return list(_folder_paths.get_folder_paths(folder_name))
        except KeyError:
            return []
    root = _models_dir()
    if root is None:
        return []
    return [str(root / sub) for sub in _FALLBACK_SUBDIRS.get(folder_name, (folder_name,))]


def get_filename_list(folder_name: str) -> list[str]:
    """Model files (relative names, ``/``-separated) in the folders of ``folder_name``, sorted."""
    if _folder_paths is not None:
        try:
            return sorted(_folder_paths.get_filename_list(folder_name))
        except KeyError:
            return []
    names: set[str] = set()
    for base in get_folder_paths(folder_name):
        base_path = Path(base)
        if not base_path.is_dir():
            continue
        for path in base_path.rglob("*"):
            if path.is_file() and path.suffix in _MODEL_SUFFIXES:
                names.add(path.relative_to(base_path).as_posix())
    return sorted(names)


def _inside(base: Path, name: str) -> Path | None:
    """``base / name`` if it stays inside ``base`` (names come from workflows, which anyone can write)."""
    if not name or os.path.isabs(name):
        return None
    candidate = (base / name).resolve()
    try:
        candidate.relative_to(base.resolve())
    except ValueError:
        return None
    return candidate


def get_full_path(folder_name: str, filename: str) -> str | None:
    """Absolute path of ``filename`` in the folders of ``folder_name`` (None if absent or outside them)."""
    if _folder_paths is not None:
        return _folder_paths.get_full_path(folder_name, filename)
    for base in get_folder_paths(folder_name):
        path = _inside(Path(base), filename)
        if path is not None and path.is_file():
            return str(path)
    return None


def list_diffusers_folders() -> list[str]:
    """Diffusers model folders (holding ``model_index.json``) under the "diffusers" folders, as relative names."""
    found: set[str] = set()
    for base in get_folder_paths("diffusers"):
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            if "model_index.json" in files:
                found.add(Path(os.path.relpath(root, base)).as_posix())
                dirs[:] = []  # a model folder's sub-folders are its components
    return sorted(found)


def get_diffusers_folder(name: str) -> str | None:
    """Absolute path of the diffusers folder ``name`` (as listed by :func:`list_diffusers_folders`)."""
    for base in get_folder_paths("diffusers"):
        path = _inside(Path(base), name)
        if path is not None and (path / "model_index.json").is_file():
            return str(path)
    return None


def get_output_directory() -> str:
    """ComfyUI's output folder, else ``FRAMECAP_OUTPUT_DIR`` / :func:`set_fallback_dirs`, else ``./output``."""
    if _folder_paths is not None:
        return _folder_paths.get_output_directory()
    if _fallback_output_dir is not None:
        return str(_fallback_output_dir)
    return os.environ.get("FRAMECAP_OUTPUT_DIR", "").strip() or os.path.abspath("output")


def next_output_path(filename_prefix: str, extension: str) -> tuple[Path, str, str]:
    """A new file ``<output>/<subfolder>/<name>_<counter:05>_.<extension>`` as ComfyUI's savers name files.

    Returns ``(path, subfolder, file name)``; the counter continues after the highest one already in the folder.
    ``filename_prefix`` may hold sub-folders ("FrameCap/video") but may not leave the output folder.
    """
    output = Path(get_output_directory())
    prefix = (filename_prefix or "FrameCap").replace("\\", "/").strip()
    subfolder, _, name = prefix.rpartition("/")
    name = name or "FrameCap"
    folder = _inside(output, subfolder) if subfolder else output.resolve()
    if folder is None:
        raise ValueError(
            f"filename_prefix {filename_prefix!r} points outside the output folder; use a relative prefix such as "
            "'FrameCap/video'."
        )
    pattern = re.compile(rf"^{re.escape(name)}_(\d+)_")
    counter = 1
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match:
                counter = max(counter, int(match.group(1)) + 1)
    folder.mkdir(parents=True, exist_ok=True)
    file_name = f"{name}_{counter:05}_.{extension}"
    rel = folder.relative_to(output.resolve()).as_posix()
    return folder / file_name, ("" if rel == "." else rel), file_name


# ----------------------------------------------------------------------------------------- progress and cancel


class _SilentProgress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def progress_bar(total: int):
    """ComfyUI's ``ProgressBar(total)`` (``update(n)`` / ``update_absolute(v, total)``), or a silent stand-in."""
    total = max(int(total), 1)
    if _comfy_utils is not None:
        return _comfy_utils.ProgressBar(total)
    return _SilentProgress(total)


def latent_previewer(device, latent_format=None, latent_channels: int = 16):
    """ComfyUI's previewer for the user's latent-preview setting (None outside ComfyUI, with previews off, or when
    no latent format fits). ``latent_format``: the MODEL's own; else Wan2.1's when the latents have its 16 channels
    (the FrameCap loader's Wan2.1 and the toy model, whose latents are in Wan2.1's format), else None."""
    if _folder_paths is None:
        return None
    try:
        import comfy.latent_formats
        import latent_preview  # ComfyUI's own module (its root is on sys.path inside ComfyUI)
    except ImportError:
        return None
    if latent_format is None:
        if latent_channels != comfy.latent_formats.Wan21.latent_channels:
            return None
        latent_format = comfy.latent_formats.Wan21()
    return latent_preview.get_previewer(device, latent_format)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (nothing outside ComfyUI)."""
    if _model_management is not None:
        _model_management.throw_exception_if_processing_interrupted()


def cancel_requested() -> bool:
    """The ``cancel`` hook given to the core: raises ComfyUI's interrupt on Cancel, else returns False."""
    check_interrupt()
    return False


# ---------------------------------------------------------------------------------------------------- devices


def default_device() -> str:
    """ComfyUI's compute device (honours ``--cpu``), else "auto" (cuda when available)."""
    if _model_management is not None:
        return str(_model_management.get_torch_device())
    return "auto"


def free_memory_for(device: str) -> None:
    """Ask ComfyUI to unload its own models before a large load on a GPU (no-op outside ComfyUI / on the CPU)."""
    if _model_management is None or not str(device).startswith("cuda"):
        return
    _model_management.unload_all_models()
    _model_management.soft_empty_cache()
