"""Captions for a clip's sample frames: from a vision LLM — Gemini or a local OpenAI-compatible server
(:func:`llm_annotator`) — or from an annotations file made elsewhere (:func:`load_annotations`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError

Annotator = Callable[[list[np.ndarray], list[float]], tuple[list[str], str]]
"""``(images [S] of [H, W, 3] uint8, timestamps [S] in seconds) -> (captions [S], global caption)``."""


ANNOTATOR_BACKENDS = ("gemini", "openai")


def llm_annotator(backend: str = "gemini", *, model: str | None = None, base_url: str | None = None,
                  max_side: int = 768, max_caption_tokens: int | None = None, **options: Any) -> Annotator:
    """An :data:`Annotator` over :func:`framecap_core.prompting.annotate_frames` (the shared annotation template,
    frames sent as images, adaptive shared / independent captions) by a vision LLM:

    - ``"gemini"``: Google Gemini, key from ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``;
    - ``"openai"``: an OpenAI-compatible server you run (Ollama, LM Studio, llama.cpp with ``--mmproj``, vLLM) with
      a vision model (e.g. ``qwen2.5vl:7b``); frames go as base64 ``data:`` URLs; a key only from ``OPENAI_API_KEY``.

    ``model`` / ``base_url`` ``None`` are the backend's defaults (for ``"openai"`` the vision model
    :data:`~framecap_core.prompting.DEFAULT_OPENAI_VISION_MODEL`); ``options`` are further
    :class:`~framecap_core.prompting.LLMOptions` fields (timeout, retries, backoff, ...)."""
    from ..prompting import DEFAULT_MODEL, DEFAULT_OPENAI_VISION_MODEL, GeminiOptions, OpenAIOptions, annotate_frames

    kinds = {"gemini": (GeminiOptions, DEFAULT_MODEL), "openai": (OpenAIOptions, DEFAULT_OPENAI_VISION_MODEL)}
    if backend not in kinds:
        raise DatasetError(f"Unknown annotation backend {backend!r}; use one of {', '.join(ANNOTATOR_BACKENDS)}.")
    kind, default_model = kinds[backend]
    llm = kind(model=model or default_model, base_url=base_url, **options)
    kwargs: dict[str, Any] = {"max_side": max_side, "options": llm}
    if max_caption_tokens is not None:
        kwargs["max_caption_tokens"] = max_caption_tokens

    def annotate(images: list[np.ndarray], timestamps: list[float]) -> tuple[list[str], str]:
        result = annotate_frames(images, timestamps=timestamps, **kwargs)
        return list(result.captions), result.video_caption

    return annotate


def gemini_annotator(**kwargs: Any) -> Annotator:
    """:func:`llm_annotator` with Gemini (the key from ``GEMINI_API_KEY``)."""
    return llm_annotator("gemini", **kwargs)


def load_annotations(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Captions made elsewhere: JSON Lines (or a JSON list) of ``{"clip_id": ..., "captions": [...],
    "global_caption": ...}``; instead of ``clip_id`` a line may give ``"source"`` (file name or path) and
    ``"segment"``. A single caption is used for every sample frame. Returns lookup keys -> entry."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Annotations file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8").strip()
    entries: list[Any]
    if text.startswith("["):
        entries = json.loads(text)
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{number}: invalid JSON ({exc.msg}).") from None
    table: dict[str, dict[str, Any]] = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "captions" not in entry:
            raise DatasetError(f"{path} entry {number} needs a 'captions' list (and a clip_id or source + segment).")
        captions = entry["captions"]
        if isinstance(captions, str):
            captions = [captions]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise DatasetError(f"{path} entry {number}: captions must be non-empty strings.")
        entry = {**entry, "captions": captions}
        if "clip_id" in entry:
            table[str(entry["clip_id"])] = entry
        elif "source" in entry and "segment" in entry:
            table[f"{Path(str(entry['source'])).name}#{int(entry['segment'])}"] = entry
        else:
            raise DatasetError(f"{path} entry {number} has neither clip_id nor source + segment.")
    return table
