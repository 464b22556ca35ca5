"""The bundled workflows: valid UI-format graphs, in sync with their generator, free of secrets, and runnable end to
end (with the test executor here; in a real ComfyUI server when ``COMFYUI_PATH`` points to a checkout)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from comfy_executor import FRONTEND_ONLY, load_pack, map_widgets, run_workflow, workflow_to_api

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
PACK = load_pack(ROOT)
MAPPINGS = PACK.NODE_CLASS_MAPPINGS
sys.path.insert(0, str(ROOT / "workflows"))
from native_node_specs import NATIVE_NODES  # noqa: E402 - ComfyUI core nodes' specs, as the generator uses them

ALL_NODES = {**NATIVE_NODES, **MAPPINGS}
compat = sys.modules[f"{PACK.__name__}.nodes.comfy_compat"]
TINY = "diffusers: tiny/diffusers"
# Executor runs: 16 x 16 frames and 4 steps keep them fast; the graphs' own values are checked by map_widgets.
SIZE, STEPS = 16, 4


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _toy_available() -> bool:
    return (ROOT / "framecap_core" / "toy_model" / "model_index.json").is_file()


@pytest.fixture(scope="module")
def comfy_dirs(tmp_path_factory):
    from framecap_core.testing import save_tiny_wan

    root = tmp_path_factory.mktemp("comfy_workflows")
    save_tiny_wan(root / "models" / "diffusers" / "tiny", formats=("diffusers",), text_len=8)
    compat.set_fallback_dirs(root / "models", root / "output")
    return root


def test_there_are_the_three_workflows():
    names = {p.name for p in WORKFLOWS}
    assert {"framecap_story_to_video.json", "framecap_timeline_to_video.json",
            "framecap_compare_pmwd_sliding_fifo.json", "framecap_native_wan.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_a_valid_ui_graph(path):
    wf = _load(path)
    assert wf["version"] == 0.4
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    nodes = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, f"node {node['id']} lacks {key}"
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
        if node["type"] in FRONTEND_ONLY:
            continue
        cls = ALL_NODES[node["type"]]
        map_widgets(node, cls.INPUT_TYPES())  # widget count, combos in their lists, numbers in range
        assert [o["type"] for o in node["outputs"]] == list(cls.RETURN_TYPES)
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id and nodes[dst]["inputs"][dst_slot]["type"] == kind
    for node in wf["nodes"]:  # every required socket is connected
        if node["type"] in FRONTEND_ONLY:
            continue
        connected = {i["name"] for i in node["inputs"] if i["link"] is not None}
        for name, spec in ALL_NODES[node["type"]].INPUT_TYPES()["required"].items():
            if not isinstance(spec[0], list) and spec[0] not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                assert name in connected, f"{path.name}: node {node['id']} input {name} unconnected"


def _uses_native_nodes(wf: dict) -> bool:
    return any(n["type"] in NATIVE_NODES for n in wf["nodes"])


LOADER_WORKFLOWS = [p for p in WORKFLOWS if not _uses_native_nodes(_load(p))]
NATIVE_WORKFLOWS = [p for p in WORKFLOWS if _uses_native_nodes(_load(p))]


def test_native_workflow_uses_comfyuis_own_loaders_and_the_template_files():
    wf = _load(ROOT / "workflows" / "framecap_native_wan.json")
    nodes = {n["type"]: n for n in wf["nodes"]}
    expected = {"UNETLoader": ("wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models"),
                "CLIPLoader": ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
                "VAELoader": ("wan_2.1_vae.safetensors", "vae")}
    for loader, (name, directory) in expected.items():
        node = nodes[loader]
        assert node["widgets_values"][0] == name  # the frontend offers the download when the value is a hinted file
        (hint,) = node["properties"]["models"]
        assert hint["name"] == name and hint["directory"] == directory and hint["url"].startswith("https://")
    assert nodes["CLIPLoader"]["widgets_values"][1] == "wan"
    assert {"FrameCapNativeSampler", "FrameCapCLIPTextEncode", "ModelSamplingSD3", "VAEDecode", "CreateVideo",
            "SaveVideo"} <= set(nodes)
    assert "FrameCapWanLoader" not in nodes
    notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and all(len(n["widgets_values"][0]) > 100 for n in notes)


@pytest.mark.parametrize("path", LOADER_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_explains_itself_and_defaults_to_the_toy_model(path):
    wf = _load(path)
    notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and all(len(n["widgets_values"][0]) > 100 for n in notes)
    loaders = [n for n in wf["nodes"] if n["type"] == "FrameCapWanLoader"]
    assert loaders and all(n["widgets_values"][0] == "toy" for n in loaders)
    hints = {m["name"]: m for n in loaders for m in n["properties"]["models"]}
    assert hints["wan2.1_t2v_1.3B_fp16.safetensors"]["directory"] == "diffusion_models"
    assert hints["umt5_xxl_fp8_e4m3fn_scaled.safetensors"]["directory"] == "text_encoders"
    assert hints["wan_2.1_vae.safetensors"]["directory"] == "vae"
    assert all(m["url"].startswith("https://") and m["name"] in m["url"] for m in hints.values())
    builders = [n for n in wf["nodes"] if n["type"] == "FrameCapPromptBuilder"]
    assert all(n["widgets_values"][3] == "offline" for n in builders)  # runs without a key


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_opens_with_notes_on_screen_downloads_offered_and_a_thumbnail(path):
    from PIL import Image

    wf = _load(path)
    assert all(node["pos"][0] >= 0 and node["pos"][1] >= 0 for node in wf["nodes"])  # notes on screen when opened
    # the frontend offers each top-level "models" entry that is missing from the models folders
    names = {m["name"]: m["directory"] for m in wf["models"]}
    assert names == {"wan2.1_t2v_1.3B_fp16.safetensors": "diffusion_models",
                     "umt5_xxl_fp8_e4m3fn_scaled.safetensors": "text_encoders", "wan_2.1_vae.safetensors": "vae"}
    assert all(m["url"].startswith("https://") and m["name"] in m["url"] for m in wf["models"])
    with Image.open(path.with_suffix(".jpg")) as thumb:  # served as /api/workflow_templates/framecap/<name>.jpg
        assert thumb.format == "JPEG" and min(thumb.size) >= 256


def test_window_and_overlap_say_their_unit_and_are_never_rounded_silently():
    from framecap_core.pipeline import GenerationSettings

    for cls in (MAPPINGS["FrameCapPMWDSampler"], MAPPINGS["FrameCapNativeSampler"]):
        spec = cls.INPUT_TYPES()["required"]
        for name in ("window", "overlap"):
            assert spec[name][1]["step"] == 1  # the frontend rounds typed values to the step: 33 would become 32
            assert "PIXEL FRAMES" in spec[name][1]["tooltip"]
    with pytest.raises(Exception, match="overlap=33 frames is not a multiple of 4.*use 32 or 36"):
        GenerationSettings(overlap=33).validate()


def test_workflows_match_their_generator():
    out = subprocess.run([sys.executable, str(ROOT / "workflows" / "build_workflows.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_holds_no_secret(path):
    text = path.read_text(encoding="utf-8")
    for name, value in os.environ.items():
        if re.search(r"KEY|TOKEN|SECRET|PASSWORD", name) and len(value) >= 8:
            assert value not in text, f"{path.name} contains the value of ${name}"
    assert not re.search(r"AIza[0-9A-Za-z_\-]{20,}", text)  # Google API key shape
    for node in _load(path)["nodes"]:
        for entry in node["inputs"]:
            assert not re.search(r"key|token|secret|password", entry["name"], re.I)


@pytest.mark.parametrize("path", LOADER_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_end_to_end(path, comfy_dirs):
    """The FrameCap-loader workflows with the test executor (the native one needs ComfyUI's own nodes: it runs in
    test_workflows_run_in_a_real_comfyui)."""
    from framecap_core.video import read_mp4

    wf = _load(path)
    overrides = {"FrameCapPMWDSampler": {"width": SIZE, "height": SIZE}, "FrameCapDFScheduler": {"steps": STEPS}}
    if not _toy_available():
        overrides["FrameCapWanLoader"] = {"model": TINY}
    results = run_workflow(wf, MAPPINGS, overrides)
    saves = [n for n in wf["nodes"] if n["type"] == "FrameCapSaveVideo"]
    timelines = [results[n["id"]]["outputs"][0] for n in wf["nodes"]
                 if n["type"] in ("FrameCapTimeline", "FrameCapPromptBuilder")]
    assert saves and len(timelines) == 1
    num_frames = timelines[0].num_frames
    assert num_frames == 129  # 8 s at 16 fps
    written = set()
    for node in saves:
        out = results[node["id"]]
        video = Path(out["outputs"][0])
        assert video.is_file() and video.is_relative_to(comfy_dirs / "output")
        assert read_mp4(video).shape == (num_frames, SIZE, SIZE, 3)
        board = video.parent / out["ui"]["storyboard"][0]["filename"]
        assert out["ui"]["images"][0]["filename"] == video.name and out["ui"]["animated"] == [True]
        assert board.is_file() and board.suffix == ".png"
        written.add(video)
    assert len(written) == len(saves)  # one file per save node


def test_api_conversion_follows_links_and_widget_order(comfy_dirs):
    wf = _load(ROOT / "workflows" / "framecap_compare_pmwd_sliding_fifo.json")
    info = {name: {"input": cls.INPUT_TYPES(),
                   "input_order": {k: list(v) for k, v in cls.INPUT_TYPES().items()}} for name, cls in MAPPINGS.items()}
    prompt = workflow_to_api(wf, info, {"FrameCapWanLoader": {"model": TINY}})
    nodes = {str(n["id"]): n for n in wf["nodes"]}
    assert set(prompt) == {i for i, n in nodes.items() if n["type"] not in FRONTEND_ONLY}
    samplers = {i: p for i, p in prompt.items() if p["class_type"] == "FrameCapPMWDSampler"}
    assert sorted(p["inputs"]["method"] for p in samplers.values()) == ["fifo", "pmwd", "sliding"]
    for entry in samplers.values():
        assert entry["inputs"]["seed"] == 42 and entry["inputs"]["window"] == 33  # the seed's control value skipped
        source, slot = entry["inputs"]["model"]
        assert prompt[source]["class_type"] == "FrameCapWanLoader" and slot == 0
        assert prompt[source]["inputs"]["model"] == TINY


# ----------------------------------------------------------------------------------------------- real ComfyUI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _post(url: str, data: dict):
    request = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body.strip() else {}


def _queue(url: str, prompt: dict) -> str:
    queued = _post(f"{url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert not queued.get("node_errors"), queued
    return queued["prompt_id"]


def _run_prompt(url: str, prompt: dict, timeout: float = 600, prompt_id: str | None = None) -> dict:
    """Queue an API-format prompt (unless ``prompt_id`` is already queued) and wait for its ``/history`` entry."""
    prompt_id = prompt_id or _queue(url, prompt)
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = _get(f"{url}/history/{prompt_id}", timeout=120)  # a busy CPU server can answer slowly
        status = history.get(prompt_id, {}).get("status", {})
        if status.get("completed") is not None and status.get("status_str") in ("success", "error"):
            return history[prompt_id]
        time.sleep(1)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


TINY_CLIP_NODE = """
import sys
sys.path.append({tests!r})


class FrameCapTestTinyWanCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{}}}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        from comfy_native_checks import tiny_comfy_clip

        return (tiny_comfy_clip(),)


NODE_CLASS_MAPPINGS = {{"FrameCapTestTinyWanCLIP": FrameCapTestTinyWanCLIP}}
"""


def _write_native_models(root: Path) -> None:
    """Small ComfyUI-loadable Wan files under the template names (see tests/native_models.py), plus a test node that
    builds ComfyUI's real CLIP class with Wan's UMT5 classes at 2 layers: Load CLIP (type wan) only accepts the
    full 24-layer UMT5-XXL, so the native workflow's CLIPLoader is swapped for it; a small UMT5 file still sits under
    the template name so the loader's widget value validates."""
    import torch
    from native_models import write_comfy_wan_files

    from framecap_core.testing import SINGLE_FILE_NAMES, make_tiny_text_encoder, write_comfy_umt5

    write_comfy_wan_files(root / "models", dtype=torch.float16)
    write_comfy_umt5(make_tiny_text_encoder(), root / "models" / "text_encoders" / SINGLE_FILE_NAMES["umt5_fp8_scaled"])
    (root / "custom_nodes" / "framecap_test_tiny_clip.py").write_text(
        TINY_CLIP_NODE.format(tests=str(Path(__file__).resolve().parent)))


