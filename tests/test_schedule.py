import math

import pytest
import torch

from framecap_core.errors import ConfigError
from framecap_core.schedule import (
    DEFAULT_SHIFT,
    DFTrainingNoise,
    df_num_iterations,
    df_sigma_matrix,
    df_step_indices,
    flow_sigmas,
    sample_df_training_sigmas,
    sample_df_training_sigmas_batch,
    shift_sigmas,
)


def test_shift_formula_on_known_values():
    assert shift_sigmas(0.5, 3.0) == pytest.approx(1.5 / 2.0)
    assert shift_sigmas(0.25, 5.0) == pytest.approx(1.25 / 2.0)
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_sigmas(s, 1.0), s)
    assert shift_sigmas(0.0, 7.0) == 0.0 and shift_sigmas(1.0, 7.0) == 1.0


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 3.0), (30, DEFAULT_SHIFT), (50, 8.0)])
def test_flow_sigmas_shape_ends_monotone(steps, shift):
    s = flow_sigmas(steps, shift)
    assert s.shape == (steps + 1,) and s.dtype == torch.float32
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()
    # interior points follow the formula
    base = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    torch.testing.assert_close(s, (shift * base / (1 + (shift - 1) * base)).float())


def test_flow_sigmas_matches_diffusers_flow_grid():
    # diffusers' UniPC with use_flow_sigmas shifts linspace(1, 1/1000, n+1)[:-1]; ours shifts linspace(1, 0, n+1).
    # Same formula: evaluate ours on their base points.
    from diffusers import UniPCMultistepScheduler

    sch = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sch.set_timesteps(10)
    base = torch.linspace(1, 1 / 1000, 11, dtype=torch.float64)[:-1]
    ours = shift_sigmas(base, 3.0).float()
    torch.testing.assert_close(sch.sigmas[1:-1], ours[1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_flow_sigmas_rejects_bad_steps(bad):
    with pytest.raises(ConfigError, match="num_steps"):
        flow_sigmas(bad)
    with pytest.raises(ConfigError, match="shift"):
        flow_sigmas(10, 0.0)


# ---------------------------------------------------------------- DF inference matrix


@pytest.mark.parametrize("steps,L,df_step,block", [(5, 7, 0, 1), (5, 7, 2, 1), (4, 9, 3, 2), (3, 5, 10, 1), (6, 6, 1, 4)])
def test_df_matrix_properties(steps, L, df_step, block):
    grid = flow_sigmas(steps, 3.0)
    m = df_sigma_matrix(steps, L, df_step=df_step, causal_block_size=block, shift=3.0)
    num_blocks = math.ceil(L / block)
    assert m.shape == (steps + df_step * (num_blocks - 1) + 1, L)
    assert m.shape[0] - 1 == df_num_iterations(steps, L, df_step=df_step, causal_block_size=block)
    assert (m >= 0).all() and (m <= 1).all()
    assert (m[0] == 1).all() and (m[-1] == 0).all()
    # each column is non-increasing and visits exactly the grid (holding at 1 before, at 0 after)
    assert (m[1:] <= m[:-1]).all()
    for col in m.T:
        assert torch.equal(torch.unique_consecutive(col), grid)
    # in every row, earlier latents are never noisier than later ones
    assert (m[:, 1:] >= m[:, :-1]).all()
    # latents of one causal block share a schedule; block b lags block 0 by b * df_step
    idx = df_step_indices(steps, L, df_step=df_step, causal_block_size=block)
    for latent in range(L):
        b = latent // block
        assert torch.equal(idx[:, latent], (torch.arange(m.shape[0]) - b * df_step).clamp(0, steps))


def test_df_matrix_synchronous_is_the_grid():
    m = df_sigma_matrix(8, 5, df_step=0, causal_block_size=3, shift=5.0)
    assert torch.equal(m, flow_sigmas(8, 5.0)[:, None].expand(9, 5))


def test_df_matrix_known_small_case():
    idx = df_step_indices(2, 3, df_step=1)
    assert idx.tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0], [2, 2, 1], [2, 2, 2]]
    grid = torch.tensor([1.0, 0.4, 0.0])
    assert torch.equal(df_sigma_matrix(2, 3, df_step=1, sigmas=grid), grid[idx])


