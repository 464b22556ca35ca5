"""The native backend: FrameCap over ComfyUI's own MODEL / CLIP (nodes/native_backend.py, nodes/native_nodes.py).

Without ComfyUI: the CLIP node on a stand-in with ComfyUI's CLIP interface (``tokenize`` / ``encode_from_tokens``)
and the nodes' input checks. With ``COMFYUI_PATH`` (and ``COMFYUI_PYTHON``, ComfyUI's interpreter): the checks of
``tests/comfy_native_checks.py`` run in ComfyUI's Python against ComfyUI's real classes:

- the CLIP node on ComfyUI's real ``comfy.sd.CLIP`` (Wan's UMT5 classes and tokenizer, 2 layers);
- (a) one caption, one window, Euler: native node == ComfyUI's own ``sample_custom`` (same sigmas, noise, CLIP);
- (b) native backend == FrameCap-loader backend on the same single-file weights, 3-scene timeline, PMWD;
- a LoRA through ComfyUI's LoraLoaderModelOnly == the same file through FrameCap's ``load_wan(lora=...)``;
- fp8 weights from UNETLoader (``fp8_e4m3fn``) end to end, against fp32 and FrameCap's loader;
- (c) at the Wan2.1-T2V-1.3B size (``FRAMECAP_REAL_SIZE=1``, ~12 GB of memory): native vs diffusers <= 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfy_executor import load_pack

from framecap_core.errors import ConfigError
from framecap_core.pipeline import DEFAULT_NEGATIVE
from framecap_core.timeline import parse_timeline

ROOT = Path(__file__).resolve().parents[1]
PACK = load_pack(ROOT)
native_nodes = sys.modules[f"{PACK.__name__}.nodes.native_nodes"]


class StandInCLIP:
    """ComfyUI's CLIP interface as the node uses it: ``tokenize(text)`` then ``encode_from_tokens(tokens)`` ->
    ``[1, tokens, dim]``. Like Wan's UMT5 in ComfyUI, a prompt gives max(512, words) rows, zero past its words."""

    def __init__(self, dim: int = 8, min_length: int = 512):
        self.dim, self.min_length = dim, min_length
        self.encoded: list[str] = []

    def tokenize(self, text):
        return {"umt5xxl": [[(float(len(word)), 1.0) for word in text.split()]]}

    def encode_from_tokens(self, tokens):
        words = [w for w, _ in tokens["umt5xxl"][0]]
        self.encoded.append(" ".join(str(w) for w in words))
        out = torch.zeros(1, max(self.min_length, len(words)), self.dim)
        for i, value in enumerate(words):
            out[0, i] = value + torch.arange(self.dim) * 0.01 + i
        return out


def test_clip_node_encodes_each_distinct_caption_once_and_points_latents_at_them():
    clip = StandInCLIP()
    timeline = parse_timeline("[0s-1s: a red fox] [1s-2s: a dog sleeps] [2s-3s: a red fox]", fps=16)
    (cond,) = native_nodes.FrameCapCLIPTextEncode().encode(clip, timeline, "low quality")
    ctx = cond.context
    assert len(clip.encoded) == 3  # "a red fox", "a dog sleeps", the negative: each once
    assert ctx.unique_captions == ["a red fox", "a dog sleeps"]
    assert ctx.latent_indices.tolist() == timeline.latent_unique_indices()
    assert ctx.unique_embeds.shape == (2, 512, 8) and ctx.negative_embeds.shape == (1, 512, 8)
    for caption, embed in zip(ctx.unique_captions, ctx.unique_embeds):
        assert torch.equal(embed[None], clip.encode_from_tokens(clip.tokenize(caption)))
    assert torch.equal(ctx.negative_embeds, clip.encode_from_tokens(clip.tokenize("low quality")))
    assert cond.negative == "low quality" and cond.timeline is timeline


