"""Offline story splitter vs. VBench-2.0's reference sub-events (Complex_Landscape).

For each long prompt, the offline backend's scenes (for a 30 s video) are scored against the prompt's
``auxiliary_info`` sub-events with :func:`framecap_core.prompting.score_split` (see its module docstring):
``score = (R + P) / 2`` with R the share of reference events that fall inside exactly one scene and P the share of
scenes (over reference material) that hold exactly one event. Baselines, scored the same way, in the same run:

- ``one scene``: the whole prompt as one scene (R = 1, P = 0);
- ``sentences``: one scene per sentence (split at ``.!?``), no event rules;
- ``equal words``: as many scenes as reference events, cut at equal word counts (knows the answer's size).

Usage: ``python benchmarks/bench_prompting.py [path/to/Complex_Landscape.json] [--seconds 30]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from framecap_core.prompting import build_timeline, plan_scenes, score_split
from framecap_core.timeline import frames_for_seconds

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "vbench2" / "Complex_Landscape.json"


def sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in re.finditer(r"[.!?]+\s+(?=[A-Z])", text):
        spans.append((start, m.start() + 1))
        start = m.end()
    spans.append((start, len(text)))
    return spans


def equal_word_spans(text: str, k: int) -> list[tuple[int, int]]:
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    cuts = [starts[round(i * len(starts) / k)] for i in range(k)] + [len(text)]
    return list(zip(cuts[:-1], cuts[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="VBench-2.0 prompt file")
    parser.add_argument("--seconds", type=float, default=30.0, help="video length for the split (default: 30)")
    args = parser.parse_args()
    path = Path(args.data)
    if not path.is_file():
        print(f"no data at {path}; pass the path to Complex_Landscape.json", file=sys.stderr)
        return 2
    items = json.loads(path.read_text(encoding="utf-8"))
    num_frames = frames_for_seconds(args.seconds)
    methods = ("offline", "one scene", "sentences", "equal words")
    totals = {m: [0.0, 0.0, 0.0] for m in methods}  # recall, precision, score sums
    elapsed = 0.0
    print(f"{len(items)} prompts from {path.name}, {args.seconds:g} s videos ({num_frames} frames)\n")
    print(f"{'#':>3}  {'events':>6}  {'scenes':>6}  {'recall':>6}  {'prec.':>6}  {'score':>6}   sentences  equal words")
    for index, item in enumerate(items, 1):
        story, events = item["prompt_en"], item["auxiliary_info"]
        start = time.perf_counter()
        _, scenes, _ = plan_scenes(story, num_frames=num_frames)
        timeline = build_timeline(story, seconds=args.seconds, backend="offline")
        elapsed += time.perf_counter() - start
        assert len(timeline.scenes) == len(scenes)
        spans = {
            "offline": [(e.start, e.end) for e in scenes],
            "one scene": [(0, len(story))],
            "sentences": sentence_spans(story),
            "equal words": equal_word_spans(story, len(events)),
        }
        results = {m: score_split(story, spans[m], events) for m in methods}
        for m, r in results.items():
            totals[m][0] += r.recall
            totals[m][1] += r.precision
            totals[m][2] += r.score
        r = results["offline"]
        print(
            f"{index:>3}  {len(events):>6}  {len(scenes):>6}  {r.recall:>6.2f}  {r.precision:>6.2f}  {r.score:>6.2f}   "
            f"{results['sentences'].score:>9.2f}  {results['equal words'].score:>11.2f}"
        )
    n = len(items)
    print(f"\n{'method':<12}  {'recall':>6}  {'prec.':>6}  {'score':>6}")
    for m in methods:
        recall, precision, score = (v / n for v in totals[m])
        print(f"{m:<12}  {recall:>6.3f}  {precision:>6.3f}  {score:>6.3f}")
    print(f"\nmean offline score: {totals['offline'][2] / n:.3f} (target >= 0.8)")
    print(f"offline split + timeline: {1000 * elapsed / n:.2f} ms per prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
