"""The inputs and outputs of the ComfyUI core nodes the bundled workflows use, as ComfyUI v0.3.64 declares them.

``build_workflows.py`` lays out widget values in each node's input order, which needs the node's spec; ComfyUI's
own classes cannot be imported without ComfyUI, so their specs are written here. The real-ComfyUI test compares
every spec with the server's ``/object_info``, so a change in ComfyUI shows up as a failing test, not a broken
workflow. Model-file combos list only the files of ComfyUI's own Wan2.1 templates (a server lists what it has).
"""

from __future__ import annotations

WAN_TRANSFORMER = "wan2.1_t2v_1.3B_fp16.safetensors"
WAN_TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"

CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"]

_SPECS = {
    "UNETLoader": (
        {"required": {"unet_name": ([WAN_TRANSFORMER],),
                      "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],)}},
        ("MODEL",), None),
    "CLIPLoader": (
        {"required": {"clip_name": ([WAN_TEXT_ENCODER],), "type": (CLIP_TYPES,)},
         "optional": {"device": (["default", "cpu"], {"advanced": True})}},
        ("CLIP",), None),
    "VAELoader": ({"required": {"vae_name": ([WAN_VAE],)}}, ("VAE",), None),
    "ModelSamplingSD3": (
        {"required": {"model": ("MODEL",),
                      "shift": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01})}},
        ("MODEL",), None),
    "VAEDecode": ({"required": {"samples": ("LATENT",), "vae": ("VAE",)}}, ("IMAGE",), None),
    "CreateVideo": (
        {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
         "optional": {"audio": ("AUDIO",)}},
        ("VIDEO",), None),
    "SaveVideo": (
        {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                      "format": (["auto", "mp4"], {"default": "auto"}),
                      "codec": (["auto", "h264"], {"default": "auto"})}},
        (), None),
}


def _node_class(name: str, inputs: dict, returns: tuple, names):
    return type(name, (), {
        "INPUT_TYPES": classmethod(lambda cls: inputs),
        "RETURN_TYPES": returns,
        "RETURN_NAMES": names or returns,
        "NATIVE": True,
    })


NATIVE_NODES = {name: _node_class(name, *spec) for name, spec in _SPECS.items()}
"""ComfyUI core node name -> a class with ``INPUT_TYPES()`` / ``RETURN_TYPES`` (and ``NATIVE = True``)."""
