"""Frame-level cross-attention (paper eq. 1) on tiny random diffusers Wan transformers.

Equivalences checked: identical captions == stock model; distinct captions == a hand-written dense block-diagonal
mask reference (processor and full model); gradient checkpointing; bf16; attention backends; save/load; per-token
timesteps; error messages.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from framecap_core.attention import (
    FrameLevelWanAttnProcessor,
    frame_layout,
    frame_level_text_len,
    install_frame_level_attention,
    is_frame_level,
    remove_frame_level_attention,
    stack_frame_captions,
)
from framecap_core.errors import ConfigError, FrameCapError
from framecap_core.testing import TINY_TEXT_DIM, make_tiny_transformer

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry  # noqa: E402
from diffusers.models.transformers.transformer_wan import WanAttnProcessor  # noqa: E402

TEXT_DIM = TINY_TEXT_DIM
# Latent video of the tests: F latent frames of 4x6 latents -> hw = 2*3 = 6 tokens per frame after (1, 2, 2) patches.
BATCH, CHANNELS, FRAMES, HEIGHT, WIDTH = 2, 4, 3, 4, 6
TOKENS_PER_FRAME = (HEIGHT // 2) * (WIDTH // 2)


def tiny_wan(seed: int = 0, in_channels: int = CHANNELS, **overrides) -> WanTransformer3DModel:
    """diffusers' own Wan test config (2 layers, 2 heads x 12, text_dim 16), random weights from `seed`."""
    return make_tiny_transformer(seed, in_channels=in_channels, out_channels=in_channels, **overrides)


def inputs(text_len: int, seed: int = 1, frames: int = FRAMES, channels: int = CHANNELS):
    """Latents [B, C, F, H, W], timesteps [B], distinct captions per frame [B, F, text_len, text_dim]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, channels, frames, HEIGHT, WIDTH, generator=g)
    t = torch.tensor([37.0, 801.0])
    captions = torch.randn(BATCH, frames, text_len, TEXT_DIM, generator=g)
    # Zero-padded tail like UMT5 output: padded positions are attended (no mask), as in Wan.
    captions[:, :, text_len // 2 + 1 :] = 0.0
    return x, t, captions


def frame_major(captions: torch.Tensor) -> torch.Tensor:
    """[B, F, L, D] -> [B, F*L, D]."""
    return captions.flatten(1, 2)


class DenseMaskReferenceProcessor:
    """Reference cross-attention written out by hand: full [Lq, Lk] scores, a dense block-diagonal boolean mask
    (query token of frame f may see only the text tokens of caption f), torch softmax."""

    def __init__(self, text_len: int):
        self.text_len = text_len

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        batch, query_len, _ = hidden_states.shape
        key_len = encoder_hidden_states.shape[1]
        frames = key_len // self.text_len
        q = attn.norm_q(attn.to_q(hidden_states))
        k = attn.norm_k(attn.to_k(encoder_hidden_states))
        v = attn.to_v(encoder_hidden_states)
        heads = attn.heads
        q = q.unflatten(2, (heads, -1)).transpose(1, 2)  # [B, H, Lq, d]
        k = k.unflatten(2, (heads, -1)).transpose(1, 2)  # [B, H, Lk, d]
        v = v.unflatten(2, (heads, -1)).transpose(1, 2)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, Lq, Lk]
        query_frame = torch.arange(query_len) // (query_len // frames)
        key_frame = torch.arange(key_len) // self.text_len
        allowed = query_frame[:, None] == key_frame[None, :]  # [Lq, Lk] block diagonal
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v.float()  # [B, H, Lq, d]
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def install_reference(model, text_len: int):
    for block in model.blocks:
        block.attn2.set_processor(DenseMaskReferenceProcessor(text_len))
    return model


def run(model, x, t, context):
    return model(x, t, context, return_dict=False)[0]


@pytest.fixture
def restore_active_backend():
    """`set_attention_backend` also changes diffusers' process-wide active backend: put it back."""
    saved = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(saved)


# --- layout helpers -------------------------------------------------------------------------------------------


def test_stack_frame_captions_is_frame_major_gather():
    embeds = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)  # 3 captions, text_len 2, dim 4
    indices = torch.tensor([[0, 0, 2], [1, 2, 2]])
    stacked = stack_frame_captions(embeds, indices)
    assert stacked.shape == (2, 3 * 2, 4)
    for k in range(2):
        for f in range(3):
            assert torch.equal(stacked[k, 2 * f : 2 * f + 2], embeds[indices[k, f]])
    one = stack_frame_captions(embeds, [2, 0])
    assert one.shape == (1, 4, 4)
    assert torch.equal(one[0], torch.cat([embeds[2], embeds[0]]))