@pytest.mark.parametrize("kwargs", [dict(df_step=-1), dict(causal_block_size=0), dict(df_step=1.5)])
def test_df_matrix_rejects_bad_args(kwargs):
    with pytest.raises(ConfigError):
        df_sigma_matrix(4, 5, **kwargs)
    with pytest.raises(ConfigError):
        df_sigma_matrix(4, 0)
    with pytest.raises(ConfigError, match="num_steps"):
        df_sigma_matrix(4, 5, sigmas=torch.tensor([1.0, 0.0]))


# ---------------------------------------------------------------- DF training noise


def test_df_training_config_validation_and_dict():
    cfg = DFTrainingNoise()
    assert cfg.to_dict() == {"step_size_range": [0.0, 0.1], "zero_step_prob": 0.2, "shift": DEFAULT_SHIFT}
    for bad in (dict(step_size_range=(0.2, 0.1)), dict(step_size_range=(-0.1, 0.1)), dict(zero_step_prob=1.5),
                dict(shift=0.0)):
        with pytest.raises(ConfigError):
            DFTrainingNoise(**bad)


def test_df_training_sigmas_follow_the_formula():
    g = torch.Generator().manual_seed(0)
    draw = sample_df_training_sigmas_batch(256, 21, generator=g)
    assert draw.sigmas.shape == (256, 21) and draw.reference.shape == (256,)
    f = torch.arange(21, dtype=torch.float64)
    expected = (draw.level.double()[:, None] + (f - draw.reference[:, None]) * draw.step_size.double()[:, None])
    torch.testing.assert_close(draw.sigmas, expected.clamp(0, 1).float())
    assert (draw.sigmas >= 0).all() and (draw.sigmas <= 1).all()
    # delta >= 0: earlier frames never noisier than later ones; the reference frame holds the level
    assert (draw.sigmas[:, 1:] >= draw.sigmas[:, :-1]).all()
    torch.testing.assert_close(draw.sigmas[torch.arange(256), draw.reference], draw.level)
    assert ((draw.step_size >= 0) & (draw.step_size <= 0.1)).all()
    assert ((draw.reference >= 0) & (draw.reference < 21)).all()


def test_df_training_distribution():
    n = 20000
    cfg = DFTrainingNoise(step_size_range=(0.02, 0.05), zero_step_prob=0.3, shift=3.0)
    draw = sample_df_training_sigmas_batch(n, 9, generator=torch.Generator().manual_seed(1), config=cfg)
    zero = draw.step_size == 0
    assert abs(zero.float().mean().item() - 0.3) < 0.015  # ~4.6 standard deviations
    nonzero = draw.step_size[~zero]
    assert nonzero.min() >= 0.02 and nonzero.max() <= 0.05
    assert abs(nonzero.mean().item() - 0.035) < 0.001
    # synchronous rows are constant
    assert (draw.sigmas[zero] == draw.level[zero][:, None]).all()
    # reference uniform over frames
    counts = torch.bincount(draw.reference, minlength=9).float() / n
    assert (counts - 1 / 9).abs().max() < 0.01
    # level = shift(U): P(level <= shift(0.5)) = 0.5
    assert abs((draw.level <= shift_sigmas(0.5, 3.0)).float().mean().item() - 0.5) < 0.015


def test_df_training_determinism_and_single():
    a = sample_df_training_sigmas(13, generator=torch.Generator().manual_seed(7))
    b = sample_df_training_sigmas(13, generator=torch.Generator().manual_seed(7))
    c = sample_df_training_sigmas(13, generator=torch.Generator().manual_seed(8))
    assert a.sigmas.shape == (13,) and a.reference.ndim == 0
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.sigmas, c.sigmas)
    always_sync = sample_df_training_sigmas_batch(
        50, 5, generator=torch.Generator().manual_seed(0), config=DFTrainingNoise(zero_step_prob=1.0)
    )
    assert (always_sync.step_size == 0).all()
