"""Generation settings, plans, and generation end to end on a tiny Wan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framecap_core.errors import CancelledError, ConfigError
from framecap_core.pipeline import GenerationSettings, generate, plan_generation
from framecap_core.timeline import parse_timeline
from framecap_core.windows import plan_windows

CAPTIONS = "a red fox in snow | the fox jumps over a river | night falls on the forest"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from framecap_core.models import load_wan
    from framecap_core.testing import save_tiny_wan

    folder = save_tiny_wan(tmp_path_factory.mktemp("tiny"), formats=("diffusers",), text_len=8)["diffusers"]
    return load_wan(folder, device="cpu", dtype="fp32")


def tiny_settings(**changes) -> GenerationSettings:
    base = dict(window=17, overlap=8, steps=3, width=32, height=32, seed=7)
    base.update(changes)
    return GenerationSettings(**base)


# ------------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(window=81, overlap=84), "smaller than the window"),
        (dict(window=81, overlap=80), "smaller than the window"),  # 20 latents of 21: still advances
        (dict(window=80), "4k\\+1.*use 77 or 81"),
        (dict(overlap=30), "multiple of 4.*use 28 or 32"),
        (dict(width=840), "multiple of 16.*use 832 or 848"),
        (dict(height=0), "height must be an integer >= 16"),
        (dict(method="magic"), "pmwd, sliding, fifo, single"),
        (dict(fusion="max"), "flat, pyramid, overlap-linear"),
        (dict(solver="unipc", df_step=2), "use solver 'euler' or 'auto'"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(guidance=-1.0), "guidance must be a number >= 0"),
        (dict(window_batch_size=0), "window_batch_size"),
    ],
)
def test_settings_validation_names_the_fix(changes, match):
    settings = GenerationSettings(**changes)
    if changes.get("overlap") == 80:
        settings.validate()  # 80 frames = 20 latents < 21: allowed
        return
    with pytest.raises(ConfigError, match=match):
        settings.validate()


def test_pixel_frames_to_latents():
    s = GenerationSettings(window=81, overlap=28)
    assert (s.window_latents, s.overlap_latents, s.stride_latents) == (21, 7, 14)
    s = GenerationSettings(window=17, overlap=8)
    assert (s.window_latents, s.overlap_latents, s.stride_latents) == (5, 2, 3)
    assert GenerationSettings().resolved_solver() == "unipc"
    assert GenerationSettings(df_step=1).resolved_solver() == "euler"
    assert GenerationSettings(method="fifo").resolved_solver() == "euler"


# ---------------------------------------------------------------------------------------------------------- plan


def test_plan_pmwd_30_seconds():
    tl = parse_timeline(CAPTIONS, num_frames=481)
    plan = plan_generation(tl, GenerationSettings(steps=50))
    assert plan.num_latents == 121 and plan.latent_size == (60, 104)
    starts = plan_windows(121, 21, 14)
    assert plan.window_spans == [(s, s + 21) for s in starts]
    assert plan.window_spans[-1] == (100, 121)  # flush with the end
    assert plan.forwards_per_step == len(starts) == 9
    assert plan.total_forwards == 50 * 9 and plan.num_steps == 50
    assert plan.batch_rows_per_forward == 2
    assert plan.latent_captions == tl.latent_captions()
    assert plan.unique_captions == tl.unique_captions()
    text = plan.describe(tl)
    assert "121 latents" in text and "9 windows" in text and "9 window forwards per step" in text
    for caption in tl.unique_captions():
        assert caption in text


def test_plan_costs_per_method():
    tl = parse_timeline(CAPTIONS, num_frames=481)
    costs = {m: plan_generation(tl, GenerationSettings(method=m, steps=21)) for m in ("pmwd", "sliding", "fifo", "single")}
    assert costs["single"].total_forwards == 21 and costs["single"].window_spans == [(0, 121)]
    # sliding: every window runs all steps, one after the other
    assert costs["sliding"].total_forwards == 21 * len(plan_windows(121, 21, 14))
    assert costs["sliding"].forwards_per_step == 1
    # fifo: 21 steps for the first window, then one forward per latent
    assert costs["fifo"].total_forwards == 21 + 121
    assert costs["pmwd"].forwards_per_latent == pytest.approx(21 * 9 / 121)


def test_plan_short_video_caps_the_window_and_guidance_one():
    tl = parse_timeline(CAPTIONS, num_frames=33)
    plan = plan_generation(tl, GenerationSettings(guidance=1.0))
    assert plan.window_latents == 9 and plan.window_spans == [(0, 9)]
    assert plan.batch_rows_per_forward == 1


def test_plan_rejects_non_timeline():
    with pytest.raises(ConfigError, match="parse_timeline"):
        plan_generation({"scenes": []}, GenerationSettings())


# --------------------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def timeline():
    return parse_timeline(CAPTIONS, num_frames=33)  # 9 latents, 3 scenes


def test_same_seed_same_video(model, timeline):
    a = generate(model, timeline, tiny_settings(window=9, overlap=4))
    b = generate(model, timeline, tiny_settings(window=9, overlap=4))
    c = generate(model, timeline, tiny_settings(window=9, overlap=4, seed=8), decode=False)
    assert a.frames.shape == (33, 32, 32, 3) and a.frames.dtype == np.uint8
    assert a.latents.shape == (16, 9, 4, 4) and a.latents.dtype == torch.float32
    assert torch.equal(a.latents, b.latents) and np.array_equal(a.frames, b.frames)
    assert (a.latents - c.latents).abs().max() > 0.1
    assert len(a.scene_frames()) == 3 and a.scene_frames()[0].shape == (32, 32, 3)


@pytest.mark.parametrize("method", ["pmwd", "sliding", "fifo", "single"])
def test_each_method_runs_and_reports_its_cost(model, timeline, method):
    events = []
    settings = tiny_settings(method=method)
    result = generate(model, timeline, settings, progress=events.append, decode=False)
    assert result.latents.shape == (16, 9, 4, 4) and torch.isfinite(result.latents).all()
    denoise = [e for e in events if e.phase == "denoise"]
    assert denoise[-1].done == denoise[-1].total == result.plan.total_forwards
    steps = [e for e in denoise if e.kind == "step"]
    assert len(steps) == result.plan.num_steps
    if method == "pmwd":  # a window event per chunk of windows, a step event per step
        assert [e.kind for e in denoise[:2]] == ["window", "step"]
        assert denoise[0].num_windows == len(result.plan.window_spans) == 3


def test_pmwd_one_window_is_plain_sampling(model, timeline):
    # The window covers the whole video: PMWD is then exactly single-window sampling.
    one = generate(model, timeline, tiny_settings(window=81, overlap=28), decode=False)
    single = generate(model, timeline, tiny_settings(method="single"), decode=False)
    assert torch.equal(one.latents, single.latents)


def test_window_batch_size_does_not_change_the_result(model, timeline):
    full = generate(model, timeline, tiny_settings(), decode=False)
    chunked = generate(model, timeline, tiny_settings(window_batch_size=1), decode=False)
    torch.testing.assert_close(full.latents, chunked.latents, atol=1e-5, rtol=1e-5)


def test_captions_matter(model):
    a = parse_timeline(CAPTIONS, num_frames=33)
    b = parse_timeline("night falls on the forest | a red fox in snow | the fox jumps over a river", num_frames=33)
    la = generate(model, a, tiny_settings(), decode=False).latents
    lb = generate(model, b, tiny_settings(), decode=False).latents
    assert (la - lb).abs().max() > 1e-3


def test_diffusion_forcing_schedule_runs(model, timeline):
    result = generate(model, timeline, tiny_settings(df_step=1, causal_block_size=2), decode=False)
    assert result.plan.solver == "euler" and torch.isfinite(result.latents).all()
    assert result.plan.num_steps == 3 + 1 * (5 - 1)  # 9 latents in 5 blocks of 2


def test_rerun_encodes_no_caption(model, timeline):
    from framecap_core.text import CaptionEncoder

    encoder = CaptionEncoder.from_model(model)
    generate(model, timeline, tiny_settings(steps=1), decode=False, caption_encoder=encoder)
    first = encoder.encoded
    generate(model, timeline, tiny_settings(steps=1), decode=False, caption_encoder=encoder)
    assert encoder.encoded == first


def test_cancellation(model, timeline):
    events = []

    def cancel():
        return len(events) >= 3

    with pytest.raises(CancelledError, match="cancelled during denoise"):
        generate(model, timeline, tiny_settings(), progress=events.append, cancel=cancel, decode=False)
    assert [e.phase for e in events][:2] == ["encode", "encode"]

    seen = []
    with pytest.raises(CancelledError, match="decode"):
        generate(model, timeline, tiny_settings(steps=1, window=9, overlap=4), progress=seen.append,
                 cancel=lambda: any(e.phase == "decode" for e in seen))


def test_invalid_settings_fail_before_any_work(model, timeline):
    calls = []
    with pytest.raises(ConfigError, match="overlap"):
        generate(model, timeline, tiny_settings(overlap=20), progress=calls.append)
    assert calls == []


# ------------------------------------------------------------------------------------------------------ plan once


def test_generate_runs_the_plan_it_is_given_without_planning_again(model, monkeypatch):
    import framecap_core.sampling as sampling
    import framecap_core.windows as windows

    timeline = parse_timeline(CAPTIONS, num_frames=33)
    for method in ("pmwd", "sliding", "fifo", "single"):
        settings = tiny_settings(method=method, window=9, overlap=4, steps=2)
        reference = generate(model, timeline, settings, decode=False).latents
        plan = plan_generation(timeline, settings)
        assert plan.sampler.cost.window_forwards == plan.total_forwards

        def no_replanning(*args, **kwargs):
            raise AssertionError("planned again")

        with monkeypatch.context() as patch:
            for module in (sampling, windows):
                patch.setattr(module, "plan_windows", no_replanning)
            patch.setattr(sampling, "estimate_cost", no_replanning)
            patch.setattr("framecap_core.pipeline.plan_generation", no_replanning)
            result = generate(model, plan, decode=False)
        assert torch.equal(result.latents, reference), method
        assert result.plan is plan and result.settings is settings


def test_a_plan_carries_its_settings_and_must_match_the_model_grid(model):
    timeline = parse_timeline(CAPTIONS, num_frames=17)
    plan = plan_generation(timeline, tiny_settings(), vae_scale=16)
    assert plan.latent_size == (2, 2) and plan.vae_scale == 16
    with pytest.raises(ConfigError, match="VAE stride of 16 but the model's is 8"):
        generate(model, plan, decode=False)
    with pytest.raises(ConfigError, match="leave settings unset"):
        generate(model, plan_generation(timeline, tiny_settings()), tiny_settings(), decode=False)
    with pytest.raises(ConfigError, match="multiple of 32 \\(VAE stride 16 x patch 2\\); use 32 or 64"):
        plan_generation(timeline, tiny_settings(width=48), vae_scale=16)


def test_headline_is_the_head_of_describe():
    plan = plan_generation(parse_timeline(CAPTIONS, num_frames=81), GenerationSettings())
    assert plan.describe().startswith(plan.headline() + "\nnegative: ")
    assert len(plan.headline().splitlines()) == 3


def test_deciding_the_window_batch_changes_only_the_calls():
    """with_window_batch_size (an "auto" batch resolved at run time) keeps every planned window and the cost."""
    timeline = parse_timeline(CAPTIONS, num_frames=33)
    plan = plan_generation(timeline, tiny_settings(method="pmwd", window=9, overlap=4, steps=2))
    decided = plan.with_window_batch_size(2)
    assert decided.sampler.window_batch_size == 2 and decided.settings.window_batch_size == 2
    assert decided.sampler.window_starts == plan.sampler.window_starts
    assert decided.window_spans == plan.window_spans and decided.total_forwards == plan.total_forwards
    assert plan.settings.window_batch_size != 2  # the original plan is left as it was
