"""Training checkpoints: trainable weights and optimizer state as safetensors, scalars and RNG states as JSON,
written into a temporary folder renamed into place (never pickle)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..fileio import remove_stale_temporaries, temporary_name_prefix
from .config import TrainConfig
from .model import trainable_parameters

CHECKPOINT_PREFIX = "step-"


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

    from .. import __version__

    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_interrupted_saves(root)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=temporary_name_prefix(final), suffix=".tmp", dir=root))
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


def _remove_interrupted_saves(root: Path) -> None:
    """Remove the temporary folders of saves that were killed: ``.step-N.PID-XXXXXXXX.tmp`` of dead processes, and
    the ``.step-N.XXXXXXXX`` folders earlier versions made (no process id; only a save makes them)."""
    remove_stale_temporaries(root)
    for path in root.glob(f".{CHECKPOINT_PREFIX}*"):
        if re.fullmatch(rf"\.{CHECKPOINT_PREFIX}\d+\.[a-z0-9_]{{8}}", path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


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


def latest_intact_checkpoint(output_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Path | None:
    """Newest checkpoint under ``output_dir/checkpoints`` whose files all read back (:func:`checkpoint_problem`);
    each newer damaged one is skipped with a ``log`` line saying why, so ``resume: latest`` falls back to the last
    good state instead of stopping (or loading half a checkpoint). ``None`` when there is none."""
    root = Path(output_dir) / "checkpoints"
    _remove_interrupted_saves(root)
    for path in reversed(_checkpoints(root)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log(f"warning: checkpoint {path} is damaged ({problem}); falling back to an earlier one.")
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from (a missing, truncated or unreadable file, a broken
    ``state.json``), or ``None`` when every file reads back. Reads the safetensors headers only."""
    from safetensors import safe_open

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no state.json"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"state.json unreadable: {exc}"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "optimizer" not in state:
        return "state.json lacks the step or the optimizer state"
    for name in ("model.safetensors", "optimizer.safetensors"):
        if not (path / name).is_file():
            return f"no {name}"
        try:
            with safe_open(str(path / name), framework="pt", device="cpu") as f:
                keys = set(f.keys())
        except Exception as exc:  # safetensors raises its own error types
            return f"{name} unreadable: {' '.join(str(exc).split())}"
        if name == "model.safetensors" and set(state.get("parameter_names", keys)) != keys:
            return "model.safetensors does not hold the parameters state.json lists"
    return None


def load_checkpoint(path: str | os.PathLike, transformer, optimizer=None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``transformer`` (and ``optimizer``).

    Returns the ``state.json`` dict (``step``, ``config``, ...). Restores the torch RNG states too. Every file is
    checked before anything is loaded, so a damaged checkpoint is one :class:`ConfigError` and the model is left
    as it was.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        raise ConfigError(f"{str(path)!r} is not a FrameCap training checkpoint (no state.json); pass a step-* folder.")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ConfigError(
            f"Checkpoint {str(path)!r} is damaged ({problem}); resume from an earlier step-* folder, or use "
            f"resume=latest, which skips damaged checkpoints."
        )
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