@pytest.mark.parametrize(
    "embeds, indices, needle",
    [
        (torch.zeros(3, 2, 4), torch.tensor([0, 3]), "[0, 3)"),
        (torch.zeros(3, 2, 4), torch.tensor([-1, 0]), "[0, 3)"),
        (torch.zeros(3, 2, 4), torch.tensor([0.0, 1.0]), "integers"),
        (torch.zeros(3, 2, 4), torch.zeros(2, 2, 2, dtype=torch.long), "num_windows"),
        (torch.zeros(2, 4), torch.tensor([0]), "[num_captions, text_len, dim]"),
    ],
)
def test_stack_frame_captions_errors(embeds, indices, needle):
    with pytest.raises(ConfigError) as info:
        stack_frame_captions(embeds, indices)
    assert needle in str(info.value)


def test_frame_layout():
    assert frame_layout(18, 3 * 512, 512) == (3, 6)
    assert frame_layout(18, 512, 512) == (1, 18)  # one caption: broadcast, stock behaviour


# --- processor-level equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize("text_len", [5, 512])
def test_processor_matches_dense_block_diagonal_reference(text_len):
    attn = tiny_wan().blocks[0].attn2
    g = torch.Generator().manual_seed(3)
    dim = attn.to_q.in_features
    hidden = torch.randn(BATCH, FRAMES * TOKENS_PER_FRAME, dim, generator=g)
    context = torch.randn(BATCH, FRAMES * text_len, dim, generator=g)
    with torch.no_grad():
        out = FrameLevelWanAttnProcessor(text_len)(attn, hidden, context)
        ref = DenseMaskReferenceProcessor(text_len)(attn, hidden, context)
        stock_global = WanAttnProcessor()(attn, hidden, context)  # every frame sees every caption
    assert out.shape == hidden.shape
    assert (out - ref).abs().max().item() <= 1e-5
    # The restriction is real: attending all captions gives something else.
    assert (out - stock_global).abs().max().item() > 1e-3


def test_processor_single_caption_is_stock():
    attn = tiny_wan().blocks[1].attn2
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(BATCH, FRAMES * TOKENS_PER_FRAME, attn.to_q.in_features, generator=g)
    context = torch.randn(BATCH, 7, attn.to_q.in_features, generator=g)
    with torch.no_grad():
        out = FrameLevelWanAttnProcessor(7)(attn, hidden, context)
        stock = WanAttnProcessor()(attn, hidden, context)
    assert torch.equal(out, stock)


def test_processor_with_fused_projections_matches_unfused():
    attn = tiny_wan().blocks[0].attn2
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(1, FRAMES * TOKENS_PER_FRAME, attn.to_q.in_features, generator=g)
    context = torch.randn(1, FRAMES * 4, attn.to_q.in_features, generator=g)
    processor = FrameLevelWanAttnProcessor(4)
    with torch.no_grad():
        plain = processor(attn, hidden, context)
        attn.fuse_projections()
        fused = processor(attn, hidden, context)
    assert (plain - fused).abs().max().item() <= 1e-5


# --- full-model equivalences ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text_len", [6, 512])
def test_identical_captions_equal_stock_model(text_len):
    model = tiny_wan()
    x, t, captions = inputs(text_len)
    caption = captions[:, 0]  # [B, L, D]: one caption per sample
    with torch.no_grad():
        stock = run(model, x, t, caption)
        install_frame_level_attention(model, text_len=text_len)
        frame_level = run(model, x, t, caption.repeat(1, FRAMES, 1))  # [B, F*L, D], same caption on every frame
        broadcast = run(model, x, t, caption)  # Lk == text_len: one caption for the whole video
    assert (frame_level - stock).abs().max().item() <= 1e-6
    assert (broadcast - stock).abs().max().item() <= 1e-6


@pytest.mark.parametrize("text_len", [6, 512])
def test_distinct_captions_equal_dense_mask_reference_model(text_len):
    model = tiny_wan()
    x, t, captions = inputs(text_len)
    context = frame_major(captions)
    with torch.no_grad():
        global_attention = run(model, x, t, context)  # stock: every frame attends every caption
        reference = run(install_reference(copy.deepcopy(model), text_len), x, t, context)
        frame_level = run(install_frame_level_attention(model, text_len=text_len), x, t, context)
    assert (frame_level - reference).abs().max().item() <= 1e-5
    assert (frame_level - global_attention).abs().max().item() > 1e-3


