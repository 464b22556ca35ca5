"""Write the bundled example workflows (ComfyUI UI / LiteGraph format, version 0.4) into this folder.

    python workflows/build_workflows.py           # rewrite the .json files
    python workflows/build_workflows.py --check   # exit 1 if a committed file differs from what this writes

The JSON files are the product (ComfyUI's template browser lists them; users drag them in); this script only keeps
them consistent: every widget value is given by input name and laid out in the node's ``INPUT_TYPES`` order, with
the extra ``control_after_generate`` value after the seed, exactly as the ComfyUI frontend saves a graph.
Defaults run on the bundled toy model (64 x 64, seconds on a CPU); the loader node carries ComfyUI's model hints
for the real Wan2.1 files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's framecap_core, also when run as a plain script

from framecap_core.model_settings import read_model_settings  # noqa: E402

WAN_REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
MODEL_HINTS = [
    {"name": "wan2.1_t2v_1.3B_fp16.safetensors",
     "url": f"{WAN_REPACKAGED}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors?download=true",
     "directory": "diffusion_models"},
    {"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
     "url": f"{WAN_REPACKAGED}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors?download=true",
     "directory": "text_encoders"},
    {"name": "wan_2.1_vae.safetensors",
     "url": f"{WAN_REPACKAGED}/vae/wan_2.1_vae.safetensors?download=true",
     "directory": "vae"},
]

# Toy-model defaults, read from its framecap.json (64 x 64 frames, windows of its training length, its steps, shift
# and guidance), so the workflows run it as `framecap generate --model toy` does.
_TOY = read_model_settings(ROOT / "framecap_core" / "toy_model").generation_defaults
TOY_SIZE = {"width": _TOY["width"], "height": _TOY["height"]}
TOY_SCHEDULE = {"steps": _TOY["steps"], "shift": _TOY["shift"], "solver": "auto", "df_step": 0, "causal_block_size": 1}
TOY_WINDOW = {"window": _TOY["window"], "overlap": _TOY["overlap"], "fusion": "flat", "window_batch_size": 0}
TOY_GUIDANCE = _TOY["guidance"]
SECONDS, FPS = 8.0, 16

TOY_STORY = (
    "A red circle moves left on a blue background. Then a yellow square moves up on a black background. "
    "Finally a white triangle stays still on a green background."
)
NATIVE_STORY = (
    "A red fox trots through a snowy pine forest at dawn. It stops at a frozen stream and sniffs the ice. "
    "Suddenly it pounces into a snowdrift, then shakes the snow off its fur and runs away over a hill."
)
TOY_TIMELINE = (
    "0s-3s: a red circle moves left on a blue background\n"
    "3s-5.5s: a yellow square moves up on a black background\n"
    "5.5s-8s: a white triangle stays still on a green background"
)

REAL_MODEL_NOTE = (
    "## Real Wan2.1 model\n"
    "The defaults run on the **toy** model bundled with FrameCap (64x64, seconds on a CPU). For real videos:\n\n"
    "1. Put `wan2.1_t2v_1.3B_fp16.safetensors` in `models/diffusion_models`, "
    "`umt5_xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders` and `wan_2.1_vae.safetensors` in "
    "`models/vae` (or a diffusers folder in `models/diffusers`).\n"
    "2. In the **Frame-Level Wan Loader** pick the transformer file, the VAE and the text encoder.\n"
    "3. In the sampler set 832 x 480, window 81, overlap 28, guidance 5; in the scheduler 30-50 steps, shift 5.\n"
)


def load_pack():
    """Import the pack as ComfyUI does (the repository folder as a module)."""
    name = "framecap_pack_builder"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


class Graph:
    def __init__(self, mappings: dict):
        self.mappings = mappings
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def note(self, text: str, pos, size=(420, 260), title: str = "Note") -> int:
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "flags": {},
                           "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": title,
                           "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"})
        return node_id

    def add(self, type_name: str, pos, size, widgets: dict | None = None, links: dict | None = None,
            title: str | None = None, properties: dict | None = None) -> int:
        """Add a node; ``widgets`` by input name (missing ones take the node's default), ``links`` maps an input
        name to ``(node_id, output_slot)``."""
        cls = self.mappings[type_name]
        spec = cls.INPUT_TYPES()
        widgets = dict(widgets or {})
        links = dict(links or {})
        node_id = len(self.nodes) + 1
        inputs, values = [], []
        for section in ("required", "optional"):
            for name, input_spec in spec.get(section, {}).items():
                options = input_spec[1] if len(input_spec) > 1 else {}
                if _is_widget(input_spec):
                    value = widgets.pop(name, options.get("default"))
                    if value is None and isinstance(input_spec[0], (list, tuple)):
                        value = input_spec[0][0]
                    values.append(value)
                    if options.get("control_after_generate"):
                        values.append("fixed")
                    continue
                # Every socket is listed (unconnected optional ones with link null), as the frontend saves them.
                link = links.pop(name, None)
                if link is None and section == "required":
                    raise ValueError(f"{type_name}: required input {name!r} is not connected")
                link_id = None
                if link is not None:
                    link_id = len(self.links) + 1
                    source, slot = link
                    self.links.append([link_id, source, slot, node_id, len(inputs), input_spec[0]])
                    self.nodes[source - 1]["outputs"][slot]["links"].append(link_id)
                inputs.append({"name": name, "type": input_spec[0], "link": link_id})
        if widgets or links:
            raise ValueError(f"{type_name}: unknown inputs {sorted(widgets) + sorted(links)}")
        outputs = [
            {"name": name, "type": kind, "links": [], "slot_index": slot}
            for slot, (kind, name) in enumerate(zip(cls.RETURN_TYPES, getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)))
        ]
        node = {"id": node_id, "type": type_name, "pos": list(pos), "size": list(size), "flags": {}, "order": 0,
                "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": type_name, **(properties or {})}, "widgets_values": values}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def to_json(self) -> dict:
        # Everything at x >= 0, so the notes on the left are on screen when the workflow opens.
        left = min(node["pos"][0] for node in self.nodes)
        for node in self.nodes:
            node["pos"][0] -= min(left, 0)
        # Execution order as the frontend stores it: a topological order of the graph (notes first).
        order, done = {}, set()
        incoming = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        while len(done) < len(self.nodes):
            ready = sorted(i for i, deps in incoming.items() if i not in done and deps <= done)
            for i in ready:
                order[i] = len(done)
                done.add(i)
        for node in self.nodes:
            node["order"] = order[node["id"]]
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}},
            # The frontend offers every file listed here for download when it is missing from the models folders
            # (besides the loader nodes whose widget value names a file of their own "models" property).
            "models": MODEL_HINTS,
            "version": 0.4,
        }


def _model_chain(g: Graph, timeline_node: int, y: int = 0) -> tuple[int, int, int]:
    """Loader, text encode and scheduler: returns their node ids."""
    loader = g.add("FrameCapWanLoader", (0, y + 420), (400, 250), {"model": "toy"},
                   properties={"models": MODEL_HINTS})
    encode = g.add("FrameCapTextEncode", (460, y + 300), (400, 200), {"negative": ""},
                   {"model": (loader, 0), "timeline": (timeline_node, 0)})
    schedule = g.add("FrameCapDFScheduler", (460, y + 560), (400, 180), TOY_SCHEDULE)
    return loader, encode, schedule


def _sample_decode_save(g: Graph, loader: int, encode: int, schedule: int, method: str, prefix: str, x: int,
                        y: int, seed: int = 42) -> int:
    sampler = g.add("FrameCapPMWDSampler", (x, y), (400, 380),
                    {**TOY_SIZE, "seed": seed, "guidance": TOY_GUIDANCE, "method": method, **TOY_WINDOW},
                    {"model": (loader, 0), "conditioning": (encode, 0), "schedule": (schedule, 0)},
                    title=f"PMWD KSampler ({method})")
    decode = g.add("FrameCapDecode", (x + 460, y), (300, 80), {}, {"model": (loader, 0), "latent": (sampler, 0)})
    g.add("FrameCapSaveVideo", (x + 460, y + 130), (360, 420), {"filename_prefix": prefix},
          {"images": (decode, 0), "latent": (sampler, 0)})
    return sampler


def story_to_video(mappings) -> dict:
    g = Graph(mappings)
    g.note(
        "## Story -> long multi-scene video\n"
        "The **Frame-Level Prompt Builder** splits the story into scenes with exact frame spans and one standalone "
        "caption each. Backend **offline** (default) needs no key or network; **gemini** uses Google Gemini and reads "
        "the key only from the GEMINI_API_KEY or GOOGLE_API_KEY environment variable of the ComfyUI process; "
        "**openai** asks an OpenAI-compatible LLM server you run (Ollama, LM Studio, llama.cpp, vLLM) at "
        "openai_base_url with openai_model.\n\n"
        "**Frame-Level Text Encode** encodes each distinct caption once; the **PMWD KSampler** denoises overlapping "
        "windows in parallel and fuses them (Parallel Multi-Window Denoising), every latent frame attending only to "
        "its own caption. **Save Video + Storyboard** writes the mp4, a storyboard PNG and the timeline JSON into "
        "the output folder.",
        (-480, 0), (440, 330), "About this workflow")
    g.note(REAL_MODEL_NOTE, (-480, 380), (440, 300), "Use the real Wan2.1 model")
    builder = g.add("FrameCapPromptBuilder", (0, 0), (400, 360),
                    {"story": TOY_STORY, "seconds": SECONDS, "fps": FPS, "backend": "offline"})
    loader, encode, schedule = _model_chain(g, builder)
    _sample_decode_save(g, loader, encode, schedule, "pmwd", "FrameCap/story", 920, 0)
    return g.to_json()


def timeline_to_video(mappings) -> dict:
    g = Graph(mappings)
    g.note(
        "## Hand-written timeline -> video\n"
        "Write one scene per line as `start-end: caption` (seconds, e.g. `0s-3s: ...`), or timestamps "
        "(`0:03 caption`), keyframes in frames (`0: caption`), one caption per line (equal split) or the canonical "
        "JSON a Prompt Builder outputs. Spans snap to whole latents (4 frames).\n\n"
        "Each caption should describe its scene on its own (name the subject, the place, the action): the model "
        "sees only the caption of the frame it is drawing.",
        (-480, 0), (440, 300), "About this workflow")
    g.note(REAL_MODEL_NOTE, (-480, 360), (440, 300), "Use the real Wan2.1 model")
    timeline = g.add("FrameCapTimeline", (0, 0), (400, 260), {"text": TOY_TIMELINE, "seconds": SECONDS, "fps": FPS})
    loader, encode, schedule = _model_chain(g, timeline)
    _sample_decode_save(g, loader, encode, schedule, "pmwd", "FrameCap/timeline", 920, 0)
    return g.to_json()


def compare_methods(mappings) -> dict:
    g = Graph(mappings)
    g.note(
        "## PMWD vs sliding window vs FIFO\n"
        "The same model, timeline, captions, seed and schedule through three long-video methods:\n\n"
        "- **pmwd**: Parallel Multi-Window Denoising: all windows denoised at every step from the same noisy video, "
        "predictions averaged where windows overlap, one step for the whole video.\n"
        "- **sliding**: windows one after another, each keeping `overlap` frames of the previous one as context "
        "(errors can accumulate).\n"
        "- **fifo**: FIFO-Diffusion, a queue with increasing noise levels (its step count is the window length in "
        "latents).\n\n"
        "Compare the three storyboards: scene changes should land on the timeline's boundaries.",
        (-480, 0), (440, 380), "About this workflow")
    g.note(REAL_MODEL_NOTE, (-480, 430), (440, 300), "Use the real Wan2.1 model")
    timeline = g.add("FrameCapTimeline", (0, 0), (400, 260), {"text": TOY_TIMELINE, "seconds": SECONDS, "fps": FPS})
    loader, encode, schedule = _model_chain(g, timeline)
    for row, method in enumerate(("pmwd", "sliding", "fifo")):
        _sample_decode_save(g, loader, encode, schedule, method, f"FrameCap/compare_{method}", 920, row * 600)
    return g.to_json()


NATIVE_NOTE = (
    "## FrameCap on your own ComfyUI Wan models\n"
    "The Wan2.1 files of ComfyUI's own Wan templates, loaded by ComfyUI's own loaders: **Load Diffusion Model** "
    "(`wan2.1_t2v_1.3B_fp16.safetensors`), **Load CLIP** (`umt5_xxl_fp8_e4m3fn_scaled.safetensors`, type wan) and "
    "**Load VAE** (`wan_2.1_vae.safetensors`). ComfyUI loads and offloads them as usual, so this runs where "
    "ComfyUI's Wan template runs (8-12 GB cards); LoRAs and model patches go between the loader and the sampler.\n\n"
    "**Frame-Level CLIP Text Encode** encodes each distinct caption of the timeline once. **PMWD KSampler, native "
    "MODEL** attaches frame-level cross-attention to a copy of the model (every latent frame attends only to its own "
    "caption) and denoises overlapping windows in parallel. The sigma shift is the MODEL's: **ModelSamplingSD3** "
    "(8, as in ComfyUI's template) sets it; the scheduler's shift widget is not used here. **VAE Decode**, **Create "
    "Video** and **Save Video** are ComfyUI's own.\n\n"
    "A 5 s story is one window (81 frames); longer stories get more windows. Without a Diffusion Forcing fine-tune "
    "keep df_step at 0."
)


def native_wan(mappings) -> dict:
    from native_node_specs import WAN_TEXT_ENCODER, WAN_TRANSFORMER, WAN_VAE

    hints = {m["directory"]: [m] for m in MODEL_HINTS}
    g = Graph(mappings)
    g.note(NATIVE_NOTE, (0, 0), (440, 560), "About this workflow")
    builder = g.add("FrameCapPromptBuilder", (480, 0), (400, 360),
                    {"story": NATIVE_STORY, "seconds": SECONDS, "fps": FPS, "backend": "offline"})
    unet = g.add("UNETLoader", (480, 420), (400, 90), {"unet_name": WAN_TRANSFORMER, "weight_dtype": "default"},
                 properties={"models": hints["diffusion_models"]})
    clip = g.add("CLIPLoader", (480, 560), (400, 110), {"clip_name": WAN_TEXT_ENCODER, "type": "wan",
                                                        "device": "default"},
                 properties={"models": hints["text_encoders"]})
    vae = g.add("VAELoader", (480, 720), (400, 60), {"vae_name": WAN_VAE}, properties={"models": hints["vae"]})
    shifted = g.add("ModelSamplingSD3", (940, 0), (320, 60), {"shift": 8.0}, {"model": (unet, 0)})
    encode = g.add("FrameCapCLIPTextEncode", (940, 120), (320, 200), {"negative": ""},
                   {"clip": (clip, 0), "timeline": (builder, 0)})
    schedule = g.add("FrameCapDFScheduler", (940, 380), (320, 180), {**TOY_SCHEDULE, "steps": 30, "shift": 8.0})
    sampler = g.add("FrameCapNativeSampler", (1300, 0), (400, 420),
                    {"width": 832, "height": 480, "seed": 42, "guidance": 5.0, "method": "pmwd", "window": 81,
                     "overlap": 28, "fusion": "flat", "window_batch_size": 0},
                    {"model": (shifted, 0), "conditioning": (encode, 0), "schedule": (schedule, 0)})
    decode = g.add("VAEDecode", (1760, 0), (220, 50), {}, {"samples": (sampler, 0), "vae": (vae, 0)})
    video = g.add("CreateVideo", (1760, 100), (220, 80), {"fps": float(FPS)}, {"images": (decode, 0)})
    g.add("SaveVideo", (1760, 230), (420, 500), {"filename_prefix": "FrameCap/native", "format": "auto",
                                                "codec": "auto"}, {"video": (video, 0)})
    return g.to_json()


WORKFLOWS = {
    "framecap_native_wan.json": native_wan,
    "framecap_story_to_video.json": story_to_video,
    "framecap_timeline_to_video.json": timeline_to_video,
    "framecap_compare_pmwd_sliding_fifo.json": compare_methods,
}


def mappings() -> dict:
    """FrameCap's nodes and the ComfyUI core nodes the workflows use (their specs, see native_node_specs.py)."""
    sys.path.insert(0, str(HERE))
    from native_node_specs import NATIVE_NODES

    return {**NATIVE_NODES, **load_pack().NODE_CLASS_MAPPINGS}


def render(builder) -> str:
    return json.dumps(builder(mappings()), indent=2, ensure_ascii=False) + "\n"


THUMBNAIL_SIZE = (512, 384)
_COLORS = {"Note": (110, 85, 51), "native": (70, 74, 82), "framecap": (40, 84, 140)}


def render_thumbnail(workflow: dict, title: str):
    """The template browser's card: the graph's nodes as boxes at their positions (notes brown, FrameCap blue,
    ComfyUI's own grey) with their titles, under the workflow's name. Returns a PIL image."""
    from PIL import Image, ImageDraw

    width, height = THUMBNAIL_SIZE
    image = Image.new("RGB", THUMBNAIL_SIZE, (32, 32, 36))
    draw = ImageDraw.Draw(image)
    draw.text((12, 10), title, fill=(235, 235, 235))
    nodes = workflow["nodes"]
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] for n in nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    scale = min((width - 24) / (x1 - x0), (height - 44) / (y1 - y0))
    by_id = {n["id"]: n for n in nodes}

    def at(node, dx, dy):
        return (12 + (node["pos"][0] + dx - x0) * scale, 34 + (node["pos"][1] + dy - y0) * scale)

    for _, source, _, target, _, _ in workflow["links"]:  # wires first, boxes on top
        src, dst = by_id[source], by_id[target]
        draw.line([at(src, src["size"][0], 20), at(dst, 0, 20)], fill=(150, 190, 120), width=2)
    for node in nodes:
        kind = "Note" if node["type"] in ("Note", "MarkdownNote") else (
            "framecap" if node["type"].startswith("FrameCap") else "native")
        left = 12 + (node["pos"][0] - x0) * scale
        top = 34 + (node["pos"][1] - y0) * scale
        box = (left, top, left + node["size"][0] * scale, top + node["size"][1] * scale)
        draw.rectangle(box, fill=_COLORS[kind], outline=(200, 200, 200))
        label = node.get("title") or node["type"].removeprefix("FrameCap")
        draw.text((left + 3, top + 2), label[: max(4, int(node["size"][0] * scale / 6))], fill=(245, 245, 245))
    return image


def thumbnail_name(workflow_name: str) -> str:
    """``framecap_x.json`` -> ``framecap_x.jpg``: the frontend asks /api/workflow_templates/<pack>/<name>.jpg."""
    return workflow_name[: -len(".json")] + ".jpg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, builder in WORKFLOWS.items():
        text = render(builder)
        path = HERE / name
        thumb = HERE / thumbnail_name(name)
        if args.check:  # thumbnails: present (their bytes depend on the PIL version, their content is not checked)
            if not path.is_file() or path.read_text(encoding="utf-8") != text or not thumb.is_file():
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            render_thumbnail(json.loads(text), name[: -len(".json")]).save(thumb, quality=88)
            print(f"wrote {path} and {thumb.name}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python workflows/build_workflows.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
