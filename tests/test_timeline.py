"""Timeline model, pixel->latent caption mapping, every accepted syntax, and the error messages users see."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from framecap_core.errors import FrameCapError, TimelineError
from framecap_core.timeline import (
    Scene,
    Timeline,
    check_num_frames,
    frames_for_seconds,
    num_latents,
    parse_timeline,
)

# ---------------------------------------------------------------------------------------------------------------------
# Frame-count helpers


@pytest.mark.parametrize("frames, latents", [(1, 1), (5, 2), (17, 5), (81, 21), (481, 121)])
def test_num_latents(frames, latents):
    assert num_latents(frames) == latents


@pytest.mark.parametrize(
    "seconds, fps, frames",
    [(5, 16, 81), (30, 16, 481), (0, 16, 1), (1, 16, 17), (3 / 16, 16, 5), (2.5 / 16, 16, 1), (2, 24, 49)],
)
def test_frames_for_seconds_is_nearest_4k_plus_1(seconds, fps, frames):
    # 3 frames is halfway between 1 and 5 (rounds up); 2.5 frames is nearer 1.
    assert frames_for_seconds(seconds, fps) == frames
    assert (frames - 1) % 4 == 0


@pytest.mark.parametrize("bad, nearest", [(80, ("77", "81")), (2, ("1", "5")), (482, ("481", "485"))])
def test_check_num_frames_names_the_two_nearest_valid_counts(bad, nearest):
    with pytest.raises(TimelineError) as info:
        check_num_frames(bad)
    message = str(info.value)
    assert f"num_frames={bad}" in message and "4k+1" in message
    assert f"use {nearest[0]} or {nearest[1]}" in message


def test_check_num_frames_rejects_non_positive_and_non_integers():
    for bad in (0, -3, 4.5, "81", True):
        with pytest.raises(TimelineError):
            check_num_frames(bad)
    assert check_num_frames(81.0) == 81


def test_timeline_error_is_a_framecap_error():
    with pytest.raises(FrameCapError):
        parse_timeline("a cat", num_frames=80)


# ---------------------------------------------------------------------------------------------------------------------
# Pixel frames -> latents (hand-computed: latent 0 = frame 0, latent i covers frames 4i-3..4i)


def _tl(bounds, captions=None, num_frames=None):
    captions = captions or [f"scene {i}" for i in range(len(bounds) - 1)]
    scenes = [Scene(a, b, c) for a, b, c in zip(bounds[:-1], bounds[1:], captions)]
    return Timeline(scenes, num_frames=num_frames or bounds[-1])


def test_latent_indices_majority_hand_computed():
    # 17 frames = 5 latents. Cut at 6: latent 2 = frames 5,6,7,8 -> one of scene 0, three of scene 1.
    assert _tl([0, 6, 17]).latent_caption_indices() == [0, 0, 1, 1, 1]
    # Cut at 8: latent 2 = frames 5,6,7 (scene 0) + 8 (scene 1) -> scene 0.
    assert _tl([0, 8, 17]).latent_caption_indices() == [0, 0, 0, 1, 1]
    # Cut at 9 falls on a latent boundary: latent 3 = frames 9..12 all scene 1.
    assert _tl([0, 9, 17]).latent_caption_indices() == [0, 0, 0, 1, 1]
    # Cut at 5 likewise: latent 2 = frames 5..8 all scene 1.
    assert _tl([0, 5, 17]).latent_caption_indices() == [0, 0, 1, 1, 1]


def test_latent_indices_tie_goes_to_the_earlier_scene():
    # Cut at 7: latent 2 = frames 5,6 (scene 0) and 7,8 (scene 1), a 2-2 tie -> scene 0.
    assert _tl([0, 7, 17]).latent_caption_indices() == [0, 0, 0, 1, 1]
    # Cut at 3: latent 1 = frames 1,2 (scene 0) and 3,4 (scene 1) -> scene 0.
    assert _tl([0, 3, 17]).latent_caption_indices() == [0, 0, 1, 1, 1]


def test_latent_zero_is_frame_zero_alone():
    # A one-frame first scene owns latent 0 only.
    assert _tl([0, 1, 17]).latent_caption_indices() == [0, 1, 1, 1, 1]
    assert _tl([0, 1]).latent_caption_indices() == [0]


def test_unique_captions_and_spans_with_a_repeated_caption():
    tl = _tl([0, 9, 21, 33], ["a", "b", "a"])
    assert tl.num_latents == 9
    assert tl.latent_caption_indices() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert tl.latent_captions() == ["a"] * 3 + ["b"] * 3 + ["a"] * 3
    assert tl.unique_captions() == ["a", "b"]
    assert tl.latent_unique_indices() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert tl.scene_latent_spans() == [(0, 2), (3, 5), (6, 8)]
    assert tl.duration_seconds == 33 / 16


def test_unique_captions_keep_first_appearance_order():
    tl = _tl([0, 9, 21, 33, 45], ["c", "a", "c", "b"])
    assert tl.unique_captions() == ["c", "a", "b"]
    assert [tl.unique_captions()[i] for i in tl.latent_unique_indices()] == tl.latent_captions()


def test_scene_too_short_to_own_a_latent_is_an_error():
    # Scene 2 = frames 3,4: it ties latent 1 (lost to the earlier scene) and is absent from latent 2.
    with pytest.raises(TimelineError) as info:
        _tl([0, 3, 5, 17], ["a", "b", "c"])
    message = str(info.value)
    assert 'scene 2 ("b", start=3, end=5)' in message
    assert "at least 4 frames" in message


def test_four_frame_scenes_always_own_a_latent():
    for start in range(1, 10):
        tl = _tl([0, start, start + 4, 33])
        assert 1 in tl.latent_caption_indices()


# ---------------------------------------------------------------------------------------------------------------------
# Every syntax gives the same canonical timeline

CANONICAL = {
    "fps": 16,
    "num_frames": 81,
    "negative": "",
    "scenes": [
        {"start": 0, "end": 25, "caption": "a red fox"},
        {"start": 25, "end": 53, "caption": "the fox jumps"},
        {"start": 53, "end": 81, "caption": "snow falls"},
    ],
}

SPECS = {
    "canonical json": json.dumps(CANONICAL),
    "canonical dict": CANONICAL,
    "keyframes bare": '"0": "a red fox", "25": "the fox jumps", "53": "snow falls"',
    "keyframes json": '{"0": "a red fox", "25": "the fox jumps", "53": "snow falls"}',
    "keyframes dict": {0: "a red fox", "25": "the fox jumps", 53: "snow falls"},
    "keyframes python-ish": "{0: 'a red fox', 25: 'the fox jumps', 53: 'snow falls',}",
    "keyframes lines": "0: a red fox\n25: the fox jumps\n53: snow falls\n",
    "keyframes fraction and negative": '"0": "a red fox", "0.3086": "the fox jumps", "-28": "snow falls"',
    "seconds inline": "[0s-1.5625s: a red fox] [1.5625s-3.3125s: the fox jumps] [3.3125s-5.0625s: snow falls]",
    "seconds open": "[0s: a red fox]\n[1.5625s: the fox jumps]\n[3.3125s: snow falls]",
    "seconds lines": "0s-1.5625s: a red fox\n1.5625s-3.3125s: the fox jumps\n3.3125s-5.0625s: snow falls",
    "seconds m:ss": "[0:00-0:01.5625: a red fox] [0:01.5625 to 0:03.3125: the fox jumps] [0:03.3125: snow falls]",
    "equal split": "a red fox | the fox jumps | snow falls",
    "equal split json list": '["a red fox", "the fox jumps", "snow falls"]',
    "durations pairs json": '[["a red fox", 1.5625], ["the fox jumps", 1.75], ["snow falls", 1.75]]',
    "durations python": [{"caption": "a red fox", "seconds": 1.5625}, ("the fox jumps", 1.75), (1.75, "snow falls")],
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_syntax_parses_to_the_same_timeline(name):
    expected = Timeline.from_dict(CANONICAL)
    assert parse_timeline(SPECS[name], num_frames=81) == expected


@pytest.mark.parametrize("name", ["canonical json", "seconds inline", "durations pairs json"])
def test_syntaxes_with_a_length_need_no_num_frames(name):
    assert parse_timeline(SPECS[name]) == Timeline.from_dict(CANONICAL)


def test_equal_split_shares_latents_evenly():
    tl = parse_timeline("a | b | c", num_frames=81)
    assert [last - first + 1 for first, last in tl.scene_latent_spans()] == [7, 7, 7]
    tl = parse_timeline("a | b", num_frames=17)  # 5 latents: starts at latents 0 and round(2.5) = 3 -> frame 9
    assert [(s.start, s.end) for s in tl.scenes] == [(0, 9), (9, 17)]


def test_seconds_length_rounds_to_nearest_4k_plus_1_and_keeps_boundaries():
    tl = parse_timeline("[0s-5s: a] [5s-10s: b]")
    assert tl.num_frames == 161  # 10 s = 160 frames -> 161
    assert [(s.start, s.end) for s in tl.scenes] == [(0, 80), (80, 161)]
    # With num_frames an open last span stretches to it.
    tl = parse_timeline("[0s-5s: a] [5s: b]", num_frames=241)
    assert [(s.start, s.end) for s in tl.scenes] == [(0, 80), (80, 241)]
    # Explicit end within 2 frames of num_frames is snapped.
    assert parse_timeline("[0s-5s: a]", num_frames=81).scenes == [Scene(0, 81, "a")]


def test_keyframe_fractions_and_negative_frames():
    tl = parse_timeline({"0": "a", "0.5": "b", "-16": "c"}, num_frames=81)
    # 0.5 * 81 = 40.5 -> 41 (half up); -16 -> 81 - 16 = 65.
    assert [(s.start, s.end) for s in tl.scenes] == [(0, 41), (41, 65), (65, 81)]


def test_plain_sentence_is_one_scene():
    tl = parse_timeline("  A fox runs through snow.  ", num_frames=49)
    assert tl.scenes == [Scene(0, 49, "A fox runs through snow.")]
    assert tl.latent_caption_indices() == [0] * 13


def test_fps_from_the_argument_and_from_canonical_json():
    tl = parse_timeline("[0s-2s: a] [2s-4s: b]", fps=24)
    assert tl.fps == 24 and tl.num_frames == 97 and tl.scenes[0].end == 48
    data = dict(CANONICAL, fps=24)
    assert parse_timeline(data).fps == 24


def test_to_json_round_trip_and_negative_prompt():
    tl = Timeline([Scene(0, 40, "a fox"), Scene(40, 81, "a fox, running")], num_frames=81, negative="blurry")
    text = tl.to_json()
    assert json.loads(text) == tl.to_dict()
    assert list(tl.to_dict()) == ["fps", "num_frames", "negative", "scenes"]
    again = parse_timeline(text)
    assert again == tl and again.negative == "blurry"
    assert Timeline.from_dict(tl.to_dict()) == tl
    assert Timeline.from_json(text) == tl
    assert parse_timeline(tl) is tl


def test_files_by_path_and_pathlike(tmp_path):
    tl = parse_timeline(SPECS["canonical json"])
    json_file = tmp_path / "story.json"
    json_file.write_text(tl.to_json(), encoding="utf-8")
    txt_file = tmp_path / "story.txt"
    txt_file.write_text(SPECS["seconds open"], encoding="utf-8")
    assert parse_timeline(str(json_file)) == tl
    assert parse_timeline(json_file) == tl
    assert parse_timeline(txt_file, num_frames=81) == tl
    with pytest.raises(TimelineError, match="does not exist; check the path"):
        parse_timeline(str(tmp_path / "missing.json"))
    spaced = tmp_path / "my story.txt"
    spaced.write_text("[0s-5s: a]", encoding="utf-8")
    assert parse_timeline(str(spaced)).num_frames == 81


def test_summary_lists_every_scene():
    tl = parse_timeline(SPECS["canonical json"])
    lines = tl.summary().splitlines()
    assert len(lines) == 4 and "21 latents" in lines[0]
    assert "latents 7-13" in lines[2] and "the fox jumps" in lines[2]


def test_import_does_not_load_torch():
    code = "import sys, framecap_core.timeline; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------------
# Errors: each names the scene / keyframe / span / line at fault and the fix


def _error(spec, **kwargs) -> str:
    with pytest.raises(TimelineError) as info:
        parse_timeline(spec, **kwargs)
    return str(info.value)


def _canonical(*scenes, num_frames=81):
    return {"num_frames": num_frames, "scenes": [{"start": a, "end": b, "caption": c} for a, b, c in scenes]}


@pytest.mark.parametrize(
    "scenes, expected",
    [
        ([(0, 40, "a"), (48, 81, "b")], ['scene 2 ("b", start=48, end=81)', "frames 40-47", "start at 40"]),
        ([(0, 40, "a"), (36, 81, "b")], ['scene 2 ("b", start=36, end=81)', "overlaps", "start at 40"]),
        ([(0, 40, "a"), (40, 81, "  ")], ["scene 2", "empty caption"]),
        ([(0, 40, "a"), (40, 85, "b")], ["scene 2", "past the end", "end it at 81"]),
        ([(4, 40, "a"), (40, 81, "b")], ["scene 1", "frames 0-3", "start at 0"]),
        ([(0, 40, "a"), (40, 77, "b")], ["scene 2", "Frames 77-80", "End it at 81"]),
        ([(0, 40, "a"), (40, 40, "b"), (40, 81, "c")], ["scene 2", "end > start"]),
        ([(0, 40, "a"), (40, 81, "b")], None),
    ],
)
def test_canonical_errors(scenes, expected):
    if expected is None:
        assert parse_timeline(_canonical(*scenes)).num_frames == 81
        return
    message = _error(_canonical(*scenes))
    for part in expected:
        assert part in message, message


def test_canonical_field_errors():
    assert "scene 1" in _error({"scenes": [{"start": 0, "caption": "a"}], "num_frames": 81})
    assert "lacks end" in _error({"scenes": [{"start": 0, "caption": "a"}], "num_frames": 81})
    assert "whole pixel frame" in _error(_canonical((0, 40.5, "a"), (40.5, 81, "b")))
    assert "77 or 81" in _error(_canonical((0, 80, "a"), num_frames=80))
    message = _error(_canonical((0, 81, "a")), num_frames=161)
    assert "num_frames=81" in message and "num_frames=161" in message
    message = _error('{"num_frames": 81, "scenes": [{"start": 0 "end": 81, "caption": "a"}]}')
    assert "line 1 column" in message and "Fix the JSON" in message


@pytest.mark.parametrize(
    "spec, expected",
    [
        ('"0": "a", "48": "b", "24": "c"', ["keyframe 3", '"24"', "increasing frame order"]),
        ('"0": "a", "40": "b", "-41": "c"', ["keyframe 3", "like keyframe 2", "only one caption"]),
        ('{"0": "a", "40": "b", "40": "c"}', ['"40" appears twice', "Remove or move one"]),
        ('"0": "a", "100": "b"', ["keyframe 2", "frame 100", "outside the video"]),
        ('"8": "a", "48": "b"', ["keyframe 1", 'keyframe at "0"']),
        ('"0": "a", "48.0": "b"', ["keyframe 2", "write 48"]),
        ('"0": "a", "48": ""', ["keyframe 2", "empty caption"]),
        ('"0": "a",\n"4x": "b"', ["keyframe 2 (line 2", "not a frame"]),
        ("{0: a\n48 b}", ["keyframe 2 (line 2", '"48": "caption"']),
        ('"0": "a", "48": "b', ["keyframe 2", "quotes are not closed"]),
    ],
)
def test_keyframe_errors(spec, expected):
    message = _error(spec, num_frames=81)
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize(
    "spec, kwargs, expected",
    [
        ("[0s-5s: a] [6s-8s: b]", {}, ["span 2", "[6s-8s: b]", "5s-6s", "Start it at 5s"]),
        ("[0s-5s: a] [4s-8s: b]", {}, ["span 2", "overlaps span 1", "start it at 5s"]),
        ("[0s-5s: a]\n[5s-8s: b]\n[8-9: c]", {}, ["span 3 (line 3", "[8-9: c]", "5s or 5.5s"]),
        ("[0s-5s: a] [5s-8s: ]", {}, ["span 2", "empty caption"]),
        ("[0s: a] [8s: b] [5s: c]", {}, ["span 3", "time order"]),
        ("[0s-5s: a] [5s-4s: b]", {}, ["span 2", "end time must be after the start"]),
        ("[1s-5s: a]", {}, ["span 1", "Start it at 0s"]),
        ("[0s-5s: a] and [5s-8s: b]", {}, ['"and"', "inside a span"]),
        ("[0s-5s: a] [5s-8s b]", {}, ["span 2", "[5s-8s b]", "[start-end: caption]"]),
        ("[0s: a] [5s: b]", {}, ["span 2", "no end", "num_frames"]),
        ("[0s-5s: a] [5s-10s: b]", {"num_frames": 81}, ["span 2", "10s", "num_frames=81", "End it at 5.0625s"]),
        ("[0s: a] [6s: b]", {"num_frames": 81}, ["span 2", "outside the video"]),
        ("0s-5s: a\n\n5s-8s b", {}, ["span 2 (line 3", "[start-end: caption]"]),
    ],
)
def test_seconds_errors(spec, kwargs, expected):
    message = _error(spec, **kwargs)
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize(
    "spec, kwargs, expected",
    [
        ("a | | c", {"num_frames": 81}, ["part 2", "empty caption"]),
        ("a | b | c", {"num_frames": 5}, ["3 captions", "2 latent frames", "at most 2"]),
        ("a | b", {}, ["equal-split", "num_frames"]),
        ('"0": "a", "48": "b"', {}, ["keyframe", "num_frames"]),
        ("a fox", {}, ["single-caption", "num_frames"]),
        ([["a", 2], ["b", -1]], {}, ["entry 2", '["b", -1]', "seconds > 0"]),
        ([["a", 2], {"text": "b", "seconds": 1}], {}, ["entry 2", '"caption" and "seconds"']),
        ([["a", 2], ["b", 1, 2]], {}, ["entry 2", '["caption", seconds]']),
        ([["a", 5], ["b", 5]], {"num_frames": 81}, ["entry 2", "10s", "num_frames=81"]),
        ({"Scenes": []}, {}, ["Unknown timeline object", '"scenes"']),
        ("{hello world}", {}, ["Unknown timeline syntax at line 1", "keyframes"]),
        ("   ", {}, ["empty"]),
        (42, {}, ["Cannot read a timeline from a int"]),
        ("a fox", {"num_frames": 80}, ["77 or 81"]),
        ("a fox", {"num_frames": 81, "fps": 0}, ["fps"]),
    ],
)
def test_other_errors(spec, kwargs, expected):
    message = _error(spec, **kwargs)
    for part in expected:
        assert part in message, message


def test_scene_type_errors():
    with pytest.raises(TimelineError, match="int pixel frame"):
        Scene(0.0, 4, "a")
    with pytest.raises(TimelineError, match="not a Scene"):
        Timeline([(0, 5, "a")], num_frames=5)
    with pytest.raises(TimelineError, match="no scenes"):
        Timeline([], num_frames=5)


def test_dataclass_replace_revalidates():
    import dataclasses

    tl = _tl([0, 9, 17])
    assert dataclasses.replace(tl, negative="blurry").latent_caption_indices() == tl.latent_caption_indices()
    with pytest.raises(TimelineError, match="77 or 81"):
        dataclasses.replace(tl, num_frames=80)


def test_paths_are_not_guessed_from_sentences():
    # A sentence is never read as a file, even one that mentions a file name in the middle.
    tl = parse_timeline("a fox reads notes.json on a laptop", num_frames=17)
    assert tl.scenes[0].caption == "a fox reads notes.json on a laptop"
    assert parse_timeline("a man opens config.json", num_frames=17).scenes[0].caption == "a man opens config.json"


def test_bracketed_tag_without_a_time_is_a_plain_caption():
    tl = parse_timeline("[cinematic] a fox runs: fast", num_frames=17)
    assert tl.scenes == [Scene(0, 17, "[cinematic] a fox runs: fast")]


def test_path_object_is_required_for_unusual_suffixes(tmp_path):
    spec = tmp_path / "story.timeline"
    spec.write_text("[0s-5s: a]", encoding="utf-8")
    assert parse_timeline(Path(spec)).num_frames == 81


def _random_timeline(rng):
    num_frames = 4 * rng.randint(2, 40) + 1
    cuts = sorted(rng.sample(range(4, num_frames - 4), rng.randint(0, min(5, (num_frames - 9) // 8))))
    bounds = [0]
    for cut in cuts:
        if cut - bounds[-1] >= 4:  # 4-frame scenes always own a latent
            bounds.append(cut)
    if num_frames - bounds[-1] < 4:
        bounds.pop()
    bounds.append(num_frames)
    captions = [rng.choice(["a fox", "snow", "a river", "night"]) for _ in bounds[:-1]]
    return _tl(bounds, captions)


def test_random_timelines_match_a_per_frame_majority_and_round_trip():
    import random
    from collections import Counter

    rng = random.Random(0)
    for _ in range(200):
        tl = _random_timeline(rng)
        frame_scene = [i for i, s in enumerate(tl.scenes) for _ in range(s.start, s.end)]
        expected = [frame_scene[0]]
        for i in range(1, tl.num_latents):
            votes = Counter(frame_scene[4 * i - 3 : 4 * i + 1]).most_common()
            best = max(n for _, n in votes)
            expected.append(min(s for s, n in votes if n == best))  # ties: the earlier scene
        assert tl.latent_caption_indices() == expected
        assert [tl.unique_captions()[u] for u in tl.latent_unique_indices()] == tl.latent_captions()
        keyframes = ", ".join(f'"{s.start}": "{s.caption}"' for s in tl.scenes)
        spans = " ".join(f"[{s.start / 16}s-{s.end / 16}s: {s.caption}]" for s in tl.scenes)
        durations = [[s.caption, (s.end - s.start) / 16] for s in tl.scenes]
        assert parse_timeline(tl.to_json()) == tl
        assert parse_timeline(keyframes, num_frames=tl.num_frames) == tl
        assert parse_timeline(spans) == tl
        assert parse_timeline(durations) == tl


def test_negative_prompt_rule_is_override_then_timeline_then_default():
    from framecap_core.timeline import DEFAULT_NEGATIVE, negative_prompt

    plain = parse_timeline("a fox", num_frames=17)
    own = parse_timeline({"fps": 16, "num_frames": 17, "negative": "blurry",
                          "scenes": [{"start": 0, "end": 17, "caption": "a fox"}]})
    assert negative_prompt(plain) == DEFAULT_NEGATIVE
    assert negative_prompt(own) == "blurry"
    assert negative_prompt(own, "") == "" and negative_prompt(plain, "dark") == "dark"
