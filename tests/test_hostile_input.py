"""Hostile and careless input: bounded work, one-line errors, nothing silently wrong, no leftovers, fallbacks.

Every case asserts what the user sees: a :class:`FrameCapError` (on the command line one ``framecap: error: ...``
line and a non-zero exit, never a traceback) raised before any heavy work, or the cleanup / fallback behaviour.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framecap_core.cli import main
from framecap_core.errors import FrameCapError, OutputError, PromptBuildError, TimelineError
from framecap_core.limits import MAX_CAPTION_CHARS, MAX_NUM_FRAMES, MAX_STORY_CHARS

ROOT = Path(__file__).resolve().parents[1]


def cli_error(capsys, *argv: str) -> str:
    """Run ``framecap ARGV`` in-process; assert a non-zero exit and exactly one ``framecap: error:`` line."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("framecap: error: "), err
    return err[0]


def cli_subprocess_error(*argv: str, stdin: bytes | None = None, limit_s: float = 60) -> str:
    """Run ``python -m framecap_core ARGV`` in a fresh process with a time limit; assert one error line, no
    traceback, a non-zero exit."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framecap_core", *argv], input=stdin, capture_output=True,
                          timeout=limit_s, cwd=ROOT)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("framecap: error: "), err
    assert time.monotonic() - start < limit_s
    return lines[0]


# --------------------------------------------------------------------------------------------------------------------
# 1. Unbounded work from one number or one string: refused before any work, text processing near-linear


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "--timeline", "a fox", "--seconds", "1e9", "--dry-run"], ["--seconds", "9601"]),
        (["prompt", "a fox runs", "--seconds", "1e9", "--backend", "offline"], ["--seconds", "9601"]),
        (["prompt", "a fox runs", "--seconds", "1e308", "--backend", "offline"], ["--seconds"]),
        (["generate", "--timeline", '[["a fox", 1e300]]', "--dry-run"], ["entry 1", "9601"]),
        (["generate", "--timeline", '{"num_frames": 400000001, "scenes": [{"start": 0, "end": 400000001, '
                                    '"caption": "a fox"}]}', "--dry-run"], ["num_frames=400000001", "9601"]),
        (["generate", "--timeline", "[0s-99999999999s: a fox]", "--dry-run"], ["span 1", "9601"]),
        (["prompt", "a fox runs", "--fps", "1000000", "--backend", "offline"], ["--fps", "120"]),
        (["prompt", "a fox runs", "--max-caption-tokens", "10000000", "--backend", "offline"],
         ["--max-caption-tokens", "1000"]),
        (["prompt", "a fox runs", "--retries", "1000000000", "--backend", "gemini"], ["--retries", "10"]),
        (["prompt", "a fox runs", "--timeout", "1e12", "--backend", "gemini"], ["--timeout"]),
    ],
)
def test_huge_numbers_are_refused_at_once(capsys, argv, words):
    line = cli_error(capsys, *argv)
    for word in words:
        assert word in line, line


def test_huge_length_in_a_fresh_process_is_one_line_within_seconds():
    line = cli_subprocess_error("generate", "--timeline", "a fox", "--seconds", "1e9", "--dry-run", limit_s=120)
    assert "--seconds" in line


def test_a_caption_past_the_limit_is_refused_before_anything_is_drawn(capsys):
    caption = "a red fox " * (MAX_CAPTION_CHARS // 10 + 1)
    line = cli_error(capsys, "generate", "--timeline", caption, "--seconds", "5", "--dry-run")
    assert f"{MAX_CAPTION_CHARS:,}" in line and "Scene 1" in line
    with pytest.raises(TimelineError, match="negative prompt"):
        from framecap_core.timeline import Scene, Timeline

        Timeline([Scene(0, 81, "a fox")], num_frames=81, negative="x" * (MAX_CAPTION_CHARS + 1))


def test_a_story_past_the_limit_is_refused(capsys, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("A fox runs through the snow. " * (MAX_STORY_CHARS // 29 + 1))
    line = cli_error(capsys, "prompt", str(story), "--backend", "offline")
    assert f"{MAX_STORY_CHARS:,}" in line
    from framecap_core.prompting import build_timeline

    with pytest.raises(PromptBuildError, match="limit"):
        build_timeline("x" * (MAX_STORY_CHARS + 1), seconds=5, backend="gemini")  # before any key or request


def test_too_many_scenes_are_refused_while_parsing():
    many = "\n".join(f'"{i}": "scene {i}"' for i in range(0, 4 * 3000, 4))
    with pytest.raises(TimelineError, match="more than 2401 scenes"):
        from framecap_core.timeline import parse_timeline

        parse_timeline(many, num_frames=MAX_NUM_FRAMES)
    with pytest.raises(TimelineError, match="nested too deeply"):
        parse_timeline("[" * 100000 + "]" * 100000, num_frames=81)


def _random_story(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = "fox runs through snow river lake forest bird sings sky moon night falls dawn wind tree".split()
    out, size = [], 0
    while size < chars:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14))).capitalize() + ". "
        if rng.random() < 0.3:
            sentence = "Then " + sentence[0].lower() + sentence[1:]
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:chars]


def _seconds_for(story: str) -> float:
    from framecap_core.prompting import offline_timeline

    best = float("inf")
    for _ in range(2):
        start = time.process_time()
        offline_timeline(story, seconds=30)
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize(
    "unit",
    [
        "A fox runs through the snow. Then it jumps. ",
        "Dr. ",  # abbreviations: one growing sentence
        "A fox runs far away, then ",  # one sentence of many clauses
        "a, then !!!!!!!!!!!!!!!!! ",
        "The big red fox runs quickly through the deep white snow at dawn today. Hi. ",  # short details to merge
    ],
)
def test_offline_prompt_builder_is_near_linear(unit):
    """Ten times the text may cost at most ~25 times the time (quadratic would be 100 times)."""
    small = (unit * (8000 // len(unit) + 1))[:8000]
    large = (unit * (80000 // len(unit) + 1))[:80000]
    ratio = _seconds_for(large) / max(_seconds_for(small), 1e-3)
    assert ratio < 25, ratio


def test_merge_shortest_matches_the_pairwise_definition():
    """The heap merge gives exactly the events of merging the adjacent pair with the fewest words, one at a time."""
    from framecap_core.prompting.offline import StoryEvent, _merge_shortest, split_story

    def merge_once(events, story):
        best = min(range(len(events) - 1), key=lambda i: events[i].num_words + events[i + 1].num_words)
        a, b = events[best], events[best + 1]
        return events[:best] + [StoryEvent(story[a.start : b.end].strip(), a.start, b.end)] + events[best + 2 :]

    rng = random.Random(3)
    for trial in range(60):
        story = _random_story(rng.randint(100, 3000), seed=trial)
        if trial % 2:
            story = story.replace(". Then", ", and then")
        events = split_story(story).events
        for count in {1, 2, max(1, len(events) // 2), len(events)}:
            expected = list(events)
            while len(expected) > count:
                expected = merge_once(expected, story)
            assert _merge_shortest(list(events), story, count) == expected


def test_offline_caption_is_cut_to_the_caption_limit():
    from framecap_core.prompting import offline_timeline

    timeline = offline_timeline("x" * 50000, seconds=5)  # one enormous "word"
    assert len(timeline.scenes[0].caption) <= MAX_CAPTION_CHARS


# --------------------------------------------------------------------------------------------------------------------
# 2 and 3. One-line messages instead of tracebacks; the output path checked before any work


@pytest.mark.parametrize("flag", ["-o"])
def test_prompt_output_path_that_cannot_be_written(capsys, tmp_path, flag):
    folder = tmp_path / "a folder"
    folder.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for path, words in [
        (folder, "is a folder"),
        ("/proc/framecap/timeline.json", "cannot be written"),
        (a_file / "timeline.json", "is a file, not a folder"),
    ]:
        line = cli_error(capsys, "prompt", "A fox runs.", "--backend", "offline", flag, str(path))
        assert words in line and "-o" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a folder", "file.txt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_prompt_output_in_a_read_only_folder(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        line = cli_error(capsys, "prompt", "A fox runs.", "--backend", "offline", "-o", str(folder / "t.json"))
        assert "cannot be written" in line
    finally:
        folder.chmod(0o755)


def test_output_check_before_the_gemini_request(capsys, tmp_path, monkeypatch):
    """A bad -o is reported before the (paid, slow) request: no key is even looked up."""
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    line = cli_error(capsys, "prompt", "A fox runs.", "--backend", "gemini", "-o", str(tmp_path))
    assert "is a folder" in line


def test_atomic_write_errors_are_one_line(tmp_path):
    from framecap_core.fileio import atomic_write_text

    with pytest.raises(OutputError, match="Cannot write"):
        atomic_write_text("/proc/framecap-test/x.json", "{}")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputError, match="Cannot write"):
        atomic_write_text(tmp_path / "dir.json", "{}")


# --------------------------------------------------------------------------------------------------------------------
# 4. Silent wrong results


@pytest.mark.parametrize("name", ["stroy.txt", "notes/story", "story.md", "C:\\stories\\fox"])
def test_a_mistyped_story_file_name_is_not_taken_as_the_story(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    line = cli_error(capsys, "prompt", name, "--backend", "offline")
    assert "does not exist" in line and repr(name) in line


def test_one_word_stories_and_real_files_still_work(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["prompt", "Fireworks.", "--backend", "offline", "--json"]) == 0
    assert "Fireworks" in capsys.readouterr().out
    (tmp_path / "story.txt").write_bytes("\ufeffA fox runs. Then it leaps into the river.".encode())
    assert main(["prompt", "story.txt", "--backend", "offline", "--json"]) == 0
    out = capsys.readouterr().out
    assert "\ufeff" not in out and "fox" in out
    line = cli_error(capsys, "prompt", str(tmp_path), "--backend", "offline")
    assert "is a folder" in line


def test_non_utf8_input_is_refused_not_copied(capsys, tmp_path, monkeypatch):
    line = cli_subprocess_error("prompt", "-", "--backend", "offline", stdin=b"A fox \xff\xfe runs.")
    assert "Standard input is not UTF-8" in line and "0xff" in line
    (tmp_path / "latin1.txt").write_bytes("Un renard très rapide court.".encode("latin-1"))
    line = cli_error(capsys, "prompt", str(tmp_path / "latin1.txt"), "--backend", "offline")
    assert "not UTF-8" in line
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(os.urandom(4 * MAX_STORY_CHARS + 10))))
    line = cli_error(capsys, "prompt", "-", "--backend", "offline")
    assert "bytes" in line


@pytest.mark.parametrize("seconds", ["0", "0.01", "-1", "nan"])
def test_a_video_of_no_length_is_refused(capsys, seconds):
    for argv in (["generate", "--timeline", "a fox", "--seconds", seconds, "--dry-run"],
                 ["prompt", "a fox", "--seconds", seconds, "--backend", "offline"]):
        line = cli_error(capsys, *argv)
        assert "--seconds" in line, line


# --------------------------------------------------------------------------------------------------------------------
# 5. Leftovers


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    from framecap_core.fileio import atomic_write_text, temporary_name_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    stale_file = tmp_path / f".video.mp4.{pid}-abcd1234.tmp.mp4"
    stale_dir = tmp_path / f".step-00000010.{pid}-abcd1234.tmp"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    mine = tmp_path / (temporary_name_prefix(tmp_path / "other.mp4") + "abcd1234.tmp.mp4")  # this live process
    mine.write_bytes(b"being written")
    user_file = tmp_path / ".config.2024-draft"
    user_file.write_text("keep")
    atomic_write_text(tmp_path / "video.timeline.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, user_file.name, "video.timeline.json"])


def test_a_set_of_outputs_is_replaced_together_or_not_at_all(tmp_path):
    from framecap_core.fileio import atomic_paths, remove_stale_temporaries

    names = [tmp_path / "v.mp4", tmp_path / "v.storyboard.png", tmp_path / "v.timeline.json"]
    for path in names:
        path.write_text("old")
    with pytest.raises(RuntimeError), atomic_paths(names) as tmps:
        tmps[0].write_text("new")
        raise RuntimeError("killed while drawing the storyboard")
    assert [p.read_text() for p in names] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in names)
    with atomic_paths(names) as tmps:
        for tmp in tmps:
            tmp.write_text("new")
    assert [p.read_text() for p in names] == ["new"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in names)

    # A process killed after the commit record, between renames: the next write finishes the set.
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    staging = tmp_path / f".v.mp4.{dead}-abcd1234.set"
    staging.mkdir()
    for path in names[1:]:
        (staging / path.name).write_text("newer")
    (staging / "COMMIT").write_text("".join(p.name + "\n" for p in names))
    names[0].write_text("newer")  # already renamed before the kill
    remove_stale_temporaries(tmp_path)
    assert [p.read_text() for p in names] == ["newer"] * 3
    assert not staging.exists()
    # Killed before the commit record: the set is dropped, the old files stay.
    staging.mkdir()
    (staging / "v.mp4").write_text("half")
    remove_stale_temporaries(tmp_path)
    assert [p.read_text() for p in names] == ["newer"] * 3
    assert not staging.exists()


# --------------------------------------------------------------------------------------------------------------------
# 6. Messages name the user's knob


def test_messages_name_the_command_line_flag(capsys):
    line = cli_error(capsys, "prompt", "a fox", "--seconds", "inf", "--backend", "offline")
    assert line.startswith("framecap: error: --seconds ")


def test_every_frame_cap_error_takes_a_field():
    error = FrameCapError("shift must be finite", field="shift")
    assert error.field == "shift" and str(error) == "shift must be finite"


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--width", "100000"], ["--width=100000", "2048"]),
        (["--height", "-16"], ["--height"]),
        (["--shift", "inf"], ["--shift must be", "finite"]),
        (["--guidance", "nan"], ["--guidance"]),
        (["--steps", "1000000"], ["--steps=1000000", "1000"]),
        (["--window", "100000001"], ["--window="]),
        (["--window-batch-size", "1000000000"], ["--window-batch-size="]),
        (["--df-step", "1000", "--steps", "1000"], ["--df-step=1000", "20000"]),
        (["--seed", "-5"], ["--seed"]),
        (["--fps", "100000"], ["--fps"]),
    ],
)
def test_generate_settings_out_of_range_name_the_flag(capsys, flags, words):
    line = cli_error(capsys, "generate", "--timeline", "a fox", "--seconds", "600", "--dry-run", *flags)
    for word in words:
        assert word in line, line


@pytest.mark.parametrize("seed", [2**63, 2**64 - 1, 2**64, 2**64 + 7, 10**30])
def test_any_seed_is_taken_modulo_2_64(seed):
    import torch

    from framecap_core.pipeline import GenerationSettings

    settings = GenerationSettings(seed=seed).validate()
    assert settings.seed == seed % 2**64
    torch.Generator().manual_seed(settings.seed)  # no "Overflow when unpacking long long"
    assert GenerationSettings(seed=12345).validate().seed == 12345  # seeds below 2**64 are used as given


@pytest.mark.parametrize(
    "out, words",
    [
        ("{tmp}/folder.mp4", "is a folder"),
        ("/proc/framecap/video.mp4", "cannot be written"),
        ("{tmp}/file.txt/video.mp4", "is a file, not a folder"),
        ("{tmp}/video.timeline.json.mp4", None),  # fine: only checks, writes nothing
    ],
)
def test_generate_checks_its_output_before_loading_the_model(capsys, tmp_path, monkeypatch, out, words):
    import framecap_core.models as models

    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder.mp4").mkdir()

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(models, "load_wan", no_loading)
    monkeypatch.setattr(models, "resolve_model_source", no_loading)
    argv = ["generate", "--model", "toy", "--timeline", "a fox", "--seconds", "1", "--quiet",
            "--out", out.format(tmp=tmp_path)]
    if words is None:
        with pytest.raises(AssertionError, match="model was loaded"):
            main(argv)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.mp4"]
        return
    line = cli_error(capsys, *argv)
    assert "--out" in line and words in line, line


def test_storyboard_of_the_longest_timeline_with_the_longest_captions_is_bounded():
    import numpy as np

    from framecap_core.limits import MAX_NUM_LATENTS
    from framecap_core.timeline import Scene, Timeline
    from framecap_core.video import render_storyboard

    n = MAX_NUM_FRAMES
    captions = ["word " * (MAX_CAPTION_CHARS // 5 - 1), "x" * MAX_CAPTION_CHARS]
    scenes = [Scene(0 if i == 0 else 4 * i - 3, n if i == MAX_NUM_LATENTS - 1 else 4 * i + 1, captions[i % 2])
              for i in range(MAX_NUM_LATENTS)]
    timeline = Timeline(scenes, num_frames=n)
    start = time.monotonic()
    image = render_storyboard(timeline, window_spans=[(i, i + 1) for i in range(MAX_NUM_LATENTS)],
                              scene_frames=[np.zeros((16, 16, 3), np.uint8)] * MAX_NUM_LATENTS,
                              settings={"model": "m" * MAX_CAPTION_CHARS})
    assert image.size[0] == 1600 and image.size[1] < 8000
    assert time.monotonic() - start < 60


# --------------------------------------------------------------------------------------------------------------------
# 2. A damaged model folder, an unsafe CLIP folder: one message, not a library's chained tracebacks


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from framecap_core.testing import save_tiny_wan

    return save_tiny_wan(tmp_path_factory.mktemp("tiny"), text_len=8)["diffusers"]


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "bad config"])
@pytest.mark.parametrize("component, stem", [("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                                             ("text_encoder", "model")])
def test_a_damaged_file_in_a_model_folder_is_one_message(tmp_path, tiny_folder, capsys, damage, component, stem):
    import shutil

    from framecap_core.errors import ModelLoadError
    from framecap_core.models import load_wan

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    weights = folder / component / f"{stem}.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "random":
        weights.write_bytes(random.Random(0).randbytes(4096))
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        (folder / component / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as info:
        load_wan(folder, device="cpu")
    message = str(info.value)
    assert "\n" not in message and component in message.replace("text encoder", "text_encoder").replace("VAE", "vae")
    line = cli_error(capsys, "generate", "--model", str(folder), "--timeline", "a fox", "--seconds", "1",
                     "--out", str(tmp_path / "out" / "v.mp4"), "--quiet")
    assert str(folder) in line
    assert not (tmp_path / "out").exists()


def test_eval_clip_folder_with_pickle_weights_is_refused_without_loading_them(tmp_path, capsys, monkeypatch):
    import torch

    from framecap_core.errors import ModelLoadError
    from framecap_core.metrics import ClipEmbedder

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle")

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(ModelLoadError, match="safetensors only"):
        ClipEmbedder(tmp_path)
    videos = tmp_path / "videos"
    videos.mkdir()
    line = cli_error(capsys, "eval", str(videos), "--embedder", f"clip:{tmp_path}")
    assert "safetensors only" in line


# --------------------------------------------------------------------------------------------------------------------
# 4. Captions that encode as nothing; non-finite latents


def test_an_emoji_only_caption_is_refused_on_the_toy_model():
    from framecap_core.errors import ConfigError
    from framecap_core.models import load_text_encoder
    from framecap_core.text import encode_captions

    encoder, tokenizer = load_text_encoder("toy")
    for caption in ["🦊🌲❄️", "un renard roux"]:
        with pytest.raises(ConfigError, match="no word the text encoder's tokenizer knows.*circle"):
            encode_captions(encoder, tokenizer, ["a red circle", caption], text_len=16)
    assert encode_captions(encoder, tokenizer, ["a red circle 🦊", ""], text_len=16).shape[0] == 2


def test_non_finite_latents_are_not_decoded_silently():
    import torch

    from framecap_core.backend import decode_latents
    from framecap_core.errors import NumericalError
    from framecap_core.testing import make_tiny_vae

    vae = make_tiny_vae()
    channels = vae.config.z_dim
    latents = torch.zeros(channels, 5, 4, 4)
    latents[0, 1:3, 0, 0] = float("nan")
    latents[1, 4, 1, 1] = float("inf")
    mean, std = torch.zeros(channels), torch.ones(channels)
    with pytest.raises(NumericalError, match=r"latent frames 1-2, 4"):
        decode_latents(vae, latents, mean, std)


# --------------------------------------------------------------------------------------------------------------------
# Training: --set by field type, a cache of another size, damaged checkpoints, interrupted saves


@pytest.mark.parametrize(
    "override, words",
    [
        ("learning_rate=abc", ["--set learning_rate=abc", "a number", "2e-5"]),
        ("learning_rate=nan", ["a finite number"]),
        ("max_steps=ten", ["a whole number"]),
        ("max_steps=2.5", ["a whole number"]),
        ("gradient_checkpointing=maybe", ["true or false"]),
        ("df_step_size_range=[0,abc]", ["list of numbers"]),
        ("height=100000", ["height=100000", "2048"]),
        ("window_latents=1000000", ["window_latents"]),
    ],
)
def test_training_overrides_are_read_by_type(override, words):
    from framecap_core.errors import ConfigError
    from framecap_core.training import TrainConfig
    from framecap_core.training.config import apply_overrides

    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(apply_overrides({}, [override]))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_training_overrides_keep_their_meaning():
    from framecap_core.training import TrainConfig
    from framecap_core.training.config import apply_overrides

    config = TrainConfig.from_dict(apply_overrides({}, [
        "learning_rate=2e-5", "lora_rank=32", "max_steps=1e3", "resume=latest", "gradient_checkpointing=true",
        "df_step_size_range=[0,0.2]", "lora_targets=to_q,to_k", "lora_alpha=null", "output_dir=123",
    ]))
    assert (config.learning_rate, config.lora_rank, config.max_steps, config.resume) == (2e-5, 32, 1000, "latest")
    assert config.gradient_checkpointing is True and config.df_step_size_range == [0.0, 0.2]
    assert config.lora_targets == ["to_q", "to_k"] and config.lora_alpha is None and config.output_dir == "123"
    with pytest.raises(FrameCapError, match="learning_rate must be a finite number"):
        TrainConfig.from_dict({"learning_rate": "abc"})  # a config file with a string where a number belongs


def test_finetune_script_reports_a_bad_override_in_one_line(tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"cache_dir": "x", "output_dir": "y"}')
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "finetune.py"), "--config", str(config), "--set",
                           "learning_rate=abc"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "learning_rate=abc" in lines[0], proc.stderr


def _two_checkpoints(root: Path):
    import torch

    from framecap_core.testing import make_tiny_transformer
    from framecap_core.training import TrainConfig, save_checkpoint

    config = TrainConfig(cache_dir="c", output_dir=str(root), report_to="none", export_format="none",
                         keep_checkpoints=0)
    model = make_tiny_transformer(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    paths = []
    for step in (3, 6):
        loss = sum((p.float() ** 2).sum() for p in model.parameters())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        paths.append(save_checkpoint(root, step, model, optimizer, config))
    return config, model, optimizer, paths


@pytest.mark.parametrize("damage", ["truncated model", "broken state.json", "missing optimizer", "random optimizer"])
def test_resume_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    import torch

    from framecap_core.errors import ConfigError
    from framecap_core.testing import make_tiny_transformer
    from framecap_core.training import load_checkpoint
    from framecap_core.training.loop import _resume

    config, _, _, (older, newest) = _two_checkpoints(tmp_path)
    if damage == "truncated model":
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "broken state.json":
        (newest / "state.json").write_text('{"step": 6, ')
    elif damage == "missing optimizer":
        (newest / "optimizer.safetensors").unlink()
    else:
        (newest / "optimizer.safetensors").write_bytes(random.Random(1).randbytes(1000))

    fresh = make_tiny_transformer(1)
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(ConfigError, match="is damaged") as info:
        load_checkpoint(newest, fresh, optimizer)
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[n], p) for n, p in fresh.named_parameters())  # nothing half-loaded

    lines: list[str] = []
    step, state = _resume(dataclasses.replace(config, resume="latest"), tmp_path, fresh, optimizer, lines.append)
    assert step == 3 and state["step"] == 3
    assert any("step-00000006 is damaged" in line and "falling back" in line for line in lines), lines
    assert any(str(older) in line for line in lines), lines


def test_killed_checkpoint_saves_are_removed_at_the_next_save(tmp_path):
    from framecap_core.training import save_checkpoint

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    root = tmp_path / "checkpoints"
    root.mkdir()
    leftovers = [root / f".step-00000003.{dead}-abcd1234.tmp", root / ".step-00000003.k2j4h5g6"]  # this and older
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    config, model, optimizer, paths = _two_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003", "step-00000006"]
    save_checkpoint(tmp_path, 9, model, optimizer, config)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003", "step-00000006", "step-00000009"]


def test_training_refuses_a_latent_cache_of_another_size(tmp_path):
    import torch

    from framecap_core.data import CacheWriter
    from framecap_core.errors import ConfigError
    from framecap_core.training import TrainConfig, train

    with CacheWriter(tmp_path / "cache", settings={"height": 64, "width": 64}) as writer:
        writer.add("clip0", torch.zeros(16, 6, 8, 8), torch.zeros(1, 8, 32), [0] * 6, ["a red circle"])
    config = TrainConfig(cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "run"), height=128, width=128,
                         window_latents=4, report_to="none", export_format="none")
    with pytest.raises(ConfigError, match=r"built at 64x64.*trains at 128x128"):
        train(config, transformer=object(), progress=False, log=lambda s: None)


# --------------------------------------------------------------------------------------------------------------------
# The same bounds behind the ComfyUI nodes, and a few more command-line cases


def test_nodes_refuse_huge_stories_and_timelines_at_once():
    from nodes.timeline_nodes import FrameCapPromptBuilder, FrameCapTimeline

    start = time.monotonic()
    with pytest.raises(PromptBuildError, match="limit"):
        FrameCapPromptBuilder().build("A fox runs. " * 20000, 6.0, 16, "offline", "gemini-2.5-pro")
    with pytest.raises(TimelineError, match="more than 2401 scenes"):
        FrameCapTimeline().parse("a|" * 5000, 6.0, 16)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    "argv, words",
    [
        (["prompt", "", "--backend", "offline"], "The story is empty"),
        (["generate", "--timeline", "a", "--seconds", "1", "--lora-scale", "nan", "--model", "toy", "--out",
          "/tmp/framecap-never-written.mp4"], "--lora-scale"),
        (["generate", "--timeline", '{"scenes": [{"start": 0, "end": 1e20, "caption": "x"}]}', "--dry-run"],
         "9601"),
        (["generate", "--timeline", '{"fps": 100000, "scenes": [{"start": 0, "end": 81, "caption": "x"}]}',
          "--dry-run"], "fps"),
    ],
)
def test_more_careless_command_lines(capsys, argv, words):
    assert words in cli_error(capsys, *argv)


def test_generate_replaces_its_three_files_together(tmp_path, monkeypatch, capsys):
    import framecap_core.video as video

    out = tmp_path / "v.mp4"
    names = [out, tmp_path / "v.timeline.json", tmp_path / "v.storyboard.png"]
    for path in names:
        path.write_text("old")
    argv = ["generate", "--model", "toy", "--timeline", "a red circle moves left on a blue background",
            "--seconds", "1", "--steps", "2", "--quiet", "--out", str(out)]
    real = video.render_storyboard

    def killed_while_drawing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "render_storyboard", killed_while_drawing)
    assert main(argv) == 130  # interrupted after the mp4 and the timeline were written
    assert [p.read_text() for p in names] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in names)
    monkeypatch.setattr(video, "render_storyboard", real)
    capsys.readouterr()
    assert main(argv) == 0
    assert all(p.read_bytes() != b"old" for p in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in names)
