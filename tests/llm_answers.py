"""Stories, answers and frames shared by the tests of the LLM prompt backends (Gemini, OpenAI-compatible)."""

from __future__ import annotations

import numpy as np

STORY = "A paper boat floats down a rainy street. Then a child in a yellow raincoat picks it up."
GOOD = {
    "scenes": [
        {"start": 0, "end": 2.5, "caption": "A small white paper boat floats down a rainy street, wide shot."},
        {"start": 2.5, "end": 5, "caption": "A child in a yellow raincoat picks up the paper boat, close-up."},
    ]
}
# 5 s at 16 fps = 81 frames; the 2.5 s boundary (frame 40) moves to the nearest latent start, 4 * 11 - 3 = 41.
GOOD_TIMELINE = {
    "fps": 16,
    "num_frames": 81,
    "negative": "",
    "scenes": [
        {"start": 0, "end": 41, "caption": GOOD["scenes"][0]["caption"]},
        {"start": 41, "end": 81, "caption": GOOD["scenes"][1]["caption"]},
    ],
}


def frames(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8) for _ in range(n)]


ANNOTATION = {
    "segments": [
        {"first_frame": 0, "last_frame": 1, "caption": "A grey cat sleeps on a sofa, medium shot, eye level."},
        {"first_frame": 2, "last_frame": 2, "caption": "A grey cat jumps off a sofa, wide shot, low angle."},
    ],
    "video_caption": "A grey cat wakes up and jumps off a sofa.",
}