def _check_native_specs(info: dict) -> None:
    """The core-node specs the workflow generator uses match this ComfyUI (names, order, kinds, non-file combos)."""
    for name, cls in NATIVE_NODES.items():
        spec = cls.INPUT_TYPES()
        server = info[name]
        for section in ("required", "optional"):
            ours, theirs = spec.get(section, {}), server["input"].get(section, {})
            assert list(ours) == list(server.get("input_order", {}).get(section, theirs)), (name, section)
            for key, value in ours.items():
                kind = theirs[key][0]
                if isinstance(value[0], list):
                    choices = kind if isinstance(kind, list) else theirs[key][1].get("options", [])
                    if not key.endswith("_name"):  # model-file combos list what the server has
                        assert choices == value[0], (name, key)
                else:
                    assert kind == value[0], (name, key)
        assert list(server["output"]) == list(cls.RETURN_TYPES), name


def _run_native_workflow(url: str, info: dict, path: Path, root: Path) -> None:
    from framecap_core.video import read_mp4

    wf = _load(path)
    small = {"FrameCapNativeSampler": {"width": SIZE, "height": SIZE}, "FrameCapDFScheduler": {"steps": 2}}
    prompt = workflow_to_api(wf, info, small if os.environ.get("FRAMECAP_COMFY_FULL") != "1" else {})
    for entry in prompt.values():
        if entry["class_type"] == "CLIPLoader":
            entry["class_type"], entry["inputs"] = "FrameCapTestTinyWanCLIP", {}
    result = _run_prompt(url, prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)[-4000:]
    prefix = next(n for n in wf["nodes"] if n["type"] == "SaveVideo")["widgets_values"][0]
    saved = sorted((root / "output").glob(prefix + "*.mp4"))
    assert len(saved) == 1, saved
    frames = read_mp4(saved[0])
    assert frames.shape == (129, SIZE, SIZE, 3)  # the story's 8 s at 16 fps, through VAE Decode + CreateVideo


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")
def test_workflows_run_in_a_real_comfyui(tmp_path):
    """Start ComfyUI (``--cpu``, free local port) with the pack linked into an extra custom_nodes folder, convert each
    workflow with ``/object_info``, queue it, wait for ``/history`` and check the saved video.

    ``COMFYUI_PYTHON`` picks ComfyUI's interpreter (default: this one); ``FRAMECAP_COMFY_FULL=1`` runs the
    workflows at their own sizes and steps instead of 16 x 16 and 4 steps."""
    from framecap_core.testing import save_tiny_wan
    from framecap_core.video import read_mp4

    comfy = Path(os.environ["COMFYUI_PATH"]).resolve()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    (tmp_path / "custom_nodes").mkdir()
    os.symlink(ROOT, tmp_path / "custom_nodes" / "framecap", target_is_directory=True)
    save_tiny_wan(tmp_path / "models" / "diffusers" / "tiny", formats=("diffusers",), text_len=8)
    _write_native_models(tmp_path)
    (tmp_path / "extra_model_paths.yaml").write_text(
        f"framecap_test:\n  base_path: {tmp_path}\n  custom_nodes: custom_nodes/\n  diffusers: models/diffusers/\n"
        "  diffusion_models: models/diffusion_models/\n  text_encoders: models/text_encoders/\n  vae: models/vae/\n"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "comfyui.log", "w")
    server = subprocess.Popen(
        [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         "--extra-model-paths-config", str(tmp_path / "extra_model_paths.yaml"),
         "--output-directory", str(tmp_path / "output"), "--temp-directory", str(tmp_path / "temp")],
        cwd=comfy, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 600  # a loaded 2-core machine takes minutes to import ComfyUI and the packs
        info = None
        while time.time() < deadline:
            if server.poll() is not None:
                break
            try:
                info = _get(f"{url}/object_info", timeout=30)
                break
            except OSError:
                time.sleep(1)
        assert info is not None, (tmp_path / "comfyui.log").read_text()[-4000:]
        missing = sorted(set(MAPPINGS) - set(info))
        assert not missing, f"ComfyUI did not load {missing}:\n" + (tmp_path / "comfyui.log").read_text()[-4000:]
        templates = _get(f"{url}/workflow_templates")  # the template browser lists the bundled workflows
        assert sorted(templates.get("framecap", [])) == sorted(p.stem for p in WORKFLOWS), templates
        for path in WORKFLOWS:  # the template browser's card images
            with urllib.request.urlopen(f"{url}/api/workflow_templates/framecap/{path.stem}.jpg", timeout=30) as r:
                assert r.status == 200 and r.read(3) == b"\xff\xd8\xff"
        overrides = {}
        if os.environ.get("FRAMECAP_COMFY_FULL") != "1":
            overrides["FrameCapPMWDSampler"] = {"width": SIZE, "height": SIZE}
            overrides["FrameCapDFScheduler"] = {"steps": STEPS}
        if not _toy_available():
            overrides["FrameCapWanLoader"] = {"model": TINY}
        _check_native_specs(info)
        for path in NATIVE_WORKFLOWS:
            _run_native_workflow(url, info, path, tmp_path)
        for path in LOADER_WORKFLOWS:
            wf = _load(path)
            entry = _run_prompt(url, workflow_to_api(wf, info, overrides))
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
            saves = [str(n["id"]) for n in wf["nodes"] if n["type"] == "FrameCapSaveVideo"]
            for node_id in saves:
                image = entry["outputs"][node_id]["storyboard"][0]
                board = tmp_path / "output" / image["subfolder"] / image["filename"]
                video = board.with_name(board.name.replace(".storyboard.png", ".mp4"))
                assert board.is_file() and video.is_file()
                assert entry["outputs"][node_id]["images"][0]["filename"] == video.name  # the node plays the mp4
                frames = read_mp4(video)
                assert frames.shape[0] == 129 and frames.shape[3] == 3
        # A FrameCapError reaches the user with the core's message unchanged.
        from framecap_core.pipeline import GenerationSettings

        bad = {**overrides, "FrameCapPMWDSampler": {**overrides.get("FrameCapPMWDSampler", {}), "window": 19}}
        entry = _run_prompt(url, workflow_to_api(_load(ROOT / "workflows" / "framecap_timeline_to_video.json"), info,
                                                 bad))
        assert entry["status"]["status_str"] == "error"
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        try:
            GenerationSettings(window=19).validate()
        except Exception as exc:  # noqa: BLE001 - the expected ConfigError
            expected = str(exc)
        assert errors and errors[0]["exception_message"].strip() == expected
        assert errors[0]["exception_type"].endswith("ConfigError")

        # Native interop: a native empty Wan latent through FrameCap Decode into native CreateVideo / SaveVideo.
        if {"EmptyHunyuanLatentVideo", "CreateVideo", "SaveVideo"} <= set(info):
            loader = {"model": TINY, "vae_name": "(auto)", "text_encoder_name": "(auto)", "finetune": "none",
                      "finetune_strength": 1.0, "dtype": "auto", "device": "default"}
            native = {
                "1": {"class_type": "FrameCapWanLoader", "inputs": loader},
                "2": {"class_type": "EmptyHunyuanLatentVideo",
                      "inputs": {"width": 32, "height": 32, "length": 9, "batch_size": 1}},
                "3": {"class_type": "FrameCapDecode", "inputs": {"model": ["1", 0], "latent": ["2", 0]}},
                "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 16.0}},
                "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "native/interop",
                                                            "format": "auto", "codec": "auto"}},
            }
            entry = _run_prompt(url, native)
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
            saved = list((tmp_path / "output" / "native").glob("interop*"))
            assert len(saved) == 1 and read_mp4(saved[0]).shape == (9, 32, 32, 3)

        # Cancel stops the sampler between steps (ComfyUI's progress hook raises its interrupt).
        long = {**overrides, "FrameCapDFScheduler": {"steps": 1000}}
        prompt_id = _queue(url, workflow_to_api(_load(ROOT / "workflows" / "framecap_timeline_to_video.json"), info,
                                                long))
        deadline = time.time() + 120
        while time.time() < deadline and not _get(f"{url}/queue")["queue_running"]:
            time.sleep(0.2)
        time.sleep(3)
        _post(f"{url}/interrupt", {})
        entry = _run_prompt(url, {}, timeout=120, prompt_id=prompt_id)
        events = dict(entry["status"]["messages"])
        assert events.get("execution_interrupted", {}).get("node_type") == "FrameCapPMWDSampler", entry["status"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        os.unlink(tmp_path / "custom_nodes" / "framecap")  # the link only, never the repository behind it
