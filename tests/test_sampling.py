import pytest
import torch
from diffusers import UniPCMultistepScheduler

from framecap_core.errors import CancelledError, ConfigError, NumericalError
from framecap_core.sampling import (
    SamplerEvent,
    count_window_forwards,
    estimate_cost,
    fifo,
    pmwd,
    single_window,
    sliding_window,
)
from framecap_core.schedule import df_sigma_matrix, flow_sigmas

C, H, W = 2, 3, 2


def make_noise(L, seed=0):
    return torch.randn(C, L, H, W, generator=torch.Generator().manual_seed(seed))


class ExactX0:
    """Knows the clean video: v = (x_t - x0) / sigma, the exact velocity for x_t on the line from x0."""

    def __init__(self, x0):
        self.x0 = x0

    def __call__(self, x, t, frames):
        x0 = self.x0[:, frames].permute(1, 0, 2, 3, 4)  # [K, C, N, H, W]
        s = (t / 1000).clamp(min=1e-4)[:, None, :, None, None]
        return (x - x0) / s


class FrameIndependent:
    """v at a latent depends only on that latent's x, t and index."""

    def __call__(self, x, t, frames):
        scale = (1 + 0.1 * frames.float())[:, None, :, None, None]
        return torch.tanh(x) * scale + (t / 1000)[:, None, :, None, None] * 0.3


class Mixing:
    """Frames interact (through the window mean and the window's first index), as a transformer's do."""

    def __call__(self, x, t, frames):
        mean = x.mean(dim=2, keepdim=True)
        tt = (t / 1000)[:, None, :, None, None]
        return 0.5 * x - 0.7 * mean * tt + 0.05 * frames[:, :1, None, None, None].float() + torch.sin(x) * tt


