"""How well a story split matches a reference segmentation into sub-events.

VBench-2.0's prompt files give, for each long prompt, its sub-events (``auxiliary_info``): sentences that paraphrase
consecutive pieces of the prompt. We score a split of the prompt into scenes against them:

1. **Footprint.** Both texts are lower-cased word sequences. The reference events, concatenated in order, are
   aligned to the prompt with :class:`difflib.SequenceMatcher` (longest common blocks, in order); every prompt word
   matched by a word of event ``e`` belongs to ``e``'s footprint. The reference paraphrases, so a footprint is the
   part of the prompt the event copied, usually most of it.
2. **Event recall** ``R``: the share of reference events whose footprint lies in exactly one scene (at least
   ``inside`` = 80 % of its words in one scene) — the event was not cut in two.
3. **Scene precision** ``P``: among scenes that hold reference material (at least 3 footprint words), the share
   holding exactly one event, where an event is held by the scene with most of its footprint — the scene does not
   lump events together, and is not a leftover shred of an event cut in two. Scenes over text that the reference
   left out (VBench often drops the closing "Finally, the camera pulls back ...") hold nothing and do not count.
4. **Score** ``(R + P) / 2`` per prompt; a benchmark reports the mean over prompts.

One scene for the whole prompt gets ``R = 1, P = 0`` (0.5); one scene per word gets ``R = 0`` and a low ``P``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SplitScore", "score_split"]

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[tuple[str, int]]:
    """Lower-cased words of ``text`` with the character offset where each starts."""
    return [(m.group(0), m.start()) for m in _WORD_RE.finditer(text.lower())]


@dataclass(frozen=True)
class SplitScore:
    recall: float  # share of reference events inside exactly one scene
    precision: float  # share of scenes (holding reference material) that hold exactly one event
    num_events: int
    num_scenes: int

    @property
    def score(self) -> float:
        return (self.recall + self.precision) / 2


def score_split(
    story: str,
    scene_spans: Sequence[tuple[int, int]],
    events: Sequence[str],
    *,
    inside: float = 0.8,
    min_material: int = 3,
) -> SplitScore:
    """Score scenes (character spans ``[start, end)`` of ``story``) against reference sub-event sentences."""
    words = _words(story)
    if not words or not events or not scene_spans:
        raise ValueError("score_split needs a non-empty story, scenes and events")
    # Scene of each story word, by the span its first character falls in (spans are sorted, may leave gaps).
    scene_of = []
    for _, offset in words:
        owner = -1
        for index, (start, end) in enumerate(scene_spans):
            if start <= offset < end:
                owner = index
                break
        scene_of.append(owner)
    ref_words: list[str] = []
    ref_event: list[int] = []
    for index, event in enumerate(events):
        tokens = [w for w, _ in _words(event)]
        ref_words.extend(tokens)
        ref_event.extend([index] * len(tokens))
    matcher = difflib.SequenceMatcher(None, [w for w, _ in words], ref_words, autojunk=False)
    # counts[e][s]: footprint words of event e inside scene s
    counts = [[0] * len(scene_spans) for _ in events]
    footprint = [0] * len(events)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            event = ref_event[block.b + k]
            scene = scene_of[block.a + k]
            footprint[event] += 1
            if scene >= 0:
                counts[event][scene] += 1
    whole = 0
    held = [0] * len(scene_spans)
    for event, row in enumerate(counts):
        if footprint[event] == 0:
            continue
        best = max(range(len(row)), key=row.__getitem__)
        if row[best] >= inside * footprint[event]:
            whole += 1
        held[best] += 1
    material = [sum(counts[e][s] for e in range(len(events))) for s in range(len(scene_spans))]
    judged = [s for s in range(len(scene_spans)) if material[s] >= min_material]
    exact = sum(1 for s in judged if held[s] == 1)
    return SplitScore(
        recall=whole / len(events),
        precision=exact / len(judged) if judged else 0.0,
        num_events=len(events),
        num_scenes=len(scene_spans),
    )
