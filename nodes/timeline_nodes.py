"""Timeline nodes: a story -> frame-level captions (offline, Gemini or a local LLM server), and a hand-written
timeline."""

from __future__ import annotations

from framecap_core.errors import TimelineError
from framecap_core.prompting import DEFAULT_BASE_URL, DEFAULT_MODEL, DEFAULT_OPENAI_MODEL, build_timeline
from framecap_core.timeline import DEFAULT_FPS, Timeline, frames_for_seconds, parse_timeline

CATEGORY = "FrameCap"
TIMELINE = "FRAMECAP_TIMELINE"

EXAMPLE_STORY = (
    "A red fox trots through a snowy pine forest at dawn. It stops at a frozen stream and sniffs the ice. "
    "Suddenly it pounces into a snowdrift, then shakes the snow off its fur and runs away over a hill."
)
EXAMPLE_TIMELINE = (
    "0s-2s: a red fox trots through a snowy pine forest at dawn\n"
    "2s-4s: the fox sniffs the ice of a frozen stream\n"
    "4s-6s: the fox pounces into a deep snowdrift"
)

_SECONDS = ("FLOAT", {"default": 6.0, "min": 0.25, "max": 600.0, "step": 0.25,
                      "tooltip": "Video length in seconds; the frame count is the nearest 4k+1 to seconds x fps "
                                 "(5 s at 16 fps = 81 frames)."})
_FPS = ("INT", {"default": DEFAULT_FPS, "min": 1, "max": 60, "step": 1,
                "tooltip": "Frames per second of the video (Wan2.1 is trained at 16)."})


# Offline first: a new node runs without a key, a network or a server.
BACKEND_CHOICES = ("offline", "gemini", "openai")


class FrameCapPromptBuilder:
    """Story -> frame-level captions."""

    DESCRIPTION = (
        "Turns a short story into a timeline of frame-level captions: scenes with exact start and end frames and "
        "one standalone caption each. Backend 'offline' is a deterministic splitter that needs no key or network; "
        "'gemini' asks Google Gemini and reads the API key ONLY from the GEMINI_API_KEY or GOOGLE_API_KEY "
        "environment variable (never from a widget, so it never lands in a saved workflow); 'openai' asks an "
        "OpenAI-compatible LLM server you run (Ollama, LM Studio, llama.cpp, vLLM) at openai_base_url, with "
        "openai_model (a key, if the server wants one, only from OPENAI_API_KEY). Outputs the timeline and its JSON "
        "so you can read it, copy it into a Timeline node and edit it."
    )
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (TIMELINE, "STRING")
    RETURN_NAMES = ("timeline", "timeline_json")
    OUTPUT_TOOLTIPS = ("The timeline (scenes with frame spans and captions).", "The timeline as JSON.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "story": ("STRING", {"multiline": True, "default": EXAMPLE_STORY,
                                     "tooltip": "What should happen in the video, in plain sentences."}),
                "seconds": _SECONDS,
                "fps": _FPS,
                "backend": (list(BACKEND_CHOICES), {"default": "offline",
                            "tooltip": "offline: deterministic sentence splitter, no key, no network. gemini: "
                                       "Google Gemini (set GEMINI_API_KEY or GOOGLE_API_KEY in the environment "
                                       "ComfyUI runs in). openai: an OpenAI-compatible server you run (Ollama, "
                                       "LM Studio, llama.cpp, vLLM) at openai_base_url."}),
                "gemini_model": ("STRING", {"default": DEFAULT_MODEL,
                                            "tooltip": "Gemini model name (used by the gemini backend only)."}),
            },
            # Optional so that workflows saved before the openai backend still load and run unchanged.
            "optional": {
                "openai_base_url": ("STRING", {"default": DEFAULT_BASE_URL,
                                               "tooltip": "The OpenAI-compatible server's URL up to /v1 (openai "
                                                          "backend only): Ollama http://127.0.0.1:11434/v1, LM "
                                                          "Studio http://127.0.0.1:1234/v1, llama.cpp "
                                                          "http://127.0.0.1:8080/v1, vLLM http://127.0.0.1:8000/v1."}),
                "openai_model": ("STRING", {"default": DEFAULT_OPENAI_MODEL,
                                            "tooltip": "The model as the server names it (openai backend only), "
                                                       "e.g. qwen2.5:7b in Ollama; it should support JSON-schema "
                                                       "structured output."}),
            },
        }

    def build(self, story, seconds, fps, backend, gemini_model, openai_base_url=None, openai_model=None):
        if backend == "openai":
            model, base_url = (openai_model or DEFAULT_OPENAI_MODEL).strip(), (openai_base_url or "").strip() or None
        else:
            model, base_url = (gemini_model or DEFAULT_MODEL).strip(), None
        timeline = build_timeline(story, seconds=float(seconds), fps=int(fps), backend=backend, model=model,
                                  base_url=base_url)
        return (timeline, timeline.to_json())


class FrameCapTimeline:
    """A timeline written by hand."""

    DESCRIPTION = (
        "A timeline written by hand in any syntax FrameCap reads: lines like '0s-4s: caption' or '[0s-4s: ...]', "
        "timestamps '0:04 caption', keyframes '0: caption' in frames, one caption per line (equal split), or the "
        "canonical JSON (the Prompt Builder's timeline_json output). Spans are snapped to whole latents."
    )
    CATEGORY = CATEGORY
    FUNCTION = "parse"
    RETURN_TYPES = (TIMELINE, "STRING")
    RETURN_NAMES = ("timeline", "timeline_json")
    OUTPUT_TOOLTIPS = ("The parsed timeline.", "The timeline as canonical JSON.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "default": EXAMPLE_TIMELINE,
                                    "tooltip": "The timeline: one scene per line ('0s-4s: a fox in the snow'), "
                                               "keyframes, plain captions, or canonical JSON."}),
                "seconds": ("FLOAT", {**_SECONDS[1], "min": 0.0,
                                      "tooltip": "Video length in seconds; 0 = take it from the text (the end of "
                                                 "the last span). Needed for keyframes and plain captions."}),
                "fps": _FPS,
            }
        }

    def parse(self, text, seconds, fps):
        one_line = (text or "").strip()
        if "\n" not in one_line and one_line.lower().endswith((".json", ".txt")) and " " not in one_line:
            raise TimelineError(
                f"The Timeline node takes the timeline itself, not a file name ({one_line!r}); paste the file's "
                "content into the text box."
            )
        num_frames = frames_for_seconds(float(seconds), int(fps)) if seconds and seconds > 0 else None
        timeline: Timeline = parse_timeline(text, num_frames=num_frames, fps=int(fps))
        return (timeline, timeline.to_json())
