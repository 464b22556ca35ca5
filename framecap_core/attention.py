"""Frame-level cross-attention for diffusers' Wan transformer (paper eq. 1).

Stock Wan cross-attention lets every video token attend to the 512 tokens of one caption. With frame-level
captions every latent frame ``f`` has its own caption ``c_f`` and its tokens attend only to that caption::

    Attn(Q_f, K_{c_f}, V_{c_f}) = softmax(Q_f K_{c_f}^T / sqrt(d)) V_{c_f}        (eq. 1)

Layout contract (the only channel between the caller and the processor, because diffusers' Wan blocks pass no
attention kwargs to processors):

- video tokens are frame-major, as Wan makes them: ``hidden_states [B, F*hw, dim]`` (token = f*hw + y*w + x);
- captions are stacked frame-major in ``encoder_hidden_states [B, F*text_len, text_dim]``, caption of latent frame
  ``f`` at rows ``f*text_len : (f+1)*text_len`` (build it with :func:`stack_frame_captions`). The transformer's
  condition embedder projects text per token, so the layout reaches the processor unchanged as
  ``[B, F*text_len, dim]``;
- ``F = Lk // text_len``; ``Lk == text_len`` is one caption for the whole video and behaves exactly as stock.

The attention is a reshape, not a mask: q ``[B, F*hw, H, d] -> [B*F, hw, H, d]`` and k/v
``[B, F*text_len, H, d] -> [B*F, text_len, H, d]``, so each query still sees ``text_len`` keys and the cost of the
attention itself is that of global cross-attention. Only the k/v projections grow (``F`` captions instead of one).
As in Wan, zero-padded text positions are attended (no mask).

Only text-to-video models are supported: Wan image-to-video blocks (``attn2.add_k_proj``) concatenate image tokens
in front of the text and are refused at install time.

The processor holds no weights and is not serialized: a model saved with ``save_pretrained`` reloads with the stock
processor, call :func:`install_frame_level_attention` again after loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError
from .grid import TEXT_LEN as DEFAULT_TEXT_LEN

if TYPE_CHECKING:  # diffusers is imported lazily: importing this module must stay cheap
    from diffusers import WanTransformer3DModel

__all__ = [
    "DEFAULT_TEXT_LEN",
    "FrameLevelWanAttnProcessor",
    "frame_layout",
    "frame_level_text_len",
    "install_frame_level_attention",
    "is_frame_level",
    "remove_frame_level_attention",
    "stack_frame_captions",
]


def _dispatch_attention_fn():
    # Looked up on every call (a dict lookup) so diffusers is only imported when attention actually runs.
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn


def _qkv_projections(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor):
    """q from the video tokens, k/v from the text tokens; honours ``attn.fuse_projections()`` like the stock code."""
    query = attn.to_q(hidden_states)
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_kv"):
        key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
    else:
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
    return query, key, value


def frame_layout(query_len: int, key_len: int, text_len: int) -> tuple[int, int]:
    """Frame layout ``(F, hw)`` of a cross-attention call, or a ``ConfigError`` naming the shapes and the fix.

    Args:
        query_len: ``Lq``, video tokens per sample (``F*hw``).
        key_len: ``Lk``, text tokens per sample (``F*text_len``, or ``text_len`` for one shared caption).
        text_len: tokens per caption.

    Returns:
        ``(F, hw)``: latent frames and video tokens per latent frame. ``F == 1`` when ``Lk == text_len``.
    """
    if key_len % text_len != 0:
        raise ConfigError(
            f"Frame-level cross-attention got {key_len} text tokens, which is not a multiple of text_len={text_len}. "
            f"Captions must be stacked one per latent frame as [B, num_latent_frames*{text_len}, text_dim] "
            f"(see framecap_core.attention.stack_frame_captions), each caption padded to exactly {text_len} tokens; "
            f"or install the attention with the text length your text encoder produces."
        )
    num_frames = key_len // text_len
    if query_len % num_frames != 0:
        raise ConfigError(
            f"Frame-level cross-attention got {num_frames} captions ({key_len} text tokens / text_len={text_len}) "
            f"but {query_len} video tokens, which do not split into {num_frames} equal latent frames. Stack exactly "
            f"one caption per latent frame of the window (latent frames = (pixel frames - 1)//4 + 1), or pass a "
            f"single caption of {text_len} tokens to use it for every frame."
        )
    return num_frames, query_len // num_frames


class FrameLevelWanAttnProcessor:
    """Cross-attention processor for diffusers' ``WanAttention`` where latent frame ``f`` attends only to caption
    ``f`` (paper eq. 1).

    Call signature is that of ``WanAttnProcessor``:

    - ``hidden_states [B, F*hw, dim]``: frame-major video tokens;
    - ``encoder_hidden_states [B, F*text_len, dim]``: captions stacked frame-major (``[B, text_len, dim]``: one
      caption for all frames, identical to the stock processor);
    - returns ``[B, F*hw, dim]``.

    q/k RMSNorm is applied across heads before the head split, exactly as in the stock processor, and the attention
    goes through ``dispatch_attention_fn`` in ``[B, S, H, D]`` layout so ``set_attention_backend`` is honoured.
    No mask: Wan attends its zero-padded text positions and so does this processor.

    Args:
        text_len: tokens per caption (512 for Wan's UMT5 encoder).
    """

    # Read and written by diffusers' `set_attention_backend` / `reset_attention_backend` and context parallelism.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, text_len: int = DEFAULT_TEXT_LEN):
        if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
            raise ConfigError(
                f"text_len must be a positive integer (tokens per caption, 512 for Wan); got {text_len!r}."
            )
        self.text_len = text_len

    def __repr__(self) -> str:
        return f"{type(self).__name__}(text_len={self.text_len})"

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ConfigError(
                "FrameLevelWanAttnProcessor is a cross-attention processor and got no encoder_hidden_states; install "
                "it on cross-attention (blocks[i].attn2) only, with install_frame_level_attention."
            )
        if getattr(attn, "add_k_proj", None) is not None:
            raise ConfigError(
                "Frame-level cross-attention supports text-to-video Wan models only; this attention layer has "
                "image-conditioning projections (add_k_proj, an image-to-video model). Use a T2V checkpoint."
            )
        if attention_mask is not None:
            raise ConfigError(
                "FrameLevelWanAttnProcessor takes no attention mask: frames are separated by reshaping, and Wan "
                "attends padded text positions by design. Pass attention_mask=None."
            )
        if rotary_emb is not None:
            raise ConfigError("FrameLevelWanAttnProcessor is for cross-attention, which uses no rotary embedding.")

        batch, query_len, _ = hidden_states.shape
        key_len = encoder_hidden_states.shape[1]
        num_frames, tokens_per_frame = frame_layout(query_len, key_len, self.text_len)
        text_len = key_len // num_frames

        query, key, value = _qkv_projections(attn, hidden_states, encoder_hidden_states)

        # Norm across all heads before the split, as the stock processor: per-head statistics would differ.
        query = attn.norm_q(query)
        key = attn.norm_k(key)

        # [B, F*hw, H*d] -> [B*F, hw, H, d] and [B, F*L, H*d] -> [B*F, L, H, d]: views (frame-major rows), no copy.
        query = query.reshape(batch * num_frames, tokens_per_frame, attn.heads, -1)
        key = key.reshape(batch * num_frames, text_len, attn.heads, -1)
        value = value.reshape(batch * num_frames, text_len, attn.heads, -1)

        out = _dispatch_attention_fn()(
            query,
            key,
            value,
            attn_mask=None,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            # Cross-attention keys are never split across devices (diffusers does the same for Wan's attn2).
            parallel_config=None,
        )
        # [B*F, hw, H, d] -> [B, F*hw, H*d]
        out = out.flatten(2, 3).reshape(batch, query_len, -1)
        out = out.type_as(query)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out


def _cross_attention_layers(transformer) -> list:
    blocks = getattr(transformer, "blocks", None)
    if blocks is None or not all(hasattr(block, "attn2") for block in blocks):
        raise ConfigError(
            f"Frame-level attention needs a diffusers WanTransformer3DModel (blocks[i].attn2); got "
            f"{type(transformer).__name__}. Load the transformer with framecap_core's model loader."
        )
    return [block.attn2 for block in blocks]


def install_frame_level_attention(transformer: WanTransformer3DModel, text_len: int = DEFAULT_TEXT_LEN):
    """Put :class:`FrameLevelWanAttnProcessor` on every cross-attention layer (``blocks[i].attn2``).

    Self-attention is untouched. Idempotent: installing again only updates ``text_len``. The attention backend
    chosen with ``transformer.set_attention_backend`` before installing is kept. The processor is not saved by
    ``save_pretrained``; install again after loading.

    After this, pass captions to ``transformer(..., encoder_hidden_states=[B, F*text_len, text_dim])`` with one
    caption per latent frame (see :func:`stack_frame_captions`), or ``[B, text_len, text_dim]`` for one caption.

    Args:
        transformer: a diffusers ``WanTransformer3DModel`` (text-to-video).
        text_len: tokens per caption (512 for Wan).

    Returns:
        the same transformer, for chaining.
    """
    text_len = FrameLevelWanAttnProcessor(text_len).text_len  # validates before touching the model
    layers = _cross_attention_layers(transformer)
    if any(getattr(layer, "add_k_proj", None) is not None for layer in layers):
        raise ConfigError(
            "Frame-level cross-attention supports text-to-video Wan models only; this transformer has "
            "image-conditioning projections (added_kv_proj_dim is set: an image-to-video model). Use a T2V checkpoint."
        )
    for layer in layers:
        current = layer.processor
        if isinstance(current, FrameLevelWanAttnProcessor):
            current.text_len = text_len
            continue
        processor = FrameLevelWanAttnProcessor(text_len)
        processor._attention_backend = getattr(current, "_attention_backend", None)
        layer.set_processor(processor)
    return transformer


def remove_frame_level_attention(transformer: WanTransformer3DModel):
    """Restore diffusers' stock ``WanAttnProcessor`` on every cross-attention layer that has the frame-level one.

    The attention backend is carried over. A no-op on a stock model. Returns the same transformer.
    """
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for layer in _cross_attention_layers(transformer):
        current = layer.processor
        if isinstance(current, FrameLevelWanAttnProcessor):
            processor = WanAttnProcessor()
            processor._attention_backend = current._attention_backend
            layer.set_processor(processor)
    return transformer


def is_frame_level(transformer) -> bool:
    """True when every cross-attention layer of ``transformer`` has the frame-level processor."""
    blocks = getattr(transformer, "blocks", None)
    if not blocks or not all(hasattr(block, "attn2") for block in blocks):
        return False
    return all(isinstance(block.attn2.processor, FrameLevelWanAttnProcessor) for block in blocks)


def frame_level_text_len(transformer) -> int | None:
    """Tokens per caption the installed frame-level attention expects, or ``None`` on a stock model."""
    if not is_frame_level(transformer):
        return None
    return transformer.blocks[0].attn2.processor.text_len


def stack_frame_captions(embeds: torch.Tensor, indices: torch.Tensor | list) -> torch.Tensor:
    """Build the frame-major context of frame-level attention from unique caption embeddings.

    Args:
        embeds: ``[U, text_len, D]`` embeddings of the ``U`` unique captions (each zero-padded to ``text_len``).
        indices: ``[K, N]`` (or ``[N]``, taken as ``K = 1``) caption index of each latent frame of each of the ``K``
            windows / samples, values in ``[0, U)``.

    Returns:
        ``[K, N*text_len, D]``: rows ``f*text_len:(f+1)*text_len`` of sample ``k`` are ``embeds[indices[k, f]]``.
    """
    if embeds.ndim != 3:
        raise ConfigError(
            f"stack_frame_captions expects caption embeddings [num_captions, text_len, dim]; got shape "
            f"{tuple(embeds.shape)}. Encode each unique caption once and stack them on the first axis."
        )
    indices = torch.as_tensor(indices, device=embeds.device)
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.dtype.is_complex:
        raise ConfigError(f"Caption indices must be integers; got dtype {indices.dtype}.")
    if indices.ndim == 1:
        indices = indices.unsqueeze(0)
    if indices.ndim != 2 or indices.shape[1] == 0:
        raise ConfigError(
            f"Caption indices must be [num_latent_frames] or [num_windows, num_latent_frames] with at least one "
            f"frame; got shape {tuple(indices.shape)}."
        )
    num_captions = embeds.shape[0]
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_captions):
        raise ConfigError(
            f"Caption indices must lie in [0, {num_captions}) for {num_captions} caption embeddings; got values "
            f"from {int(indices.min())} to {int(indices.max())}. Check that every scene's caption was encoded."
        )
    windows, frames = indices.shape
    # embeds[indices]: [K, N, L, D], a gather (one copy); the reshape to [K, N*L, D] is a view.
    return embeds[indices.long()].reshape(windows, frames * embeds.shape[1], embeds.shape[2])
