"""Caption encoding for frame-level captions: each unique caption once, cached, then stacked per window.

Wan's text conditioning (diffusers ``WanPipeline._get_t5_prompt_embeds``): clean the prompt, tokenize to exactly
``text_len`` tokens (512 for Wan, padding and truncation), run the UMT5 encoder *with* the attention mask, then zero
every position past the caption's true length. The transformer attends to all ``text_len`` positions without a
mask, so the zeros are part of the conditioning and must be reproduced exactly.

A timeline of ``L`` latent frames usually has a handful of distinct captions: they are encoded once into
``unique_embeds [U, text_len, D]``, each latent frame points at its caption with ``latent_indices [L]``, and a
window of latent frames gets its frame-major context ``[K, N*text_len, D]`` by indexing (no re-encoding;
:meth:`framecap_core.backend.WanDenoiser.context`).
"""

from __future__ import annotations

import contextlib
import html
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .grid import TEXT_LEN as DEFAULT_TEXT_LEN


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy (when installed), HTML unescape twice, collapse whitespace."""
    try:
        import ftfy  # optional, as in diffusers
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _encoder_and_tokenizer(model_or_encoder, tokenizer):
    encoder = getattr(model_or_encoder, "text_encoder", None)
    if encoder is not None:  # a WanModel (or anything holding text_encoder / tokenizer)
        tokenizer = tokenizer if tokenizer is not None else getattr(model_or_encoder, "tokenizer", None)
    else:
        encoder = model_or_encoder
    if encoder is None or tokenizer is None:
        raise ConfigError(
            "Caption encoding needs a UMT5 text encoder and its tokenizer; the model was loaded without them "
            "(load it with its text encoder, e.g. --text-encoder-file umt5_xxl_fp16.safetensors)."
        )
    return encoder, tokenizer


def _module_device_dtype(module) -> tuple[torch.device, torch.dtype]:
    for param in module.parameters():
        return param.device, param.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def encode_captions(
    model_or_encoder,
    tokenizer=None,
    captions: Sequence[str] = (),
    *,
    text_len: int = DEFAULT_TEXT_LEN,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Encode ``captions`` as Wan does: ``[U, text_len, D]``, zero past each caption's token count.

    ``model_or_encoder``: a ``UMT5EncoderModel`` (then ``tokenizer`` is required) or a loaded ``WanModel``.
    ``device`` / ``dtype`` of the result default to the encoder's.
    """
    encoder, tokenizer = _encoder_and_tokenizer(model_or_encoder, tokenizer)
    if isinstance(captions, str):
        captions = [captions]
    captions = [clean_prompt(c) for c in captions]
    enc_device, enc_dtype = _module_device_dtype(encoder)
    device = torch.device(device) if device is not None else enc_device
    dtype = dtype or enc_dtype
    if text_len < 1:
        raise ConfigError(f"text_len must be >= 1, got {text_len}.")
    if not captions:
        dim = encoder.config.d_model
        return torch.zeros(0, text_len, dim, device=device, dtype=dtype)
    tokens = tokenizer(
        captions,
        padding="max_length",
        max_length=text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = tokens.input_ids, tokens.attention_mask
    lengths = mask.gt(0).sum(dim=1)
    _check_captions_have_words(captions, ids, lengths, tokenizer)
    hidden = encoder(ids.to(enc_device), mask.to(enc_device)).last_hidden_state
    hidden = hidden.to(device=device, dtype=dtype)
    keep = torch.arange(text_len, device=device)[None, :] < lengths.to(device)[:, None]  # [U, text_len]
    return hidden * keep[..., None].to(dtype)


def _check_captions_have_words(captions: Sequence[str], ids: torch.Tensor, lengths: torch.Tensor, tokenizer) -> None:
    """A caption with text but no token the tokenizer knows (only emoji, or, for the toy model's word-level
    tokenizer, no toy word) would silently encode as the empty caption: refuse it, naming it."""
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    if not special:
        return
    for caption, row, length in zip(captions, ids.tolist(), lengths.tolist()):
        if caption and all(token in special for token in row[:length]):
            known = ""
            vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
            words = sorted(w for w in vocab if w.isalpha() and vocab[w] not in special)
            if 0 < len(words) <= 64:  # a small word-level vocabulary (the toy model): say which words it knows
                known = f" (this model knows only: {', '.join(words)})"
            shown = caption if len(caption) <= 60 else caption[:57] + "..."
            raise ConfigError(
                f"The caption {shown!r} has no word the text encoder's tokenizer knows, so it would encode as an "
                f"empty caption; describe the scene in words{known}."
            )


# Process-wide cache: a re-run of the same timeline (same encoder, same text_len) encodes nothing.
_CACHE: OrderedDict[tuple[str, int, str, str, str], torch.Tensor] = OrderedDict()


def clear_caption_cache() -> None:
    """Forget every cached caption embedding."""
    _CACHE.clear()


def encoder_identity(encoder) -> str:
    """A stable id for an encoder object (``_framecap_id`` when the loader set one, else a fresh random one)."""
    ident = getattr(encoder, "_framecap_id", None)
    if not ident:
        ident = f"mem-{uuid.uuid4().hex}"
        try:
            encoder._framecap_id = ident
        except AttributeError:  # pragma: no cover - objects with __slots__
            pass
    return ident


class CaptionEncoder:
    """Encodes captions through a process-wide cache keyed by (encoder id, text_len, caption).

    Call it with a list of captions: returns ``[U, text_len, D]``. ``encoded`` counts captions that actually went
    through the encoder (tests use it to check that a rerun encodes nothing). ``run_context``: a context manager
    factory entered around the encoder calls, only when some caption is not cached (the model's placement uses it to
    bring the encoder onto its device and send it back).
    """

    def __init__(
        self,
        text_encoder,
        tokenizer,
        *,
        text_len: int = DEFAULT_TEXT_LEN,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        encoder_id: str | None = None,
        batch_size: int = 8,
        max_cache_entries: int = 256,
        run_context: Callable[[], AbstractContextManager] | None = None,
    ):
        self.text_encoder = text_encoder
        self.run_context = run_context
        self.tokenizer = tokenizer
        self.text_len = int(text_len)
        enc_device, enc_dtype = _module_device_dtype(text_encoder)
        self.device = torch.device(device) if device is not None else enc_device
        self.dtype = dtype or enc_dtype
        if encoder_id:
            text_encoder._framecap_id = encoder_id
        self.encoder_id = encoder_identity(text_encoder)
        self.batch_size = max(1, int(batch_size))
        self.max_cache_entries = int(max_cache_entries)
        self.encoded = 0

    @classmethod
    def from_model(cls, model, **kwargs: Any) -> CaptionEncoder:
        """From a loaded ``WanModel`` (its text_len and text encoder id); with a placement, the encoder moves to its
        run device only to encode new captions, and embeddings are kept where the encoder rests."""
        from .placement import running

        text_encoder, tokenizer = _encoder_and_tokenizer(model, None)
        kwargs.setdefault("text_len", model.text_len)
        kwargs.setdefault("encoder_id", getattr(model, "text_encoder_id", None) or None)
        kwargs.setdefault("dtype", getattr(model, "dtype", None))
        if getattr(model, "placement", None) is not None:
            kwargs.setdefault("run_context", lambda: running(model, "text_encoder"))
        return cls(text_encoder, tokenizer, **kwargs)

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.config.d_model)

    def _key(self, caption: str) -> tuple[str, int, str, str, str]:
        return (self.encoder_id, self.text_len, str(self.dtype), str(self.device), caption)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """``[len(captions), text_len, D]``, encoding only captions not seen before."""
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        missing = list(dict.fromkeys(c for c in captions if self._key(c) not in _CACHE))
        with self.run_context() if (missing and self.run_context) else contextlib.nullcontext():
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                embeds = encode_captions(self.text_encoder, self.tokenizer, chunk, text_len=self.text_len,
                                         device=self.device, dtype=self.dtype)
                self.encoded += len(chunk)
                for caption, embed in zip(chunk, embeds):
                    _CACHE[self._key(caption)] = embed
        out = []
        for caption in captions:
            key = self._key(caption)
            _CACHE.move_to_end(key)
            out.append(_CACHE[key])
        while len(_CACHE) > self.max_cache_entries:
            _CACHE.popitem(last=False)
        if not out:
            return torch.zeros(0, self.text_len, self.text_dim, device=self.device, dtype=self.dtype)
        return torch.stack(out)

    __call__ = encode


