"""A model folder's ``framecap.json``: its schema and its one reader.

::

    {
      "text_len": 16,                      # tokens per caption (default grid.TEXT_LEN = 512)
      "fps": 16,                           # any generation option at the top level is a default too
      "defaults": {"width": 64, ...},      # generation defaults (the names of `framecap generate` options)
      "build": {"seed": 0, ...},           # how the model was built (scripts/build_toy_model.py)
      "toy_world": {...},                  # the toy model's vocabulary
      "built_by": "scripts/build_toy_model.py"
    }

Every key is optional and the file itself may be absent. The loader reads ``text_len``, ``framecap generate`` and
the example workflows read the generation defaults, the paper benchmark reads ``build``. Plain json: reading it
costs nothing (dry runs use it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

__all__ = ["FRAMECAP_JSON", "GENERATION_DEFAULT_KEYS", "ModelSettings", "read_model_settings"]

FRAMECAP_JSON = "framecap.json"

# Generation options whose built-in default a model folder may replace (``framecap generate`` option names, which
# are GenerationSettings fields, plus ``seconds``).
GENERATION_DEFAULT_KEYS = ("method", "window", "overlap", "fusion", "df_step", "causal_block_size", "steps",
                           "guidance", "shift", "solver", "width", "height", "fps", "window_batch_size", "negative",
                           "seconds")


@dataclass(frozen=True)
class ModelSettings:
    """What a model folder's ``framecap.json`` says ({} / None where it says nothing).

    Attributes:
        raw: the whole JSON object.
        text_len: tokens per caption, or None (then the caller's default, ``grid.TEXT_LEN``).
        generation_defaults: generation options (top-level keys named like options, overridden by the
            ``defaults`` object).
        build: how the model was built.
    """

    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def text_len(self) -> int | None:
        value = self.raw.get("text_len")
        return None if value is None else int(value)

    @property
    def generation_defaults(self) -> dict[str, Any]:
        merged = {k: v for k, v in self.raw.items() if k in GENERATION_DEFAULT_KEYS}
        if isinstance(self.raw.get("defaults"), dict):
            merged.update({k: v for k, v in self.raw["defaults"].items() if k in GENERATION_DEFAULT_KEYS})
        return merged

    @property
    def build(self) -> dict[str, Any]:
        value = self.raw.get("build")
        return dict(value) if isinstance(value, dict) else {}


def read_model_settings(folder: str | os.PathLike | None) -> ModelSettings:
    """The ``framecap.json`` of ``folder`` (empty settings when ``folder`` is None or has none)."""
    if folder is None:
        return ModelSettings()
    path = Path(folder) / FRAMECAP_JSON
    if not path.is_file():
        return ModelSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object such as {{\"text_len\": 512}}.")
    return ModelSettings(data)
