"""The ComfyUI node pack: import like ComfyUI, node contracts, each node on a tiny Wan, progress, cancel, errors."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from comfy_executor import is_widget, load_pack

ROOT = Path(__file__).resolve().parents[1]
PACK = load_pack(ROOT)
MAPPINGS = PACK.NODE_CLASS_MAPPINGS
compat = sys.modules[f"{PACK.__name__}.nodes.comfy_compat"]
model_nodes = sys.modules[f"{PACK.__name__}.nodes.model_nodes"]

SECRET_NAME = re.compile(r"key|token|secret|password|passwd|credential|auth", re.I)
TINY = "diffusers: tiny/diffusers"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from framecap_core.testing import save_tiny_wan

    root = tmp_path_factory.mktemp("comfy")
    save_tiny_wan(root / "models" / "diffusers" / "tiny", formats=("diffusers",), text_len=8)
    compat.set_fallback_dirs(root / "models", root / "output")
    return root


@pytest.fixture(scope="module")
def tiny_run(models_dir):
    """Every node once on the tiny model: 1 s at 16 fps = 17 frames = 5 latents, 32 x 32."""
    model = MAPPINGS["FrameCapWanLoader"]().load(TINY, "(auto)", "(auto)", "none", 1.0, "fp32", "cpu")[0]
    timeline, _ = MAPPINGS["FrameCapTimeline"]().parse("0s-0.5s: a red fox in snow\n0.5s-1s: a blue bird flies", 1.0, 16)
    cond = MAPPINGS["FrameCapTextEncode"]().encode(model, timeline, "")[0]
    schedule = MAPPINGS["FrameCapDFScheduler"]().schedule(3, 5.0, "auto", 0, 1)[0]
    latent = MAPPINGS["FrameCapPMWDSampler"]().sample(model, cond, schedule, 32, 32, 7, 5.0, "pmwd", 9, 4, "flat", 0)[0]
    return model, timeline, cond, schedule, latent


# ----------------------------------------------------------------------------------------------------- loading


def test_pack_imports_as_comfyui_does_without_heavy_imports(tmp_path):
    # ComfyUI names the module after the folder path (dots replaced), so it is no valid identifier.
    code = textwrap.dedent(f"""
        import importlib.util, sys
        name = "/x/custom_nodes/ComfyUI-FrameCap-main"
        spec = importlib.util.spec_from_file_location(name, {str(ROOT / "__init__.py")!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        heavy = sorted(m for m in ("torch", "diffusers", "transformers", "google.genai", "imageio", "PIL")
                       if m in sys.modules)
        print(len(module.NODE_CLASS_MAPPINGS), heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    count, heavy = out.stdout.strip().split(" ", 1)
    assert int(count) == len(MAPPINGS) >= 8
    assert heavy == "[]"


def test_pack_imports_from_a_clone_without_installed_packages(tmp_path):
    # A user who clones into custom_nodes has no `pip install -e`: framecap_core is found beside nodes/. With -S
    # (no site-packages at all) registration must still work, which also proves it needs no third-party package.
    code = textwrap.dedent(f"""
        import importlib.util, sys
        name = "/x/custom_nodes/framecap"
        spec = importlib.util.spec_from_file_location(name, {str(ROOT / "__init__.py")!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        print(len(module.NODE_CLASS_MAPPINGS), sys.modules["framecap_core"].__file__)
    """)
    out = subprocess.run([sys.executable, "-S", "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    count, core = out.stdout.split()
    assert int(count) == len(MAPPINGS) and Path(core) == ROOT / "framecap_core" / "__init__.py"


def test_mappings_are_consistent():
    assert set(PACK.NODE_DISPLAY_NAME_MAPPINGS) == set(MAPPINGS)
    for node_id, cls in MAPPINGS.items():
        assert node_id.startswith("FrameCap") and cls.__name__ == node_id
        assert "FrameCap" in PACK.NODE_DISPLAY_NAME_MAPPINGS[node_id]


# --------------------------------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("node_id", sorted(MAPPINGS))
def test_node_contract(node_id, models_dir):
    cls = MAPPINGS[node_id]
    assert cls.CATEGORY == "FrameCap"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    function = getattr(cls, cls.FUNCTION)
    params = inspect.signature(function).parameters
    for section in ("required", "optional"):
        for name, input_spec in spec.get(section, {}).items():
            assert isinstance(input_spec, tuple) and len(input_spec) == 2, name
            kind, options = input_spec
            assert isinstance(options, dict) and options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            assert name in params, f"{node_id}.{cls.FUNCTION} does not take {name}"
            if section == "optional":
                assert params[name].default is None
            if isinstance(kind, list):
                assert kind and all(isinstance(c, str) for c in kind)
                assert options.get("default", kind[0]) in kind, f"{node_id}.{name} default not in its list"
            elif kind in ("INT", "FLOAT"):
                default = options["default"]
                assert isinstance(default, int if kind == "INT" else float)
                assert options["min"] <= default <= options["max"], f"{node_id}.{name} default out of range"
            elif kind in ("STRING", "BOOLEAN"):
                assert isinstance(options["default"], str if kind == "STRING" else bool)
            else:
                assert kind.isupper(), f"{node_id}.{name}: socket type {kind!r}"
    assert getattr(cls, "OUTPUT_NODE", False) == (node_id == "FrameCapSaveVideo")


def test_no_widget_can_hold_a_secret(models_dir):
    for node_id, cls in MAPPINGS.items():
        for section in cls.INPUT_TYPES().values():
            for name, spec in section.items():
                if is_widget(spec):
                    assert not SECRET_NAME.search(name), f"{node_id}.{name} looks like a secret"


# ------------------------------------------------------------------------------------------- comfy_compat fallback


def test_fallback_folders_list_and_resolve_inside_only(tmp_path):
    root = tmp_path / "models"
    (root / "vae" / "sub").mkdir(parents=True)
    (root / "vae" / "sub" / "a.safetensors").write_bytes(b"")
    (root / "vae" / "notes.txt").write_text("x")
    (root / "clip").mkdir()
    (root / "clip" / "umt5.safetensors").write_bytes(b"")
    (tmp_path / "secret.safetensors").write_bytes(b"")
    saved = compat._fallback_models_dir, compat._fallback_output_dir
    compat.set_fallback_dirs(root, tmp_path / "out")
    try:
        assert compat.get_filename_list("vae") == ["sub/a.safetensors"]
        assert compat.get_filename_list("text_encoders") == ["umt5.safetensors"]  # ComfyUI's legacy "clip" folder
        assert compat.get_full_path("vae", "sub/a.safetensors") == str((root / "vae" / "sub" / "a.safetensors").resolve())
        assert compat.get_full_path("vae", "../../secret.safetensors") is None
        assert compat.get_full_path("vae", str(tmp_path / "secret.safetensors")) is None
        first, sub, name = compat.next_output_path("FrameCap/run", "mp4")
        assert (sub, name) == ("FrameCap", "run_00001_.mp4") and first.parent == (tmp_path / "out" / "FrameCap").resolve()
        first.write_bytes(b"")
        assert compat.next_output_path("FrameCap/run", "mp4")[2] == "run_00002_.mp4"
        with pytest.raises(ValueError, match="outside the output folder"):
            compat.next_output_path("../../escape", "mp4")
    finally:
        compat._fallback_models_dir, compat._fallback_output_dir = saved


# ------------------------------------------------------------------------------------------------------ timeline


def test_prompt_builder_offline_gives_timeline_and_json():
    timeline, text = MAPPINGS["FrameCapPromptBuilder"]().build(
        "A red fox walks in the snow. The fox jumps over a frozen river.", 5.0, 16, "offline", "gemini-2.5-pro")
    assert timeline.num_frames == 81 and len(timeline.scenes) >= 1
    assert json.loads(text) == timeline.to_dict()


def test_prompt_builder_gemini_without_key_names_the_variables(monkeypatch):
    from framecap_core.errors import PromptBuildError

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(PromptBuildError) as info:
        MAPPINGS["FrameCapPromptBuilder"]().build("A fox in the snow.", 5.0, 16, "gemini", "gemini-2.5-pro")
    assert "GEMINI_API_KEY" in str(info.value) and "GOOGLE_API_KEY" in str(info.value)


def test_timeline_node_parses_text_and_refuses_file_names():
    from framecap_core.errors import TimelineError
    from framecap_core.timeline import parse_timeline

    node = MAPPINGS["FrameCapTimeline"]()
    text = "0s-2s: a red fox in snow\n2s-4s: the fox jumps"
    timeline, as_json = node.parse(text, 0.0, 16)
    assert timeline.to_dict() == parse_timeline(text, fps=16).to_dict()
    assert node.parse(as_json, 0.0, 16)[0].to_dict() == timeline.to_dict()  # its JSON reads back
    assert node.parse(text, 4.0, 16)[0].num_frames == 65
    with pytest.raises(TimelineError, match="not a file name"):
        node.parse("/etc/timeline.json", 0.0, 16)


# ------------------------------------------------------------------------------------------------------- loader


def test_loader_lists_toy_and_folders_and_explains_missing_parts(models_dir):
    from framecap_core.errors import ModelLoadError

    loader = MAPPINGS["FrameCapWanLoader"]
    choices = loader.INPUT_TYPES()["required"]["model"][0]
    assert choices[0] == "toy" and TINY in choices
    (models_dir / "models" / "diffusion_models").mkdir(exist_ok=True)
    (models_dir / "models" / "diffusion_models" / "wan.safetensors").write_bytes(b"")
    compat.set_fallback_dirs(models_dir / "models", models_dir / "output")
    assert "wan.safetensors" in loader.INPUT_TYPES()["required"]["model"][0]
    with pytest.raises(ModelLoadError, match="vae_name and text_encoder_name"):
        loader().load("wan.safetensors", "(auto)", "(auto)", "none", 1.0, "auto", "cpu")
    with pytest.raises(ModelLoadError, match="not found in ComfyUI's models/vae"):
        loader().load("wan.safetensors", "../diffusion_models/wan.safetensors", "(auto)", "none", 1.0, "auto", "cpu")
    with pytest.raises(ModelLoadError, match="models/diffusers"):
        loader().load("diffusers: nothing", "(auto)", "(auto)", "none", 1.0, "auto", "cpu")


# ------------------------------------------------------------------------------------------------ sample, decode


def test_sampler_latent_is_raw_vae_latents_of_the_core_run(tiny_run):
    import torch

    from framecap_core.pipeline import DEFAULT_NEGATIVE, GenerationSettings, generate

    model, timeline, cond, _, latent = tiny_run
    samples = latent["samples"]
    assert samples.shape == (1, 16, timeline.num_latents, 4, 4) and samples.dtype == torch.float32
    assert cond.negative == DEFAULT_NEGATIVE and cond.context.unique_embeds.shape[0] == 2
    ref = generate(model, timeline, GenerationSettings(window=9, overlap=4, steps=3, width=32, height=32, seed=7,
                                                      guidance=5.0, negative=DEFAULT_NEGATIVE))
    mean, std = model.latents_mean.view(1, -1, 1, 1, 1), model.latents_std.view(1, -1, 1, 1, 1)
    torch.testing.assert_close((samples - mean) / std, ref.latents[None], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(samples, ref.latents[None], atol=1e-2)  # raw, not the normalized space
    info = latent["framecap"]
    assert info["timeline"] == timeline.to_dict() and info["settings"]["method"] == "pmwd"
    assert [tuple(s) for s in info["window_spans"]] == ref.plan.window_spans

    images = MAPPINGS["FrameCapDecode"]().decode(model, latent)[0]
    assert images.shape == (17, 32, 32, 3) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    np.testing.assert_allclose(images.numpy() * 255.0, ref.frames.astype(np.float32), atol=1.01)


def test_decode_accepts_a_plain_native_latent_and_refuses_image_latents(tiny_run):
    from framecap_core.errors import ConfigError

    model, _, _, _, latent = tiny_run
    native = {"samples": latent["samples"].repeat(2, 1, 1, 1, 1)}  # a batch of two, no FrameCap extras
    images = MAPPINGS["FrameCapDecode"]().decode(model, native)[0]
    assert images.shape == (34, 32, 32, 3)
    with pytest.raises(ConfigError, match=r"\[B, 16, T, H/8, W/8\]"):
        MAPPINGS["FrameCapDecode"]().decode(model, {"samples": latent["samples"][:, :, 0]})


def test_core_errors_reach_the_user_unchanged(tiny_run):
    from framecap_core.errors import ConfigError
    from framecap_core.pipeline import GenerationSettings

    model, _, cond, schedule, _ = tiny_run
    with pytest.raises(ConfigError) as expected:
        GenerationSettings(window=19).validate()
    with pytest.raises(ConfigError) as got:
        MAPPINGS["FrameCapPMWDSampler"]().sample(model, cond, schedule, 32, 32, 7, 5.0, "pmwd", 19, 4, "flat", 0)
    assert str(got.value) == str(expected.value)


def test_sampler_refuses_conditioning_from_another_text_encoder_width(tiny_run):
    import dataclasses

    import torch

    from framecap_core.errors import ConfigError

    model, _, cond, schedule, _ = tiny_run
    assert model.caption_dim == cond.context.unique_embeds.shape[-1] == model.text_encoder.config.d_model
    ctx = cond.context
    wider = dataclasses.replace(ctx, unique_embeds=torch.cat([ctx.unique_embeds, ctx.unique_embeds], -1),
                                negative_embeds=torch.cat([ctx.negative_embeds, ctx.negative_embeds], -1))
    with pytest.raises(ConfigError, match=f"width {2 * model.caption_dim}, but this model expects "
                                          f"{model.caption_dim}"):
        MAPPINGS["FrameCapPMWDSampler"]().sample(model, dataclasses.replace(cond, context=wider), schedule, 32, 32,
                                                 7, 5.0, "pmwd", 9, 4, "flat", 0)


class _Interrupted(Exception):
    pass


class _FakeProgressBar:
    instances: list = []

    def __init__(self, total):
        self.total, self.current, self.calls = total, 0, []
        _FakeProgressBar.instances.append(self)

    def update_absolute(self, value, total=None, preview=None):
        self.total = total if total is not None else self.total
        self.current = value
        self.calls.append(value)

    def update(self, value):
        self.update_absolute(self.current + value)


class _FakeModelManagement:
    def __init__(self, interrupt_after):
        self.checks, self.interrupt_after = 0, interrupt_after

    def throw_exception_if_processing_interrupted(self):
        self.checks += 1
        if self.interrupt_after is not None and self.checks > self.interrupt_after:
            raise _Interrupted

    def get_torch_device(self):
        return "cpu"


def test_progress_bar_advances_every_window_and_step_and_cancel_stops(tiny_run, monkeypatch):
    from types import SimpleNamespace

    from framecap_core.pipeline import GenerationSettings, plan_generation

    model, timeline, cond, schedule, _ = tiny_run
    plan = plan_generation(timeline, GenerationSettings(window=9, overlap=4, steps=3, width=32, height=32))
    monkeypatch.setattr(compat, "_comfy_utils", SimpleNamespace(ProgressBar=_FakeProgressBar))
    monkeypatch.setattr(compat, "_model_management", _FakeModelManagement(None))
    _FakeProgressBar.instances.clear()
    sampler = MAPPINGS["FrameCapPMWDSampler"]()
    args = (model, cond, schedule, 32, 32, 7, 5.0, "pmwd", 9, 4, "flat", 1)  # one window per transformer call
    sampler.sample(*args)
    bar = _FakeProgressBar.instances[-1]
    assert bar.total == plan.total_forwards == len(plan.window_spans) * 3
    assert bar.calls[-1] == bar.total and bar.calls == sorted(bar.calls)
    assert len(set(bar.calls)) == plan.total_forwards  # every window forward moved the bar
    assert len(bar.calls) >= plan.total_forwards + 3  # ... and every step reported too
    assert compat._model_management.checks >= len(bar.calls)  # the interrupt check runs at each report

    monkeypatch.setattr(compat, "_model_management", _FakeModelManagement(interrupt_after=4))
    with pytest.raises(_Interrupted):  # ComfyUI's own interrupt exception travels out of the core unchanged
        sampler.sample(*args)


def test_text_encode_uses_the_timeline_negative_or_the_widget(tiny_run):
    from framecap_core.timeline import parse_timeline

    model, _, _, _, _ = tiny_run
    timeline = parse_timeline({"fps": 16, "num_frames": 17, "negative": "blurry",
                               "scenes": [{"start": 0, "end": 17, "caption": "a cat"}]})
    encode = MAPPINGS["FrameCapTextEncode"]()
    assert encode.encode(model, timeline, "")[0].negative == "blurry"
    cond = encode.encode(model, timeline, "  dark ")[0]
    assert cond.negative == "dark" and cond.context.negative_embeds.shape[0] == 1


# ----------------------------------------------------------------------------------------------------------- save


def test_save_video_writes_mp4_storyboard_and_timeline(tiny_run, models_dir):
    import torch

    from framecap_core.video import read_mp4

    compat.set_fallback_dirs(models_dir / "models", models_dir / "output")
    model, timeline, _, _, latent = tiny_run
    images = torch.rand(17, 32, 48, 3)
    out = MAPPINGS["FrameCapSaveVideo"]().save(images, "runs/clip", 0, True, latent=latent)
    path = Path(out["result"][0])
    assert path == (models_dir / "output" / "runs" / "clip_00001_.mp4").resolve()
    video = read_mp4(path)
    assert video.shape == (17, 32, 48, 3)
    board = out["ui"]["storyboard"][0]
    assert board == {"filename": "clip_00001_.storyboard.png", "subfolder": "runs", "type": "output"}
    # the mp4 is the node's preview, reported as ComfyUI's own SaveVideo reports it (played in the node)
    assert out["ui"]["images"] == [{"filename": "clip_00001_.mp4", "subfolder": "runs", "type": "output"}]
    assert out["ui"]["animated"] == [True]
    assert (path.parent / board["filename"]).stat().st_size > 1000
    assert json.loads((path.parent / "clip_00001_.timeline.json").read_text()) == timeline.to_dict()

    plain = MAPPINGS["FrameCapSaveVideo"]().save(images[:5], "runs/clip", 8, True)  # no timeline: video only
    assert plain["ui"]["storyboard"] == [] and read_mp4(plain["result"][0]).shape[0] == 5
    assert plain["ui"]["images"][0]["filename"] == Path(plain["result"][0]).name


def test_requirements_never_pin_torch():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    names = [re.split(r"[<>=!~\[; ]", line)[0].lower() for line in lines if line]
    assert names and not {"torch", "torchvision", "torchaudio"} & set(names)
    assert {"diffusers", "transformers", "safetensors", "imageio-ffmpeg"} <= set(names)


def test_loader_takes_comfyui_single_files(tmp_path, monkeypatch, models_dir):
    import torch

    import framecap_core.models as models
    from framecap_core.models import components, sources, wan
    from framecap_core.testing import SINGLE_FILE_NAMES, save_tiny_wan

    written = save_tiny_wan(tmp_path / "tiny", formats=("diffusers", "comfy"), seed=0)
    root = tmp_path / "models"
    for folder, key in (("diffusion_models", "transformer_fp16"), ("vae", "vae"), ("text_encoders", "umt5_fp8_scaled")):
        (root / folder).mkdir(parents=True)
        written[key].rename(root / folder / SINGLE_FILE_NAMES[key])
    # The tiny architecture stands in for the shipped Wan2.1-1.3B configs that real files are read with.
    for module in (sources, components, wan):  # every module that falls back on the shipped configs
        monkeypatch.setattr(module, "SHIPPED_CONFIG_DIR", written["diffusers"])
    monkeypatch.setattr(compat, "_fallback_models_dir", root)
    loader = MAPPINGS["FrameCapWanLoader"]
    required = loader.INPUT_TYPES()["required"]
    assert SINGLE_FILE_NAMES["vae"] in required["vae_name"][0]
    assert SINGLE_FILE_NAMES["umt5_fp8_scaled"] in required["text_encoder_name"][0]
    model = loader().load(SINGLE_FILE_NAMES["transformer_fp16"], SINGLE_FILE_NAMES["vae"],
                          SINGLE_FILE_NAMES["umt5_fp8_scaled"], "none", 1.0, "fp32", "cpu")[0]
    reference = models.load_wan(written["diffusers"], device="cpu", dtype="fp32")
    assert model.frame_level and model.vae is not None and model.text_encoder is not None
    for (name, got), (_, want) in zip(model.transformer.state_dict().items(), reference.transformer.state_dict().items()):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3, msg=name)  # stored as fp16


def test_prompt_builder_gemini_reads_the_key_from_the_environment_only(monkeypatch):
    pytest.importorskip("google.genai")
    import socket

    from fake_gemini import FakeGemini, reply_json

    key = "test-key-not-a-real-one-1234567890"
    monkeypatch.setenv("GEMINI_API_KEY", key)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        assert host in ("127.0.0.1", "localhost", b"127.0.0.1"), f"tried to reach {host}"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    answer = {"scenes": [{"start": 0, "end": 2.5, "caption": "A paper boat floats down a rainy street."},
                         {"start": 2.5, "end": 5, "caption": "A child in a yellow raincoat picks up the boat."}]}
    with FakeGemini([reply_json(answer)]) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)  # the SDK's own endpoint override
        timeline, text = MAPPINGS["FrameCapPromptBuilder"]().build(
            "A paper boat in the rain; a child picks it up.", 5.0, 16, "gemini", "gemini-2.5-flash")
    assert [s.caption for s in timeline.scenes] == [s["caption"] for s in answer["scenes"]]
    assert [(s.start, s.end) for s in timeline.scenes] == [(0, 41), (41, 81)]
    assert server.requests[0].path.endswith("/models/gemini-2.5-flash:generateContent")
    assert key not in text and key not in repr(timeline.to_dict())


def test_prompt_builder_offers_the_openai_backend_and_asks_the_server(monkeypatch):
    import fake_http
    from fake_openai import FakeOpenAI, reply_json

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    foreign = fake_http.local_only(monkeypatch)
    node = MAPPINGS["FrameCapPromptBuilder"]
    spec = node.INPUT_TYPES()
    assert spec["required"]["backend"][0] == ["offline", "gemini", "openai"]
    assert spec["required"]["backend"][1]["default"] == "offline"
    assert set(spec["optional"]) == {"openai_base_url", "openai_model"}
    assert all(options.get("tooltip") for _, options in spec["optional"].values())
    answer = {"scenes": [{"start": 0, "end": 2.5, "caption": "A paper boat floats down a rainy street."},
                         {"start": 2.5, "end": 5, "caption": "A child in a yellow raincoat picks up the boat."}]}
    with FakeOpenAI([reply_json(answer)]) as server:
        timeline, text = node().build("A paper boat in the rain; a child picks it up.", 5.0, 16, "openai",
                                      "gemini-2.5-pro", openai_base_url=f" {server.url} ", openai_model=" qwen2.5:14b ")
    assert [(s.start, s.end, s.caption) for s in timeline.scenes] == [
        (0, 41, answer["scenes"][0]["caption"]), (41, 81, answer["scenes"][1]["caption"])]
    assert json.loads(text) == timeline.to_dict()
    assert server.requests[0].path == "/v1/chat/completions" and server.requests[0].model == "qwen2.5:14b"
    assert foreign == []