def test_clip_node_pads_every_caption_to_the_longest_and_defaults_the_negative():
    clip = StandInCLIP(min_length=4)
    timeline = parse_timeline("[0s-1s: one two three four five six] [1s-2s: seven]", fps=16)
    (cond,) = native_nodes.FrameCapCLIPTextEncode().encode(clip, timeline, "  ")
    ctx = cond.context
    longest = max(6, len(DEFAULT_NEGATIVE.split()))
    assert ctx.unique_embeds.shape[1] == ctx.negative_embeds.shape[1] == longest
    short = ctx.unique_embeds[1]
    assert torch.equal(short[:4], clip.encode_from_tokens(clip.tokenize("seven"))[0]) and not short[4:].any()
    assert cond.negative == DEFAULT_NEGATIVE


def test_clip_node_refuses_what_is_not_a_clip():
    timeline = parse_timeline("a red fox", num_frames=17)
    with pytest.raises(ConfigError, match="CLIP"):
        native_nodes.FrameCapCLIPTextEncode().encode(object(), timeline, "")


def test_native_sampler_refuses_a_framecap_model():
    from framecap_core.text import TimelineContext

    timeline = parse_timeline("a red fox", num_frames=17)
    ctx = TimelineContext(["a red fox"], torch.zeros(1, 4, 8), torch.zeros(5, dtype=torch.long), torch.zeros(1, 4, 8))
    cond = native_nodes.FrameLevelConditioning(timeline, ctx, "", "x")
    schedule = native_nodes.DiffusionForcingSchedule(2, 5.0, "euler", 0, 1)
    with pytest.raises(ConfigError, match="ComfyUI MODEL"):
        native_nodes.FrameCapNativeSampler().sample(object(), cond, schedule, 16, 16, 0, 1.0, "pmwd", 17, 4, "flat", 0)


def test_native_nodes_are_registered_with_tooltips():
    for name in ("FrameCapCLIPTextEncode", "FrameCapNativeSampler"):
        cls = PACK.NODE_CLASS_MAPPINGS[name]
        assert name in PACK.NODE_DISPLAY_NAME_MAPPINGS
        for spec in cls.INPUT_TYPES()["required"].values():
            assert spec[1].get("tooltip")
    assert PACK.NODE_CLASS_MAPPINGS["FrameCapNativeSampler"].RETURN_TYPES == ("LATENT",)


# ----------------------------------------------------------------------------------------------- with ComfyUI

needs_comfy = pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")


