"""FrameCap ComfyUI node pack.

ComfyUI imports this folder as a package. Importing it only registers node classes: no model loading,
no network, no heavy imports (torch and diffusers load when a node first runs).
"""

if __package__:  # imported as a package (ComfyUI): a failure inside nodes/ must surface, not hide as "no nodes"
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported as a plain module (e.g. a test runner collecting the repo root): nothing to register
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
