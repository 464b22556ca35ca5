"""Offline prompt builder, split score, annotation templates and the ``framecap prompt`` CLI."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from framecap_core.cli import main
from framecap_core.errors import DatasetError, PromptBuildError
from framecap_core.prompting import (
    ANNOTATION_SYSTEM_INSTRUCTION,
    CAPTION_ASPECTS,
    AnnotationError,
    annotation_schema,
    build_timeline,
    parse_annotation,
    parse_annotation_answer,
    plan_scenes,
    score_split,
    split_story,
    standalone_caption,
    story_system_instruction,
    truncate_words,
)
from framecap_core.prompting.offline import (
    allocate_latents,
    event_opening,
    is_camera_only,
    strip_sequence_words,
)
from framecap_core.timeline import parse_timeline

VBENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "vbench2" / "Complex_Landscape.json"
# Measured mean split score of the offline backend on Complex_Landscape (30 prompts, 30 s videos): 0.878.
VBENCH_SCORE_FLOOR = 0.85

FOX = (
    "A red fox in a woolen scarf trots across a snowy meadow at dawn. She stops and sniffs the cold air, "
    "then she leaps onto a frozen pond. The camera slowly pans to the pine forest behind the pond. "
    "Finally, the fox curls up under a tree and falls asleep. Watercolor style, soft pastel colors."
)


# -- splitting ---------------------------------------------------------------------------------------------------------


def test_split_story_cuts_at_sentences_sequence_words_and_camera_moves():
    parts = split_story(FOX)
    texts = [e.text for e in parts.events]
    assert texts == [
        "A red fox in a woolen scarf trots across a snowy meadow at dawn.",
        "She stops and sniffs the cold air",
        "then she leaps onto a frozen pond.",
        "The camera slowly pans to the pine forest behind the pond.",
        "Finally, the fox curls up under a tree and falls asleep.",
    ]
    # Spans point back into the story.
    for event in parts.events:
        assert FOX[event.start : event.end].strip() == event.text
    assert parts.style == "Watercolor style, soft pastel colors"
    assert parts.subject == "A red fox in a woolen scarf"


def test_event_opening_classes():
    assert event_opening("Then the cat jumps onto the table.") == "strong"
    assert event_opening("As the camera moves downward, dew glistens.") == "strong"
    assert event_opening("The camera pans left to the harbor.") == "strong"
    assert event_opening("Its surface glistens like glass.") == "continue"
    assert event_opening("The street is empty and silent tonight.") == "weak"


def test_possessive_sentence_continues_and_short_detail_joins_neighbour():
    story = (
        "The camera glides over a wide mountain lake surrounded by tall dark pines under a grey sky. "
        "Its surface reflects the peaks like a mirror. "
        "A heron lands. "
        "The heron wades slowly through the reeds along the shore, hunting for small silver fish. "
        "Finally, the camera rises above the valley to show the whole lake at sunset."
    )
    texts = [e.text for e in split_story(story).events]
    assert len(texts) == 3
    assert texts[0].endswith("like a mirror.")  # possessive continuation joined
    assert texts[1].startswith("A heron lands.")  # 3-word detail joined the next (weak) sentence
    assert texts[2].startswith("Finally")


def test_sentence_splitting_edge_cases():
    texts = [
        e.text for e in split_story("Dr. Chen walks into the lab at St. Mary's hospital. She opens the fridge.").events
    ]
    assert texts == ["Dr. Chen walks into the lab at St. Mary's hospital.", "She opens the fridge."]
    texts = [
        e.text
        for e in split_story("A cat sleeps on a sofa\nA dog barks at the door\n\nRain falls on the window.").events
    ]
    assert texts == ["A cat sleeps on a sofa", "A dog barks at the door", "Rain falls on the window."]
    texts = [e.text for e in split_story("The price is 3.5 dollars. Then the man pays.").events]
    assert texts == ["The price is 3.5 dollars.", "Then the man pays."]


def test_standalone_captions_resolve_pronouns_restore_subject_and_add_style():
    parts = split_story(FOX)
    captions = [standalone_caption(e.text, subject=parts.subject, style=parts.style) for e in parts.events]
    assert (
        captions[1]
        == "The red fox in a woolen scarf stops and sniffs the cold air. Watercolor style, soft pastel colors."
    )
    assert captions[2].startswith("The red fox in a woolen scarf leaps onto a frozen pond.")
    assert captions[4].startswith("The red fox in a woolen scarf curls up")
    for caption in captions:
        assert caption.endswith("Watercolor style, soft pastel colors.")
        assert not caption.lower().startswith(("she ", "he ", "it "))


def test_named_subject_with_appositive_and_plural_subject():
    story = (
        "Detective Mara Quinn, a tall woman in a grey trench coat, walks into a smoky jazz bar. She sits at the "
        "counter and orders whiskey. Her eyes narrow as a stranger enters. Then Mara draws a silver pistol."
    )
    parts = split_story(story)
    assert parts.subject == "Detective Mara Quinn, a tall woman in a grey trench coat"
    captions = [standalone_caption(e.text, subject=parts.subject) for e in parts.events]
    assert captions[1] == (
        "Detective Mara Quinn, a tall woman in a grey trench coat, sits at the counter and orders whiskey."
    )
    assert captions[2] == "Detective Mara Quinn's eyes narrow as a stranger enters."
    assert captions[3] == "Detective Mara Quinn, a tall woman in a grey trench coat, draws a silver pistol."
    kids = split_story("Two kids in capes race down a hill. They tumble into the leaves, laughing loudly.")
    assert kids.subject == "Two kids in capes"
    assert standalone_caption(kids.events[1].text, subject=kids.subject).startswith("The two kids in capes tumble")
    # A capitalised plural that is not a name is not taken for the subject.
    assert split_story("Glaciers wind their way through the valley. Snow falls.").subject == ""


SEQUENCE_WORDS = (
    "then",
    "next",
    "finally",
    "afterwards",
    "after that",
    "meanwhile",
    "eventually",
    "suddenly",
    "later",
    "soon",
    "at last",
    "in the end",
)


def _starts_with_sequence_word(caption: str) -> bool:
    lowered = caption.lower()
    return any(re.match(rf"{re.escape(w)}\b", lowered) for w in SEQUENCE_WORDS)


def test_captions_drop_leading_sequence_words():
    timeline = build_timeline(
        "A red fox walks in snow. Then the camera pans to a frozen lake. Finally an owl lands.",
        seconds=12,
        backend="offline",
    )
    assert [s.caption for s in timeline.scenes] == [
        "A red fox walks in snow.",
        "The camera pans to a frozen lake.",
        "An owl lands.",
    ]
    story = (
        "Suddenly, a storm rolls over the harbour. Meanwhile a lighthouse keeper lights the lamp. After that the "
        "waves crash against the pier. Eventually the rain stops. Afterwards, gulls circle the masts. Then, at "
        "last, the sun breaks through the clouds. In the end the harbour lies calm. Soon boats sail out to sea."
    )
    captions = [s.caption for s in build_timeline(story, seconds=30, backend="offline").scenes]
    assert len(captions) == 8
    for caption in captions:
        assert not _starts_with_sequence_word(caption), caption
        assert caption[:1].isupper()
    assert captions[2] == "The waves crash against the pier."
    assert captions[5] == "The sun breaks through the clouds."


def test_sequence_words_that_are_part_of_the_sentence_stay():
    for text in (
        "Next to the river, a dog sleeps.",
        "Later that night, rain falls.",
        "First light breaks over the hills.",
        "At the end of the road, a house stands.",
        "After that storm passes, birds sing.",
    ):
        assert strip_sequence_words(text) == (text, False)
    assert strip_sequence_words("Soon after sunrise, the fox wakes.") == ("After sunrise, the fox wakes.", True)
    assert strip_sequence_words("Next, the fox runs.") == ("The fox runs.", True)


def test_subject_is_carried_into_scenes_that_refer_back_to_it():
    story = (
        "A girl in a yellow raincoat walks down a rainy street, then slowly turns toward a bakery window. "
        "The camera zooms in on her. Afterwards she waves at the baker. The camera follows her closely as she "
        "enters. Finally the camera pulls back. Watercolor style."
    )
    captions = [s.caption for s in build_timeline(story, seconds=20, backend="offline").scenes]
    assert captions == [
        "A girl in a yellow raincoat walks down a rainy street. Watercolor style.",
        # no subject of its own after "then": the main subject does it
        "The girl in a yellow raincoat slowly turns toward a bakery window. Watercolor style.",
        # the camera's object pronoun names the subject
        "The camera zooms in on the girl in a yellow raincoat. Watercolor style.",
        "The girl in a yellow raincoat waves at the baker. Watercolor style.",
        "The camera follows the girl in a yellow raincoat closely as she enters. Watercolor style.",
        # a camera move with nothing of its own to show carries what the scene before showed
        "The camera pulls back. The camera follows the girl in a yellow raincoat closely as she enters. "
        "Watercolor style.",
    ]
    # A camera move first in the story carries the main subject; one with its own content carries nothing.
    assert standalone_caption("Then the camera zooms in.", subject="A red fox in the snow") == (
        "The camera zooms in. The red fox in the snow."
    )
    assert (
        standalone_caption("Then the camera pans to a frozen lake.", subject="A red fox", previous="A red fox walks.")
        == "The camera pans to a frozen lake."
    )
    assert is_camera_only("Finally, the camera slowly pulls back to a wide shot.")
    assert not is_camera_only("The camera pans to a frozen lake.")
    # A plural after a sequence word is a new subject, not a verb: nothing is added.
    assert standalone_caption("Then birds fly over the lake.", subject="A red fox") == "Birds fly over the lake."


def test_vbench_captions_do_not_start_with_sequence_words():
    if not VBENCH.is_file():
        pytest.skip(f"no VBench-2.0 prompts at {VBENCH}")
    items = json.loads(VBENCH.read_text(encoding="utf-8"))
    openers = set()
    for item in items:
        for scene in build_timeline(item["prompt_en"], seconds=30, backend="offline").scenes:
            assert not _starts_with_sequence_word(scene.caption), scene.caption
            openers.add(scene.caption.split()[0])
    assert "The" in openers


def test_truncate_words_cuts_at_clause_end_and_respects_limit():
    text = "one two three four five six seven, eight nine ten eleven twelve"
    assert truncate_words(text, 20) == text
    assert truncate_words(text, 10) == "one two three four five six seven."
    # No clause end in reach: hard cut plus a period.
    assert truncate_words("a b c d e f g h i j", 4) == "a b c d."
    long = " ".join(f"w{i}" for i in range(300))
    assert len(truncate_words(long, 120).split()) == 120


def test_offline_captions_respect_max_tokens_including_style():
    story = " ".join(
        f"Then the knight rides past tower number {i} under heavy rain, with banners, torches, crowds, horses, "
        f"carts, merchants, children and dogs all around the muddy road as thunder rolls."
        for i in range(4)
    )
    story += " Oil painting style."
    timeline = build_timeline(story, seconds=10, backend="offline", max_caption_tokens=16)
    for scene in timeline.scenes:
        assert len(scene.caption.split()) <= 16
        assert scene.caption.endswith("Oil painting style.")


def test_allocate_latents_exact():
    # 21 latents, min 4 each: 13 spare shared 1:2 -> 4.33 and 8.67 -> 4 and 8, the last one to the larger remainder.
    assert allocate_latents([10, 20], 21, 4) == [8, 13]
    # Largest remainder goes to the earlier scene on ties.
    assert allocate_latents([1, 1, 1], 10, 1) == [4, 3, 3]
    with pytest.raises(ValueError):
        allocate_latents([1, 1, 1], 5, 2)


def test_offline_durations_follow_word_counts_on_the_latent_grid():
    short = "A boat drifts on the calm sea at dawn."
    long = (
        "Then a violent storm rolls in over the horizon, black clouds tower above the boat, lightning splits the "
        "sky, rain lashes the deck, and huge waves throw the little boat from crest to crest."
    )
    timeline = build_timeline(f"{short} {long}", seconds=10, backend="offline", min_scene_seconds=1.0)
    assert timeline.num_frames == 161
    first, second = timeline.scenes
    parts, events, counts = plan_scenes(f"{short} {long}", num_frames=161)
    words = [e.num_words for e in events]
    assert counts == allocate_latents(words, 41, 4)
    assert second.num_frames > 2 * first.num_frames
    for scene in timeline.scenes[1:]:
        assert (scene.start + 3) % 4 == 0  # starts on a latent boundary
    assert [(a, b) for a, b in timeline.scene_latent_spans()] == [(0, counts[0] - 1), (counts[0], 40)]


def test_offline_merges_events_when_the_video_is_too_short():
    story = ". ".join(f"Then scene number {i} happens with the blue car" for i in range(12)) + "."
    timeline = build_timeline(story, seconds=2, backend="offline", min_scene_seconds=1.0)
    # 33 latents, 4 per scene at least -> at most 8 scenes; every sentence still present.
    assert len(timeline.scenes) <= 8
    joined = " ".join(s.caption for s in timeline.scenes)
    for i in range(12):
        assert f"scene number {i} " in joined.lower()
    assert min(s.num_frames for s in timeline.scenes[1:]) >= 16


def test_offline_is_deterministic_and_feeds_the_timeline_parser():
    a = build_timeline(FOX, seconds=12, backend="offline")
    b = build_timeline(FOX, seconds=12, backend="offline")
    assert a.to_json() == b.to_json()
    assert parse_timeline(a.to_json()).to_dict() == a.to_dict()
    assert a.num_frames == 193 and a.scenes[0].start == 0 and a.scenes[-1].end == 193


def test_build_timeline_rejects_bad_input():
    with pytest.raises(PromptBuildError, match="empty"):
        build_timeline("   ", seconds=5, backend="offline")
    with pytest.raises(PromptBuildError, match="offline"):
        build_timeline(FOX, seconds=5, backend="magic")
    with pytest.raises(PromptBuildError, match="max_caption_tokens"):
        build_timeline(FOX, seconds=5, backend="offline", max_caption_tokens=0)
    with pytest.raises(PromptBuildError, match="min_scene_seconds"):
        build_timeline(FOX, seconds=5, backend="offline", min_scene_seconds=9)


def test_single_sentence_story_is_one_scene():
    timeline = build_timeline("A lighthouse stands on a cliff at night", seconds=3, backend="offline")
    assert len(timeline.scenes) == 1
    assert timeline.scenes[0].caption == "A lighthouse stands on a cliff at night."


# -- score ---------------------------------------------------------------------------------------------------------


def test_score_split_known_cases():
    events = ["A cat sleeps on the warm sofa.", "A dog barks at the door loudly.", "Rain falls on the window."]
    story = " ".join(events)
    spans, cursor = [], 0
    for event in events:
        start = story.index(event, cursor)
        spans.append((start, start + len(event)))
        cursor = start + len(event)
    perfect = score_split(story, spans, events)
    assert (perfect.recall, perfect.precision, perfect.score) == (1.0, 1.0, 1.0)
    whole = score_split(story, [(0, len(story))], events)
    assert (whole.recall, whole.precision) == (1.0, 0.0)
    # First two events in one scene: recall 1, precision 1/2 (the lumped scene holds two).
    lumped = score_split(story, [(0, spans[1][1]), spans[2]], events)
    assert (lumped.recall, lumped.precision) == (1.0, 0.5)
    # Second event cut in half: it is in no single scene, and the shred scene holds none.
    middle = (spans[1][0] + spans[1][1]) // 2
    cut = score_split(story, [spans[0], (spans[1][0], middle), (middle, spans[1][1]), spans[2]], events)
    assert cut.recall == pytest.approx(2 / 3)
    assert cut.precision == pytest.approx(3 / 4)


@pytest.mark.skipif(not VBENCH.is_file(), reason="VBench-2.0 prompts not present in ../shared/data")
def test_offline_split_score_on_vbench_complex_landscape():
    data = json.loads(VBENCH.read_text(encoding="utf-8"))
    scores = []
    for item in data:
        story = item["prompt_en"]
        _, events, _ = plan_scenes(story, num_frames=481)
        scores.append(score_split(story, [(e.start, e.end) for e in events], item["auxiliary_info"]).score)
    assert len(scores) == 30
    assert sum(scores) / len(scores) >= VBENCH_SCORE_FLOOR


# -- annotation template ----------------------------------------------------------------------------------------------


def test_both_instructions_name_the_five_aspects():
    story = story_system_instruction(seconds=30)
    for aspect in CAPTION_ASPECTS:
        assert aspect.split()[0] in story
        assert aspect.split()[0] in ANNOTATION_SYSTEM_INSTRUCTION
    assert "JSON only" in story and "JSON only" in ANNOTATION_SYSTEM_INSTRUCTION
    assert "0 to 30 seconds" in story


def test_parse_annotation_expands_shared_captions():
    answer = {
        "segments": [
            {"first_frame": 0, "last_frame": 2, "caption": "A man  walks."},
            {"first_frame": 3, "last_frame": 3, "caption": "A man sits."},
        ],
        "video_caption": "A man walks, then sits.",
    }
    assert parse_annotation(json.dumps(answer), 4) == ["A man walks."] * 3 + ["A man sits."]
    assert parse_annotation_answer(answer, 4)[1] == "A man walks, then sits."
    schema = annotation_schema(4)
    item = schema["properties"]["segments"]["items"]["properties"]
    assert item["last_frame"]["maximum"] == 3
    assert schema["required"] == ["segments", "video_caption"]


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        (
            [{"first_frame": 0, "last_frame": 1, "caption": "a"}, {"first_frame": 3, "last_frame": 3, "caption": "b"}],
            "gap",
        ),
        (
            [{"first_frame": 0, "last_frame": 2, "caption": "a"}, {"first_frame": 2, "last_frame": 3, "caption": "b"}],
            "overlap",
        ),
        ([{"first_frame": 0, "last_frame": 1, "caption": "a"}], "cover every frame"),
        ([{"first_frame": 0, "last_frame": 3, "caption": " "}], "empty caption"),
        ([{"first_frame": 0, "last_frame": 9, "caption": "a"}], "last_frame"),
        ([{"first_frame": "0", "last_frame": 3, "caption": "a"}], "integers"),
    ],
)
def test_parse_annotation_errors(segments, message):
    with pytest.raises(AnnotationError, match=message) as info:
        parse_annotation({"segments": segments, "video_caption": "x"}, 4)
    assert isinstance(info.value, PromptBuildError) and isinstance(info.value, DatasetError)


def test_parse_annotation_bad_json():
    with pytest.raises(AnnotationError, match="not valid JSON"):
        parse_annotation("{segments: nope", 3)


def test_importing_prompting_does_not_import_google_genai_torch_or_pil():
    code = "import sys, framecap_core.prompting; print(any(m in sys.modules for m in ('google.genai', 'torch', 'PIL')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- CLI -------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


def test_cli_offline_writes_canonical_json_and_prints_table(tmp_path, capsys, no_key):
    out = tmp_path / "sub" / "timeline.json"
    rc = main(["prompt", FOX, "--seconds", "12", "--backend", "offline", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    expected = build_timeline(FOX, seconds=12, backend="offline")
    assert json.loads(out.read_text()) == expected.to_dict()
    assert parse_timeline(str(out)).to_dict() == expected.to_dict()
    assert "193 frames" in printed and "caption" in printed
    assert f"{len(expected.scenes)} scenes" in printed
    assert "0.00-" in printed
    assert list(tmp_path.joinpath("sub").iterdir()) == [out]  # atomic write left no temp file


def test_cli_reads_story_from_file_and_stdin(tmp_path, capsys, monkeypatch, no_key):
    story_file = tmp_path / "story.txt"
    story_file.write_text(FOX, encoding="utf-8")
    assert main(["prompt", str(story_file), "--seconds", "12", "--backend", "offline", "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(sys, "stdin", io.StringIO(FOX))
    assert main(["prompt", "-", "--seconds", "12", "--backend", "offline", "--json"]) == 0
    from_stdin = json.loads(capsys.readouterr().out)
    assert from_file == from_stdin == build_timeline(FOX, seconds=12, backend="offline").to_dict()


def test_cli_auto_backend_without_key_uses_offline(capsys, no_key):
    assert main(["prompt", FOX, "--seconds", "6", "--json"]) == 0
    captured = capsys.readouterr()
    assert "offline" in captured.err
    assert json.loads(captured.out)["num_frames"] == 97


def test_cli_gemini_without_key_fails_with_a_clear_message(capsys, no_key):
    assert main(["prompt", FOX, "--backend", "gemini"]) == 1
    err = capsys.readouterr().err
    assert "GEMINI_API_KEY" in err and "GOOGLE_API_KEY" in err and "offline" in err


def test_cli_empty_story_and_help(capsys, monkeypatch, no_key):
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    assert main(["prompt", "-", "--backend", "offline"]) == 1
    assert "empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["prompt", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--seconds", "--backend", "--max-caption-tokens", "--timeout", "--retries", "-o", "GEMINI_API_KEY"):
        assert flag in text