def load_caption_encoder(
    source,
    *,
    device: torch.device | str = "cpu",
    dtype: str | torch.dtype = "auto",
    text_len: int | None = None,
    config=None,
    tokenizer_path=None,
) -> CaptionEncoder:
    """A :class:`CaptionEncoder` over the text encoder of ``source`` (a diffusers folder, ``"toy"`` or a UMT5
    single file), with ``text_len`` from the folder's ``framecap.json`` unless given."""
    from .model_settings import read_model_settings
    from .models import TOY_MODEL_DIR, load_text_encoder, resolve_dtype
    from .models.files import _digest
    from .models.wan import _component_identity

    path = TOY_MODEL_DIR if str(source) == "toy" else Path(source)
    encoder, tokenizer = load_text_encoder(path, config=config, tokenizer_path=tokenizer_path, dtype=dtype,
                                           device=device)
    folder = path if path.is_dir() else None
    if text_len is None:
        text_len = read_model_settings(folder).text_len
        text_len = DEFAULT_TEXT_LEN if text_len is None else text_len
    ident = _digest(_component_identity(folder, "text_encoder", None if folder else path), tokenizer_path,
                    resolve_dtype(dtype, device))
    return CaptionEncoder(encoder, tokenizer, text_len=text_len, encoder_id=ident)


# --------------------------------------------------------------------------------------------- timeline context


@dataclass
class TimelineContext:
    """Encoded captions of a timeline.

    unique_captions: the ``U`` distinct captions (timeline order of first appearance).
    unique_embeds: ``[U, T, D]``.
    latent_indices: ``[L]`` long, index into ``unique_embeds`` of each latent frame.
    negative_embeds: ``[1, T, D]`` (the negative prompt; "" encodes as Wan encodes an empty prompt).
    """

    unique_captions: list[str]
    unique_embeds: torch.Tensor
    latent_indices: torch.Tensor
    negative_embeds: torch.Tensor

    @property
    def text_len(self) -> int:
        return int(self.unique_embeds.shape[1])

    @property
    def num_latents(self) -> int:
        return int(self.latent_indices.numel())


def timeline_context(encoder: CaptionEncoder, timeline, negative: str | None = None) -> TimelineContext:
    """Encode a ``Timeline``'s unique captions and its negative prompt (``negative`` overrides the timeline's;
    :func:`~framecap_core.timeline.negative_prompt` picks it)."""
    from .timeline import negative_prompt

    unique = list(timeline.unique_captions())
    position = {caption: i for i, caption in enumerate(unique)}
    indices = torch.tensor([position[c] for c in timeline.latent_captions()], dtype=torch.long)
    embeds = encoder.encode([*unique, negative_prompt(timeline, negative)])
    return TimelineContext(
        unique_captions=unique,
        unique_embeds=embeds[: len(unique)],
        latent_indices=indices.to(embeds.device),
        negative_embeds=embeds[len(unique) :],
    )

