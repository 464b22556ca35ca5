"""Key-name conversion round trips (diffusers -> original -> diffusers) on the tiny transformer and VAE."""

from __future__ import annotations

import pytest

from framecap_core import convert, testing

pytest.importorskip("diffusers")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
def test_transformer_round_trip_is_exact(prefix):
    state = testing.make_tiny_transformer(seed=0).state_dict()
    original = convert.transformer_to_original_keys(state, prefix=prefix)
    assert "head.modulation" in {k.removeprefix(prefix) for k in original}
    assert not any(".attn1." in k for k in original)
    back = convert.transformer_to_diffusers_keys(original)
    assert set(back) == set(state)
    assert all(back[k] is state[k] for k in state)


def test_transformer_diffusers_names_pass_through():
    state = testing.make_tiny_transformer(seed=0).state_dict()
    prefixed = {"transformer." + k: v for k, v in state.items()}
    assert convert.transformer_to_diffusers_keys(prefixed).keys() == state.keys()


def test_vae_round_trip_is_exact():
    state = testing.make_tiny_vae(seed=0).state_dict()
    original = convert.vae_to_original_keys(state)
    assert "decoder.middle.0.residual.0.gamma" in original and "decoder.upsamples.4.shortcut.weight" in original
    back = convert.vae_to_diffusers_keys(original)
    assert set(back) == set(state)
    assert all(back[k] is state[k] for k in state)
    assert convert.vae_to_diffusers_keys({"vae." + k: v for k, v in original.items()}).keys() == state.keys()