def _run_checks(names: str, work: Path, timeout: int = 3600) -> dict:
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = {}
    for name in names.split(","):
        done = subprocess.run([python, str(ROOT / "tests" / "comfy_native_checks.py"), name, str(work)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr[-4000:]
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture(scope="module")
def comfy_checks(tmp_path_factory):
    return _run_checks("clip,vs_comfy,vs_loader,lora,fp8", tmp_path_factory.mktemp("native_checks"))


@pytest.mark.slow
@needs_comfy
def test_clip_node_on_comfyuis_real_clip_class(comfy_checks):
    clip = comfy_checks["clip"]
    assert clip["encode_calls"] == clip["unique_captions"] + 1 == 3
    assert clip["latent_indices"] == clip["expected_indices"]
    assert (clip["text_len"], clip["dim"]) == (512, 4096)
    assert clip["max_diff_vs_clip_text_encode"] == 0.0 and clip["negative_diff"] == 0.0


@pytest.mark.slow
@needs_comfy
def test_a_one_caption_one_window_equals_comfyuis_own_sampling(comfy_checks):
    result = comfy_checks["vs_comfy"]
    assert result["shift"] == 8.0  # the Wan2.1 model's own model_sampling, not the schedule's 99
    assert result["max_abs_ref"] > 1.0
    assert result["native_vs_comfy"] <= 1e-5
    assert result["frame_stacked_vs_comfy"] <= 1e-5  # one caption stacked per frame through the override
    assert result["user_model_untouched"]


@pytest.mark.slow
@needs_comfy
def test_b_native_backend_equals_the_framecap_loader_backend(comfy_checks):
    result = comfy_checks["vs_loader"]
    assert result["num_latents"] == 13
    for run in ("pmwd_unipc", "pmwd_df_euler"):
        assert result[run]["max_abs_ref"] > 1.0
        assert result[run]["max_abs_diff"] <= 1e-4, result


@pytest.mark.slow
@needs_comfy
def test_a_lora_from_comfyuis_lora_loader_equals_framecaps_loader_lora(comfy_checks):
    result = comfy_checks["lora"]
    assert result["max_abs_ref"] > 1.0
    for name in ("kohya", "framecap_export"):
        run = result[name]
        assert run["layers"] >= 16 and run["comfy_patched_weights"] == run["layers"], result  # every key applied
        assert run["native_vs_loader"] <= 1e-4, result  # the tolerance of (b)
        assert run["lora_effect"] >= 1000 * max(run["native_vs_loader"], 1e-6), result  # really applied, both sides
        assert run["user_model_unpatched"]


@pytest.mark.slow
@needs_comfy
def test_fp8_weights_from_unet_loader_run_end_to_end(comfy_checks):
    result = comfy_checks["fp8"]
    # ComfyUI stores every parameter but the patch embedding in fp8 and computes in fp32 on the CPU
    assert result["weight_dtypes"] == ["float32", "float8_e4m3fn"] and result["compute_dtype"] == "float32"
    assert result["fp8_params"] > 0.99 * result["params"]
    scale = result["max_abs_ref"]
    # fp8 e4m3 keeps 3 mantissa bits (relative rounding up to 1/16 per weight): a visible but small change
    assert 1e-3 * scale < result["fp8_vs_fp32"] <= 0.05 * scale, result
    assert result["framecap_fp8_vs_fp32"] <= 0.05 * scale, result
    # with exactly ComfyUI's rounding, FrameCap's backend gives the same latents as (b)
    assert result["fp8_vs_framecap_comfy_rounding"] <= 1e-4, result
    # a LoRA on the fp8 model changes the result as on the fp32 one, up to fp8 rounding
    assert result["fp8_lora_vs_fp32_lora"] <= 0.05 * scale, result
    assert result["fp8_lora_change_vs_fp32_lora_change"] <= 0.5 * result["fp8_lora_effect"], result


@pytest.mark.slow
@needs_comfy
@pytest.mark.skipif(os.environ.get("FRAMECAP_REAL_SIZE") != "1", reason="set FRAMECAP_REAL_SIZE=1 (~12 GB RAM)")
def test_c_real_size_native_equals_diffusers(tmp_path):
    result = _run_checks("real_size", tmp_path)["real_size"]
    assert result["params"] > 1.2e9
    assert result["max_abs_diff"] <= 1e-4 and result["per_frame_t_max_abs_diff"] <= 1e-4, result


def test_auto_window_batch_is_the_most_windows_whose_call_fits():
    """Native "auto" (window_batch_size 0): bisection over ComfyUI's memory estimate of a k-window call."""
    import importlib

    most_windows_that_fit = importlib.import_module(PACK.__name__ + ".nodes.native_backend").most_windows_that_fit
    calls = []

    def memory_of_call(k):  # 1 GB of fixed cost, 3 GB per window
        calls.append(k)
        return (1 + 3 * k) * 1e9

    assert most_windows_that_fit(memory_of_call, 10e9, 9) == 3  # 3 windows: 10 GB; 4 would need 13
    assert max(calls) < 9 and len(calls) <= 4  # bisected, not tried one by one
    assert most_windows_that_fit(memory_of_call, 1e15, 9) == 9  # everything fits: all windows of a step
    assert most_windows_that_fit(memory_of_call, 1e9, 9) == 1  # nothing fits: still one window at a time
    assert most_windows_that_fit(memory_of_call, 28e9, 1) == 1
