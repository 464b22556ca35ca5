"""Per-latent captions of a clip: each training frame takes its nearest annotated frame's caption, each latent the
caption of most of its pixel frames (:meth:`framecap_core.timeline.Timeline.latent_caption_indices`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TimelineError
from ..grid import latent_owners
from .manifest import ClipRecord


def frame_captions(record: ClipRecord) -> list[int]:
    """Caption index (into ``record.captions``) of every training frame: the sample frame nearest in time
    (ties go to the earlier one). Returns ``num_frames`` ints."""
    samples = np.asarray(record.sample_frames, dtype=np.float64)
    frames = np.asarray(record.frame_indices, dtype=np.float64)
    # distances [F, S]; argmin takes the first minimum, i.e. the earlier sample on a tie
    return np.abs(frames[:, None] - samples[None, :]).argmin(axis=1).tolist()


def clip_latent_captions(record: ClipRecord) -> tuple[list[str], list[int]]:
    """Unique captions of a clip and the index of each latent's caption among them.

    Training frames take their nearest sample frame's caption; runs of equal captions become the scenes of a
    :class:`~framecap_core.timeline.Timeline` over the training frames, whose majority rule gives each latent its
    caption. A run too short to own any latent is merged into its predecessor (its caption never reaches a latent).

    Returns:
        ``(unique_captions [U], latent_index [L])`` with ``L = record.num_latents``.
    """
    from ..timeline import Scene, Timeline

    per_frame = [record.captions[i] for i in frame_captions(record)]
    n = len(per_frame)
    scenes: list[list[Any]] = []  # [start, end, caption]
    for i, caption in enumerate(per_frame):
        if scenes and scenes[-1][2] == caption:
            scenes[-1][1] = i + 1
        else:
            scenes.append([i, i + 1, caption])
    while True:
        try:
            timeline = Timeline([Scene(s, e, c) for s, e, c in scenes], num_frames=n)
            break
        except TimelineError:
            # Drop the first scene that owns no latent: extend its predecessor (or successor) over it.
            owned = set(latent_owners([i for i, (s, e, _) in enumerate(scenes) for _frame in range(s, e)]))
            lost = next(i for i in range(len(scenes)) if i not in owned)
            if lost > 0:
                scenes[lost - 1][1] = scenes[lost][1]
            else:
                scenes[1][0] = 0
            del scenes[lost]
            merged: list[list[Any]] = []
            for s, e, c in scenes:
                if merged and merged[-1][2] == c:
                    merged[-1][1] = e
                else:
                    merged.append([s, e, c])
            scenes = merged
    return timeline.unique_captions(), timeline.latent_unique_indices()

