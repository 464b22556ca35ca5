"""FrameCap nodes (ComfyUI V1 API). Each node is a thin adapter over one ``framecap_core`` function."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
