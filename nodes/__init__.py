"""FrameCap nodes (ComfyUI V1 API). Each node is a thin adapter over one ``framecap_core`` function.

Importing this package registers the node classes only: no torch, no model, no network (heavy imports happen
when a node runs). When the pack is cloned into ``ComfyUI/custom_nodes`` without ``pip install``, the repository
root is appended to ``sys.path`` so that ``framecap_core`` (which lives beside this folder) imports.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("framecap_core") is None:  # pragma: no cover - depends on how the pack is installed
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from .model_nodes import FrameCapTextEncode, FrameCapWanLoader  # noqa: E402
from .native_nodes import FrameCapCLIPTextEncode, FrameCapNativeSampler  # noqa: E402
from .output_nodes import FrameCapSaveVideo  # noqa: E402
from .sampler_nodes import FrameCapDecode, FrameCapDFScheduler, FrameCapPMWDSampler  # noqa: E402
from .timeline_nodes import FrameCapPromptBuilder, FrameCapTimeline  # noqa: E402

NODE_CLASS_MAPPINGS = {
    "FrameCapPromptBuilder": FrameCapPromptBuilder,
    "FrameCapTimeline": FrameCapTimeline,
    "FrameCapWanLoader": FrameCapWanLoader,
    "FrameCapTextEncode": FrameCapTextEncode,
    "FrameCapCLIPTextEncode": FrameCapCLIPTextEncode,
    "FrameCapDFScheduler": FrameCapDFScheduler,
    "FrameCapPMWDSampler": FrameCapPMWDSampler,
    "FrameCapNativeSampler": FrameCapNativeSampler,
    "FrameCapDecode": FrameCapDecode,
    "FrameCapSaveVideo": FrameCapSaveVideo,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FrameCapPromptBuilder": "Frame-Level Prompt Builder (FrameCap)",
    "FrameCapTimeline": "Timeline (FrameCap)",
    "FrameCapWanLoader": "Frame-Level Wan Loader (FrameCap)",
    "FrameCapTextEncode": "Frame-Level Text Encode (FrameCap)",
    "FrameCapCLIPTextEncode": "Frame-Level CLIP Text Encode (FrameCap)",
    "FrameCapDFScheduler": "Diffusion Forcing Scheduler (FrameCap)",
    "FrameCapPMWDSampler": "PMWD KSampler (FrameCap)",
    "FrameCapNativeSampler": "PMWD KSampler, native MODEL (FrameCap)",
    "FrameCapDecode": "Decode Wan Video (FrameCap)",
    "FrameCapSaveVideo": "Save Video + Storyboard (FrameCap)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
