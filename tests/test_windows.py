import pytest
import torch

from framecap_core.errors import ConfigError
from framecap_core.windows import FUSION_KINDS, WindowFuser, fuse, fusion_weights, plan_windows, window_overlaps


def test_plan_known_cases():
    assert plan_windows(10, 4, 3) == [0, 3, 6]
    assert plan_windows(11, 4, 3) == [0, 3, 6, 7]
    assert plan_windows(121, 21, 10) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert plan_windows(122, 21, 10)[-2:] == [100, 101]
    assert plan_windows(5, 21, 10) == [0]
    assert plan_windows(21, 21, 10) == [0]
    assert plan_windows(8, 4, 4) == [0, 4]
    assert plan_windows(4, 1, 1) == [0, 1, 2, 3]
    assert window_overlaps([0, 3, 6, 7], 4) == [0, 1, 1, 3]


@pytest.mark.parametrize("L", range(1, 40, 3))
@pytest.mark.parametrize("window,stride", [(1, 1), (4, 1), (4, 3), (5, 5), (7, 3), (21, 10)])
def test_plan_properties(L, window, stride):
    starts = plan_windows(L, window, stride)
    n = min(L, window)
    assert starts[0] == 0 and starts[-1] == L - n
    assert len(set(starts)) == len(starts) and starts == sorted(starts)
    covered = torch.zeros(L, dtype=torch.bool)
    for s in starts:
        covered[s:s + n] = True
    assert covered.all()
    assert all(b - a <= stride for a, b in zip(starts[:-1], starts[1:]))


@pytest.mark.parametrize("args,match", [((10, 4, 0), "stride"), ((10, 4, 5), "stride .*<= 4"),
                                        ((10, 0, 1), "window"), ((0, 4, 2), "num_latents")])
def test_plan_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        plan_windows(*args)


def test_weights_exact():
    assert fusion_weights(4).tolist() == [1, 1, 1, 1]
    assert fusion_weights(5, "pyramid").tolist() == [1, 2, 3, 2, 1]
    assert fusion_weights(4, "pyramid").tolist() == [1, 2, 2, 1]
    torch.testing.assert_close(fusion_weights(6, "overlap-linear", overlap=2), torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]))
    assert fusion_weights(5, "overlap-linear", overlap=0).tolist() == [1] * 5
    assert (fusion_weights(7, "overlap-linear") > 0).all()
    with pytest.raises(ConfigError, match="flat"):
        fusion_weights(4, "gaussian")
    with pytest.raises(ConfigError, match="overlap"):
        fusion_weights(4, "overlap-linear", overlap=-1)


def test_fuse_exact_numbers():
    # two windows of 3 over 4 latents: starts 0 and 1, C = H = W = 1
    preds = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]).view(2, 1, 3, 1, 1)
    flat = fuse(preds, [0, 1], fusion_weights(3), 4).flatten()
    assert flat.tolist() == [1.0, 6.0, 11.5, 30.0]
    pyr = fuse(preds, [0, 1], fusion_weights(3, "pyramid"), 4).flatten()  # weights 1, 2, 1
    torch.testing.assert_close(pyr, torch.tensor([1.0, (2 * 2 + 10 * 1) / 3, (3 * 1 + 20 * 2) / 3, 30.0]))
    per_window = fuse(preds, [0, 1], torch.tensor([[1.0, 1.0, 3.0], [1.0, 1.0, 1.0]]), 4).flatten()
    torch.testing.assert_close(per_window, torch.tensor([1.0, 6.0, (9 + 20) / 4, 30.0]))


def test_fuser_chunks_equal_one_shot_and_uncovered_zero():
    g = torch.Generator().manual_seed(0)
    preds = torch.randn(3, 2, 4, 2, 3, generator=g)
    w = fusion_weights(4, "pyramid")
    whole = fuse(preds, [0, 2, 4], w, 9)
    fuser = WindowFuser(9, preds)
    fuser.add(preds[:1], [0], w)
    fuser.add(preds[1:], [2, 4], w)
    torch.testing.assert_close(fuser.result(), whole, rtol=0, atol=0)
    assert (whole[:, 8] == 0).all()  # no window covers latent 8


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_constant_prediction_stays_constant(kind):
    L, window, stride = 23, 7, 3
    starts = plan_windows(L, window, stride)
    value = torch.randn(4, 1, 1, generator=torch.Generator().manual_seed(3))
    preds = value[None, :, None].expand(len(starts), 4, window, 1, 1)
    out = fuse(preds, starts, fusion_weights(window, kind, overlap=window - stride), L)
    torch.testing.assert_close(out, value[:, None].expand(4, L, 1, 1))


def test_single_window_flat_fusion_is_exact():
    preds = torch.randn(1, 3, 5, 2, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fuse(preds, [0], fusion_weights(5), 5), preds[0])
