"""FrameCap ComfyUI node pack.

ComfyUI imports this folder as a module. Importing it only registers node classes: no model loading,
no network, no heavy imports (torch and diffusers load when a node first runs).
"""

try:  # imported as a package by ComfyUI (relative import works)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError:  # imported as a plain module (e.g. pytest rootdir collection)
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
