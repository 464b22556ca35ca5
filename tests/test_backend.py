"""The Wan denoiser backend against direct (stock-style) transformer calls, and streamed VAE decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framecap_core.attention import install_frame_level_attention, remove_frame_level_attention, stack_frame_captions
from framecap_core.backend import WanDenoiser, decode_latents, denormalize_latents, normalize_latents
from framecap_core.errors import ConfigError
from framecap_core.testing import TINY_TEXT_DIM, make_tiny_transformer, make_tiny_vae

TEXT_LEN = 6
C, H, W = 16, 4, 6  # latent channels, latent height / width (patch 2x2 -> 6 tokens per frame)


@pytest.fixture(scope="module")
def transformer():
    return install_frame_level_attention(make_tiny_transformer(seed=3), text_len=TEXT_LEN)


def _embeds(u: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(u, TEXT_LEN, TINY_TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def _inputs(k: int, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, C, n, H, W, generator=g)
    return x


def _direct(transformer, x, timestep, context):
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]


def test_equal_t_one_caption_matches_stock_call(transformer):
    """One caption for the whole video, guidance 1: exactly a stock Wan forward (scalar timestep, [K, text_len, D])."""
    embeds = _embeds(1)
    x = _inputs(2, 3)
    t = torch.tensor([[700.0] * 3, [250.0] * 3])
    frames = torch.tensor([[0, 1, 2], [2, 3, 4]])
    den = WanDenoiser(transformer, embeds, [0] * 5, guidance_scale=1.0)
    v = den(x, t, frames)
    remove_frame_level_attention(transformer)
    try:
        ref = _direct(transformer, x, torch.tensor([700.0, 250.0]), embeds.expand(2, -1, -1))
    finally:
        install_frame_level_attention(transformer, text_len=TEXT_LEN)
    assert v.dtype == torch.float32 and v.shape == x.shape
    torch.testing.assert_close(v, ref, atol=1e-5, rtol=1e-5)
    assert den.calls == 1 and den.samples == 2  # no uncond half at guidance 1


def test_per_frame_captions_follow_absolute_indices(transformer):
    embeds = _embeds(3, seed=5)
    index = [0, 0, 1, 1, 2, 2, 2]
    x = _inputs(2, 4, seed=2)
    frames = torch.tensor([[0, 1, 2, 3], [3, 4, 5, 6]])
    t = torch.full((2, 4), 500.0)
    v = WanDenoiser(transformer, embeds, index, guidance_scale=1.0)(x, t, frames)
    ctx = stack_frame_captions(embeds, torch.tensor(index)[frames])
    torch.testing.assert_close(v, _direct(transformer, x, t[:, 0], ctx), atol=1e-5, rtol=1e-5)
    # a different caption assignment changes the prediction (captions really reach the model)
    other = WanDenoiser(transformer, embeds, [2, 2, 2, 1, 1, 0, 0], guidance_scale=1.0)(x, t, frames)
    assert (other - v).abs().max() > 1e-3


@pytest.mark.parametrize("g", [0.0, 3.5, 7.0])
def test_guidance_is_exact_cfg_of_two_forwards(transformer, g):
    embeds, neg = _embeds(2, seed=7), _embeds(1, seed=8)[0]
    index = [0, 0, 1, 1, 1]
    x = _inputs(2, 3, seed=4)
    frames = torch.tensor([[0, 1, 2], [2, 3, 4]])
    t = torch.tensor([[900.0] * 3, [900.0] * 3])
    den = WanDenoiser(transformer, embeds, index, neg, guidance_scale=g)
    v = den(x, t, frames)
    cond = _direct(transformer, x, t[:, 0], stack_frame_captions(embeds, torch.tensor(index)[frames]))
    uncond = _direct(transformer, x, t[:, 0], neg[None].repeat(2, 3, 1))
    torch.testing.assert_close(v, uncond + g * (cond - uncond), atol=2e-5, rtol=1e-5)
    assert den.calls == 1 and den.samples == 4  # cond and uncond in one batch


def test_scalar_and_per_token_paths_agree(transformer):
    embeds, neg = _embeds(2, seed=9), _embeds(1, seed=10)
    index = [0, 1, 1, 0]
    x = _inputs(1, 4, seed=6)
    frames = torch.arange(4)[None]
    t = torch.full((1, 4), 432.0)
    fast = WanDenoiser(transformer, embeds, index, neg, guidance_scale=4.0)
    slow = WanDenoiser(transformer, embeds, index, neg, guidance_scale=4.0, force_per_token=True)
    assert fast.timesteps(t, 6).shape == (1,) and slow.timesteps(t, 6).shape == (1, 24)
    torch.testing.assert_close(fast(x, t, frames), slow(x, t, frames), atol=1e-5, rtol=1e-5)


def test_per_frame_timesteps_use_per_token_path(transformer):
    embeds = _embeds(1)
    den = WanDenoiser(transformer, embeds, [0] * 3, guidance_scale=1.0)
    x = _inputs(1, 3, seed=11)
    t = torch.tensor([[100.0, 500.0, 900.0]])
    ts = den.timesteps(t, 6)
    assert ts.shape == (1, 18) and ts[0, :6].eq(100).all() and ts[0, 12:].eq(900).all()
    v = den(x, t, torch.arange(3)[None])
    ref = _direct(transformer, x, ts, embeds.expand(1, -1, -1).repeat(1, 3, 1))
    torch.testing.assert_close(v, ref, atol=1e-5, rtol=1e-5)
    # and it is not the scalar answer
    assert (v - den(x, torch.full((1, 3), 500.0), torch.arange(3)[None])).abs().max() > 1e-4


def test_dtype_and_output_float32():
    model = install_frame_level_attention(make_tiny_transformer(seed=3).to(torch.bfloat16), text_len=TEXT_LEN)
    den = WanDenoiser(model, _embeds(1), [0] * 2, _embeds(1, seed=1), guidance_scale=2.0)
    v = den(_inputs(1, 2), torch.full((1, 2), 300.0), torch.arange(2)[None])
    assert v.dtype == torch.float32 and torch.isfinite(v).all()


def test_denoiser_errors(transformer):
    stock = make_tiny_transformer(seed=3)
    with pytest.raises(ConfigError, match="frame-level"):
        WanDenoiser(stock, _embeds(1), [0])
    with pytest.raises(ConfigError, match="negative"):
        WanDenoiser(transformer, _embeds(1), [0], guidance_scale=5.0)
    with pytest.raises(ConfigError, match="text_len"):
        WanDenoiser(transformer, torch.zeros(1, TEXT_LEN + 1, TINY_TEXT_DIM), [0], guidance_scale=1.0)
    den = WanDenoiser(transformer, _embeds(1), [0, 0], guidance_scale=1.0)
    with pytest.raises(ConfigError, match="outside"):
        den(_inputs(1, 3), torch.zeros(1, 3), torch.arange(3)[None])


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(seed=4)


def test_normalize_round_trip(vae):
    mean, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
    z = torch.randn(16, 3, 2, 2)
    x = normalize_latents(z, mean, std)
    torch.testing.assert_close(x[:, 0, 0, 0], (z[:, 0, 0, 0] - mean) / std)
    torch.testing.assert_close(denormalize_latents(x, mean, std), z, atol=1e-5, rtol=1e-5)


def test_streamed_decode_equals_one_vae_call(vae):
    mean, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
    latents = torch.randn(16, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    seen = []
    frames = decode_latents(vae, latents, mean, std, progress=lambda d, n: seen.append((d, n)))
    assert frames.shape == (13, 16, 24, 3) and frames.dtype == np.uint8
    assert seen[-1] == (4, 4) and len(seen) == 4
    with torch.no_grad():
        ref = vae.decode(denormalize_latents(latents, mean, std)[None], return_dict=False)[0][0]
    ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert np.array_equal(frames, ref)
    assert np.array_equal(decode_latents(vae, latents, mean, std, stream=False), ref)


def test_training_and_sampling_share_the_timestep_rule():
    from framecap_core.backend import token_timesteps
    from framecap_core.training import frame_timesteps

    same = torch.tensor([[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    assert torch.equal(frame_timesteps(same, 4), torch.tensor([500.0, 250.0]))
    per_frame = torch.tensor([[0.0, 0.5, 1.0]])
    expected = torch.tensor([[0.0] * 2 + [500.0] * 2 + [1000.0] * 2])
    assert torch.equal(frame_timesteps(per_frame, 2), expected)
    assert torch.equal(token_timesteps(per_frame * 1000, 2), expected)
    assert torch.equal(token_timesteps(same * 1000, 4, per_token=True), (same * 1000).repeat_interleave(4, dim=1))