class Recorder:
    """Wraps a denoiser and records every call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, x, t, frames):
        self.calls.append((x.clone(), t.clone(), frames.clone()))
        return self.inner(x, t, frames)

    @property
    def forwards(self):
        return sum(x.shape[0] for x, _, _ in self.calls)


# ---------------------------------------------------------------- PMWD


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_pmwd_one_window_equals_single_window_bit_for_bit(solver):
    noise, sig = make_noise(7), flow_sigmas(6, 3.0)
    a = pmwd(Mixing(), noise, sig, window=7, stride=3, solver=solver)
    b = single_window(Mixing(), noise, sig, solver=solver)
    assert torch.equal(a, b)
    c = pmwd(Mixing(), noise, sig, window=21, stride=10, solver=solver)  # window longer than the video
    assert torch.equal(c, b)


def test_pmwd_one_window_equals_single_window_with_df_matrix():
    noise = make_noise(6)
    m = df_sigma_matrix(5, 6, df_step=2, causal_block_size=2, shift=3.0)
    assert torch.equal(pmwd(Mixing(), noise, window=6, stride=2, df_sigma_matrix=m),
                       single_window(Mixing(), noise, df_sigma_matrix=m))


@pytest.mark.parametrize("fusion", ["flat", "pyramid", "overlap-linear"])
@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_pmwd_frame_independent_equals_whole_sequence(fusion, solver):
    noise, sig = make_noise(19, 1), flow_sigmas(5)
    whole = single_window(FrameIndependent(), noise, sig, solver=solver)
    windows = pmwd(FrameIndependent(), noise, sig, window=6, stride=4, fusion=fusion, solver=solver)
    torch.testing.assert_close(windows, whole, rtol=1e-6, atol=1e-6)


def test_pmwd_mixing_differs_from_whole_sequence():
    # guards the previous test: with interacting frames, windows do change the result
    noise, sig = make_noise(19, 1), flow_sigmas(5)
    assert not torch.allclose(pmwd(Mixing(), noise, sig, window=6, stride=4), single_window(Mixing(), noise, sig))


@pytest.mark.parametrize("df_step", [0, 2])
def test_window_batch_size_does_not_change_the_result(df_step):
    noise = make_noise(17, 2)
    m = df_sigma_matrix(4, 17, df_step=df_step, shift=3.0)
    outs = [pmwd(Mixing(), noise, window=5, stride=3, df_sigma_matrix=m, window_batch_size=b, fusion="pyramid")
            for b in (1, 2, 4, None)]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_pmwd_batches_windows_and_feeds_absolute_frames():
    rec = Recorder(Mixing())
    noise, sig = make_noise(11), flow_sigmas(3)
    pmwd(rec, noise, sig, window=4, stride=3, window_batch_size=3)  # starts 0, 3, 6, 7 -> chunks of 3 and 1
    assert [x.shape[0] for x, _, _ in rec.calls] == [3, 1] * 3
    x, t, frames = rec.calls[0]
    assert x.shape == (3, C, 4, H, W)
    assert frames.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert rec.calls[1][2].tolist() == [[7, 8, 9, 10]]
    assert torch.equal(x[1], noise[:, 3:7])  # every window is cut from the same x_t
    assert (t == 1000.0).all() and t.dtype == torch.float32
    torch.testing.assert_close(rec.calls[2][1], torch.full((3, 4), 1000 * sig[1].item()))


def test_determinism_by_seed():
    sig = flow_sigmas(4)
    a = pmwd(Mixing(), make_noise(13, 5), sig, window=5, stride=2)
    b = pmwd(Mixing(), make_noise(13, 5), sig, window=5, stride=2)
    c = pmwd(Mixing(), make_noise(13, 6), sig, window=5, stride=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("df_step", [0, 1, 3])
def test_euler_on_exact_x0_denoiser_lands_on_x0(df_step):
    x0 = make_noise(14, 9)
    m = df_sigma_matrix(6, 14, df_step=df_step, causal_block_size=2)
    out = pmwd(ExactX0(x0), make_noise(14), window=5, stride=2, df_sigma_matrix=m)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_df_step_zero_equals_synchronous():
    noise, sig = make_noise(12, 3), flow_sigmas(5, 4.0)
    m = df_sigma_matrix(5, 12, df_step=0, causal_block_size=3, shift=4.0)
    sync = pmwd(Mixing(), noise, sig, window=5, stride=3)
    assert torch.equal(pmwd(Mixing(), noise, window=5, stride=3, df_sigma_matrix=m), sync)
    assert torch.equal(pmwd(Mixing(), noise, window=5, stride=3, df_sigma_matrix=m, solver="unipc"),
                       pmwd(Mixing(), noise, sig, window=5, stride=3, solver="unipc"))


def test_df_per_frame_timesteps_and_skipped_windows():
    rec = Recorder(Mixing())
    L, steps, lag = 9, 3, 2
    m = df_sigma_matrix(steps, L, df_step=lag, causal_block_size=3)
    pmwd(rec, make_noise(L), window=3, stride=3, df_sigma_matrix=m)
    # first iteration: only block 0 moves, so only window 0 is evaluated, at t = 1000 * grid[0]
    x, t, frames = rec.calls[0]
    assert frames.tolist() == [[0, 1, 2]]
    # a later row has per-frame timesteps: block 0 ahead of block 1
    _, t2, f2 = rec.calls[2]
    assert f2.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (t2[0] < t2[1]).all()
    expected = estimate_cost("pmwd", L, window=3, num_steps=steps, stride=3, df_step=lag, causal_block_size=3)
    assert rec.forwards == expected.window_forwards < (m.shape[0] - 1) * 3


def test_unipc_matches_diffusers_scheduler_loop():
    sch = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sch.set_timesteps(8)
    noise = make_noise(6, 4)
    den = Mixing()
    x = noise[None].clone()
    frames = torch.arange(6)[None]
    for t in sch.timesteps:
        v = den(x, t.float().expand(1, 6), frames)
        x = sch.step(v, t, x).prev_sample
    ours = single_window(den, noise, sch.sigmas, solver="unipc")
    torch.testing.assert_close(ours, x[0], rtol=1e-6, atol=1e-6)
    # and PMWD with one window takes the same path
    torch.testing.assert_close(pmwd(den, noise, sch.sigmas, window=6, stride=2, solver="unipc"), x[0],
                               rtol=1e-6, atol=1e-6)
    # UniPC differs from Euler (the solver really is in use)
    assert not torch.allclose(ours, single_window(den, noise, sch.sigmas))


def test_unipc_with_per_frame_timesteps_is_refused():
    m = df_sigma_matrix(4, 6, df_step=1)
    with pytest.raises(ConfigError, match="euler"):
        pmwd(Mixing(), make_noise(6), window=3, stride=2, df_sigma_matrix=m, solver="unipc")


# ---------------------------------------------------------------- baselines


@pytest.mark.parametrize("context,context_noise", [(0, 0.0), (2, 0.0), (3, 0.2)])
def test_sliding_window_produces_every_latent(context, context_noise):
    x0 = make_noise(13, 8)
    out = sliding_window(ExactX0(x0), make_noise(13), flow_sigmas(5), window=5, context=context,
                         context_noise=context_noise)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_sliding_window_conditions_on_context():
    rec = Recorder(Mixing())
    noise, sig = make_noise(9), flow_sigmas(3)
    out = sliding_window(rec, noise, sig, window=5, context=2, context_noise=0.25)
    # windows start at 0, 3, 4 (flush): 3 windows x 3 steps
    assert [f[0, 0].item() for _, _, f in rec.calls[::3]] == [0, 3, 4]
    x, t, frames = rec.calls[3]  # first step of the second window
    assert frames.tolist() == [[3, 4, 5, 6, 7]]
    assert t[0, :2].tolist() == [250.0, 250.0] and (t[0, 2:] == 1000).all()
    renoised = 0.75 * out[:, 3:5] + 0.25 * noise[:, 3:5]  # context re-noised with its own initial noise
    torch.testing.assert_close(x[0, :, :2], renoised)
    assert torch.equal(x[0, :, 2:], noise[:, 5:8])
    x, t, _ = rec.calls[6]  # last window reuses 4 latents (flush with the end)
    assert (t[0, :4] == 250).all() and t[0, 4] == 1000
    # clean context is fed as is with t = 0
    rec = Recorder(Mixing())
    out = sliding_window(rec, noise, sig, window=5, context=2)
    assert torch.equal(rec.calls[3][0][0, :, :2], out[:, 3:5]) and (rec.calls[3][1][0, :2] == 0).all()


def test_sliding_window_unipc_and_errors():
    x0 = make_noise(8, 1)
    out = sliding_window(ExactX0(x0), make_noise(8), flow_sigmas(6), window=4, context=1, solver="unipc")
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="context"):
        sliding_window(Mixing(), make_noise(8), flow_sigmas(3), window=4, context=4)
    with pytest.raises(ConfigError, match="context_noise"):
        sliding_window(Mixing(), make_noise(8), flow_sigmas(3), window=4, context=1, context_noise=1.0)


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("L", [4, 11])
def test_fifo_produces_every_latent(lookahead, L):
    x0 = make_noise(L, 3)
    out = fifo(ExactX0(x0), make_noise(L), window=5, lookahead=lookahead)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_fifo_queue_is_diagonal_and_frames_are_clamped():
    rec = Recorder(Mixing())
    L, window = 8, 4
    grid = flow_sigmas(window, 3.0)
    noise = make_noise(L)
    out = fifo(rec, noise, grid, window=window)
    assert torch.isfinite(out).all() and (out.abs().sum(dim=(0, 2, 3)) > 0).all()
    assert len(rec.calls) == window + L
    for m, (_, t, frames) in enumerate(rec.calls[:window]):  # first window: synchronous
        assert (t == 1000 * grid[m]).all() and frames.tolist() == [[0, 1, 2, 3]]
    x, t, frames = rec.calls[window]  # first queue iteration
    torch.testing.assert_close(t[0], 1000 * grid[:window].flip(0))
    assert torch.equal(x[0, :, -1], noise[:, window - 1])  # the back of the queue is pure noise
    assert frames.tolist() == [[0, 1, 2, 3]]
    assert rec.calls[-1][2].tolist() == [[7, 7, 7, 7]]  # past the end: last caption index
    assert rec.calls[window + 2][2].tolist() == [[2, 3, 4, 5]]
    for k in range(L - window + 1):  # each iteration pushes the next latent's own noise at the back
        assert torch.equal(rec.calls[window + k][0][0, :, -1], noise[:, window - 1 + k])
    # latents past the end get their noise from the generator
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(fifo(Mixing(), noise, grid, window=window, generator=g()),
                       fifo(Mixing(), noise, grid, window=window, generator=g()))
    assert not torch.equal(fifo(Mixing(), noise, grid, window=window, generator=g()), out)


def test_fifo_lookahead_windows():
    rec = Recorder(Mixing())
    L, window = 9, 4
    fifo(rec, make_noise(L), window=window, lookahead=True)
    # init (4) + first iteration (1) + 2 per later iteration
    assert rec.forwards == window + 1 + 2 * (L - 1) == count_window_forwards("fifo", L, window=window, lookahead=True)
    x, t, frames = rec.calls[window + 4]  # iteration 2: second window = 2 clean emitted latents + queue front
    assert frames.tolist() == [[0, 1, 2, 3]] and t[0, :2].tolist() == [0.0, 0.0]
    assert torch.equal(fifo(Mixing(), make_noise(L), window=window, lookahead=True),
                       fifo(Mixing(), make_noise(L), window=window, lookahead=True))
    assert not torch.equal(fifo(Mixing(), make_noise(L), window=window, lookahead=True),
                           fifo(Mixing(), make_noise(L), window=window))


def test_fifo_errors():
    with pytest.raises(ConfigError, match="exactly window"):
        fifo(Mixing(), make_noise(8), flow_sigmas(10), window=4)


# ---------------------------------------------------------------- progress, costs, errors


def run_method(method, den, L, callback=None, **kw):
    noise, sig = make_noise(L), flow_sigmas(4)
    if method == "pmwd":
        return pmwd(den, noise, sig, window=5, stride=3, window_batch_size=2, callback=callback, **kw)
    if method == "single":
        return single_window(den, noise, sig, callback=callback)
    if method == "sliding":
        return sliding_window(den, noise, sig, window=5, context=2, callback=callback)
    return fifo(den, noise, window=5, lookahead=True, callback=callback)


COSTS = {
    "pmwd": dict(window=5, num_steps=4, stride=3, window_batch_size=2),
    "single": dict(window=5, num_steps=4),
    "sliding": dict(window=5, num_steps=4, context=2),
    "fifo": dict(window=5, lookahead=True),
}


@pytest.mark.parametrize("method", ["pmwd", "single", "sliding", "fifo"])
def test_callback_counts_and_cost_estimate(method):
    L = 12
    events, rec = [], Recorder(Mixing())
    out = run_method(method, rec, L, callback=events.append)
    assert torch.isfinite(out).all()
    cost = estimate_cost(method, L, **COSTS[method])
    assert rec.forwards == cost.window_forwards and len(rec.calls) == cost.denoiser_calls
    steps = [e for e in events if e.kind == "step"]
    windows = [e for e in events if e.kind == "window"]
    assert all(isinstance(e, SamplerEvent) and e.method == method for e in events)
    assert len(steps) == cost.steps and [e.step for e in steps] == list(range(cost.steps))
    assert len(windows) == len(rec.calls)
    assert windows[-1].forwards == cost.window_forwards == events[-1].total_forwards
    assert all(e.window <= e.num_windows for e in events)
    if method == "pmwd":  # 12 latents, window 5, stride 3: starts 0, 3, 6, 7 -> 2 chunks of 2 per step
        assert [e.window for e in windows[:2]] == [2, 4] and windows[0].num_windows == 4


def test_cost_ratios_for_benchmarks():
    # forwards per generated latent at equal steps (21 steps, window 21, 121 latents)
    L, N = 121, 21
    pm = count_window_forwards("pmwd", L, window=N, num_steps=N, stride=10)
    sl = count_window_forwards("sliding", L, window=N, num_steps=N, context=5)
    ff = count_window_forwards("fifo", L, window=N)
    assert pm == 11 * N and sl == 8 * N and ff == N + L


@pytest.mark.parametrize("method", ["pmwd", "single", "sliding", "fifo"])
def test_nan_raises_numerical_error_naming_the_step(method):
    calls = []

    def bad(x, t, frames):
        calls.append(1)
        v = Mixing()(x, t, frames)
        return v * float("nan") if len(calls) == 3 else v

    with pytest.raises(NumericalError, match=r"step \d+/\d+"):
        run_method(method, bad, 12)


@pytest.mark.parametrize("method", ["pmwd", "single", "sliding", "fifo"])
def test_callback_exception_propagates(method):
    rec = Recorder(Mixing())

    def cancel(event):
        if event.kind == "step" and event.step == 1:
            raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        run_method(method, rec, 12, callback=cancel)
    assert 0 < rec.forwards < estimate_cost(method, 12, **COSTS[method]).window_forwards


def test_bad_settings_raise_config_errors():
    noise, sig = make_noise(10), flow_sigmas(3)
    for kwargs, match in [
        (dict(window=4, stride=5), "stride"),
        (dict(window=4, stride=2, fusion="gauss"), "fusion"),
        (dict(window=4, stride=2, solver="ddim"), "solver"),
        (dict(window=4, stride=2, window_batch_size=0), "window_batch_size"),
    ]:
        with pytest.raises(ConfigError, match=match):
            pmwd(Mixing(), noise, sig, **kwargs)
    with pytest.raises(ConfigError, match="non-increasing"):
        pmwd(Mixing(), noise, torch.tensor([0.5, 1.0, 0.0]), window=4, stride=2)
    with pytest.raises(ConfigError, match=r"\[M \+ 1, L\]"):
        pmwd(Mixing(), noise, window=4, stride=2, df_sigma_matrix=df_sigma_matrix(3, 9))
    with pytest.raises(ConfigError, match="C, L, H, W"):
        single_window(Mixing(), noise[None], sig)
    with pytest.raises(ConfigError, match="shaped like"):
        single_window(lambda x, t, f: x[:, :, :1], noise, sig)
