"""Output node: the mp4, its storyboard PNG and its timeline JSON in ComfyUI's output folder."""

from __future__ import annotations

from framecap_core.errors import ConfigError

from . import comfy_compat
from .sampler_nodes import latent_info, settings_legend

CATEGORY = "FrameCap"


class FrameCapSaveVideo:
    """Save the video, the storyboard and the timeline."""

    DESCRIPTION = (
        "Saves the frames as an H.264 mp4 in ComfyUI's output folder, with a storyboard PNG beside it (the timeline "
        "as coloured scenes, the sampler's windows, one frame per scene, the settings) and the timeline JSON, and "
        "plays the video in the node, as ComfyUI's Save Video does. Connect the KSampler's latent (or a timeline) to "
        "get the storyboard."
    )
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("video_path",)
    OUTPUT_TOOLTIPS = ("Absolute path of the saved mp4.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Video frames [T, H, W, 3] in 0..1 (from FrameCap Decode)."}),
                "filename_prefix": ("STRING", {"default": "FrameCap/video",
                                    "tooltip": "File name prefix inside the output folder; may hold sub-folders."}),
                "fps": ("INT", {"default": 0, "min": 0, "max": 120,
                                "tooltip": "Frames per second of the mp4; 0 = the timeline's fps (16 without one)."}),
                "storyboard": ("BOOLEAN", {"default": True,
                               "tooltip": "Also write and show the storyboard PNG (needs the latent or timeline)."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "The PMWD KSampler's latent: gives the storyboard its timeline, "
                                                 "windows and settings."}),
                "timeline": ("FRAMECAP_TIMELINE", {"tooltip": "The timeline, when no KSampler latent is connected."}),
            },
        }

    def save(self, images, filename_prefix, fps, storyboard, latent=None, timeline=None):
        from framecap_core.output import write_outputs
        from framecap_core.timeline import Timeline

        info = latent_info(latent)
        if timeline is None and info is not None:
            timeline = Timeline.from_dict(info["timeline"])
        rate = int(fps) or (timeline.fps if timeline is not None else 16)
        try:
            video_path, subfolder, video_name = comfy_compat.next_output_path(filename_prefix, "mp4")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        spans = [tuple(span) for span in info["window_spans"]] if info else []
        legend = settings_legend(info) if info else {"fps": rate}
        files = write_outputs(images, video_path, fps=rate, timeline=timeline, storyboard=bool(storyboard),
                              window_spans=spans, title=f"FrameCap: {video_name}", legend=legend)
        boards = []
        if files.storyboard is not None:
            boards.append({"filename": files.storyboard.name, "subfolder": subfolder, "type": "output"})
        # "images" + "animated" is how ComfyUI's own SaveVideo reports its file: the frontend plays it in the node.
        # The storyboard rides along under its own key (a PNG among "images" would turn the preview into stills).
        video = {"filename": video_name, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [video], "animated": [True], "storyboard": boards}, "result": (str(video_path),)}