def test_caption_of_a_frame_only_affects_that_frame_through_cross_attention():
    """With one layer, changing the caption of frame 1 changes only frame 1's output (self-attention mixes frames
    before cross-attention, but nothing mixes after it except the per-token FFN and output head)."""
    text_len = 4
    model = install_frame_level_attention(tiny_wan(num_layers=1), text_len=text_len)
    x, t, captions = inputs(text_len)
    changed = captions.clone()
    changed[:, 1] = torch.randn(changed[:, 1].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a = run(model, x, t, frame_major(captions))
        b = run(model, x, t, frame_major(changed))
    diff = (a - b).abs().amax(dim=(0, 1, 3, 4))  # per latent frame
    assert diff[1] > 1e-3
    assert diff[0] == 0 and diff[2] == 0


def test_per_token_timesteps():
    """Wan's per-token timestep path (`timestep [B, seq_len]`, per-frame t repeated over the frame's tokens)."""
    text_len = 6
    model = tiny_wan()
    x, _, captions = inputs(text_len)
    per_frame = torch.tensor([[0.0, 250.0, 999.0], [500.0, 500.0, 10.0]])
    per_token = per_frame.repeat_interleave(TOKENS_PER_FRAME, dim=1)  # [B, F*hw]
    context = frame_major(captions)
    with torch.no_grad():
        stock_same_caption = run(model, x, per_token, captions[:, 0])
        reference = run(install_reference(copy.deepcopy(model), text_len), x, per_token, context)
        install_frame_level_attention(model, text_len=text_len)
        same_caption = run(model, x, per_token, captions[:, 0].repeat(1, FRAMES, 1))
        frame_level = run(model, x, per_token, context)
    assert (same_caption - stock_same_caption).abs().max().item() <= 1e-6
    assert (frame_level - reference).abs().max().item() <= 1e-5


def test_gradient_checkpointing_gives_same_grads():
    text_len = 6
    x, t, captions = inputs(text_len)
    context = frame_major(captions)
    grads = []
    for checkpointing in (False, True):
        model = install_frame_level_attention(tiny_wan(), text_len=text_len).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        assert model.gradient_checkpointing is checkpointing
        ctx = context.clone().requires_grad_(True)
        out = run(model, x, t, ctx)
        (out.square().mean()).backward()
        grads.append({"context": ctx.grad} | {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys()
    assert any("attn2.to_k" in name for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    assert plain["context"].abs().sum() > 0


def test_bf16_close_to_fp32():
    text_len = 6
    model = install_frame_level_attention(tiny_wan(), text_len=text_len)
    x, t, captions = inputs(text_len)
    context = frame_major(captions)
    with torch.no_grad():
        fp32 = run(model, x, t, context)
        model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
        assert is_frame_level(model_bf16)
        bf16 = run(model_bf16, x.bfloat16(), t, context.bfloat16())
    assert bf16.dtype == torch.bfloat16
    assert torch.isfinite(bf16).all()
    # bf16 keeps 8 mantissa bits: a few percent of the output scale over two layers.
    assert (bf16.float() - fp32).abs().max().item() <= 0.05 * fp32.abs().max().item()


def _cpu_backends(model, x, t, context) -> list[str]:
    """Backends the stock model runs with on this machine (the frame-level one must then run too)."""
    usable = []
    for name in ("native", "_native_math", "flex"):
        try:
            model.set_attention_backend(name)
            with torch.no_grad():
                run(model, x, t, context)
        except Exception:  # a backend this torch build / device cannot run
            continue
        usable.append(name)
    model.reset_attention_backend()
    return usable


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_attention_backends_honoured_and_unchanged(restore_active_backend):
    text_len = 6
    x, t, captions = inputs(text_len)
    context = frame_major(captions)
    stock = tiny_wan()
    backends = _cpu_backends(stock, x, t, captions[:, 0])
    assert "native" in backends
    model = install_frame_level_attention(tiny_wan(), text_len=text_len)
    with torch.no_grad():
        default = run(model, x, t, context)
    for name in backends:
        model.set_attention_backend(name)
        assert all(b.attn2.processor._attention_backend == AttentionBackendName(name) for b in model.blocks)
        assert is_frame_level(model)
        with torch.no_grad():
            out = run(model, x, t, context)
        assert (out - default).abs().max().item() <= 1e-5, name
    model.reset_attention_backend()


def test_backend_dispatch_reaches_the_frame_level_processor(restore_active_backend, monkeypatch):
    """Calls must go through diffusers' dispatcher with the chosen backend (a spy on the `_native_math` entry)."""
    text_len = 6
    x, t, captions = inputs(text_len)
    backend = AttentionBackendName._NATIVE_MATH
    original = _AttentionBackendRegistry._backends[backend]
    key_lengths = []

    def spy(**kwargs):
        key_lengths.append(kwargs["key"].shape[1])
        return original(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, backend, spy)
    model = install_frame_level_attention(tiny_wan(), text_len=text_len)
    model.set_attention_backend("_native_math")
    # That call also set the process-wide default; reset it so only the per-processor setting can route to the spy.
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
    with torch.no_grad():
        run(model, x, t, frame_major(captions))
    # Per layer: self-attention (keys = all F*hw video tokens) and frame-level cross-attention (keys = one caption).
    assert sorted(key_lengths) == sorted([FRAMES * TOKENS_PER_FRAME, text_len] * 2)


def test_install_keeps_backend_and_remove_restores_stock(restore_active_backend):
    model = tiny_wan()
    model.set_attention_backend("_native_math")
    install_frame_level_attention(model, text_len=8)
    assert is_frame_level(model) and frame_level_text_len(model) == 8
    assert all(type(b.attn1.processor) is WanAttnProcessor for b in model.blocks)  # self-attention untouched
    assert all(b.attn2.processor._attention_backend == AttentionBackendName._NATIVE_MATH for b in model.blocks)
    first = [b.attn2.processor for b in model.blocks]
    install_frame_level_attention(model, text_len=8)  # idempotent
    assert [b.attn2.processor for b in model.blocks] == first
    install_frame_level_attention(model, text_len=512)  # re-install updates text_len
    assert frame_level_text_len(model) == 512
    remove_frame_level_attention(model)
    assert not is_frame_level(model) and frame_level_text_len(model) is None
    assert all(type(b.attn2.processor) is WanAttnProcessor for b in model.blocks)
    assert all(b.attn2.processor._attention_backend == AttentionBackendName._NATIVE_MATH for b in model.blocks)
    remove_frame_level_attention(model)  # no-op on a stock model


def test_remove_gives_back_stock_outputs():
    model = tiny_wan()
    x, t, captions = inputs(6)
    context = frame_major(captions)
    with torch.no_grad():
        stock = run(model, x, t, context)
        install_frame_level_attention(model, text_len=6)
        assert (run(model, x, t, context) - stock).abs().max().item() > 1e-3
        remove_frame_level_attention(model)
        assert torch.equal(run(model, x, t, context), stock)


def test_save_and_reload_then_install_again(tmp_path):
    """The processor holds no weights and is not serialized: the reload is stock until installed again."""
    text_len = 6
    model = install_frame_level_attention(tiny_wan(in_channels=16), text_len=text_len)
    x, t, captions = inputs(text_len, channels=16)
    context = frame_major(captions)
    with torch.no_grad():
        before = run(model, x, t, context)
    model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    reloaded = WanTransformer3DModel.from_pretrained(tmp_path).eval()
    assert not is_frame_level(reloaded)
    assert set(reloaded.state_dict()) == set(model.state_dict())
    install_frame_level_attention(reloaded, text_len=text_len)
    with torch.no_grad():
        after = run(reloaded, x, t, context)
    assert torch.equal(after, before)


# --- errors -----------------------------------------------------------------------------------------------------


def test_error_text_not_multiple_of_text_len():
    model = install_frame_level_attention(tiny_wan(), text_len=8)
    x, t, captions = inputs(8)
    bad = frame_major(captions)[:, :-3]  # 3*8 - 3 tokens
    with pytest.raises(ConfigError) as info:
        with torch.no_grad():
            run(model, x, t, bad)
    message = str(info.value)
    assert "21 text tokens" in message and "text_len=8" in message and "stack_frame_captions" in message


def test_error_captions_do_not_match_latent_frames():
    model = install_frame_level_attention(tiny_wan(), text_len=8)
    x, t, _ = inputs(8)
    _, _, four = inputs(8, frames=4)  # 4 captions for a 3-latent-frame video (18 tokens do not split in 4)
    with pytest.raises(ConfigError) as info:
        with torch.no_grad():
            run(model, x, t, frame_major(four))
    message = str(info.value)
    assert "4 captions" in message and "18 video tokens" in message and "one caption per latent frame" in message
    assert isinstance(info.value, FrameCapError)


def test_error_image_to_video_model_refused():
    model = tiny_wan(added_kv_proj_dim=TEXT_DIM, image_dim=TEXT_DIM)
    with pytest.raises(ConfigError, match="text-to-video"):
        install_frame_level_attention(model)
    assert not is_frame_level(model)


def test_error_not_a_wan_transformer_and_bad_text_len():
    with pytest.raises(ConfigError, match="WanTransformer3DModel"):
        install_frame_level_attention(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="positive integer"):
        install_frame_level_attention(tiny_wan(), text_len=0)
    with pytest.raises(ConfigError, match="cross-attention"):
        FrameLevelWanAttnProcessor(4)(tiny_wan().blocks[0].attn1, torch.zeros(1, 6, 24), None)
