"""``framecap generate`` end to end on tiny models (diffusers folder and ComfyUI single files), help and errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from framecap_core.cli import build_parser, main

TIMELINE = "a red fox in snow | the fox jumps over a river"
SMALL = ["--width", "32", "--height", "32", "--steps", "2", "--window", "9", "--overlap", "4", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from framecap_core.testing import save_tiny_wan

    paths = save_tiny_wan(tmp_path_factory.mktemp("tiny"), formats=("diffusers", "comfy"), text_len=8)
    # model defaults carried by the folder: used for every option not given on the command line
    defaults = {"text_len": 8, "defaults": {"width": 32, "height": 48, "steps": 2, "window": 9, "overlap": 4,
                                              "seconds": 2}}
    (paths["diffusers"] / "framecap.json").write_text(json.dumps(defaults))
    return paths


def _generate_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "generate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--window FRAMES" in out and "pmwd" in out and "examples:" in out
    for action in _generate_parser()._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{action.option_strings} has no help"


def test_help_defaults_match_the_settings():
    from framecap_core.cli.generate import _builtin_defaults

    text = _generate_parser().format_help()
    defaults = _builtin_defaults()
    for name, option in [("window", "--window"), ("overlap", "--overlap"), ("steps", "--steps"),
                         ("guidance", "--guidance"), ("shift", "--shift"), ("width", "--width"),
                         ("height", "--height"), ("fps", "--fps"), ("method", "--method"), ("seed", "--seed")]:
        action = next(a for a in _generate_parser()._actions if option in a.option_strings)
        assert f"(default: {defaults[name]}" in " ".join(action.help.split()), (name, action.help)
    assert "framecap.json" in text


def test_dry_run_prints_the_plan_without_a_model(capsys):
    code = main(["generate", "--timeline", TIMELINE + " | snow falls", "--seconds", "30", "--dry-run",
                 "--model", "/nonexistent/model"])
    assert code == 0
    out = capsys.readouterr().out
    assert "481 frames = 121 latents" in out
    assert "9 windows" in out and "9 window forwards per step" in out and "450 in total" in out
    assert "  100-120" in out  # the last window, flush with the end
    for caption in ("a red fox in snow", "the fox jumps over a river", "snow falls"):
        assert caption in out
    assert out.count("\n") > 121  # one line per latent


def test_dry_run_applies_model_defaults_and_flags_win(tiny, capsys):
    assert main(["generate", "--model", str(tiny["diffusers"]), "--timeline", TIMELINE, "--seconds", "2",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "of 6x4" in out and "2 steps" in out and "window 3 latents" in out  # 48x32 px, from framecap.json
    assert main(["generate", "--model", str(tiny["diffusers"]), "--timeline", TIMELINE, "--seconds", "2",
                 "--dry-run", "--steps", "5", "--width", "64"]) == 0
    out = capsys.readouterr().out
    assert "of 6x8" in out and "5 steps" in out
    # a timeline without a length takes the model's default length (2 s -> 33 frames)
    assert main(["generate", "--model", str(tiny["diffusers"]), "--timeline", TIMELINE, "--dry-run"]) == 0
    assert "33 frames = 9 latents" in capsys.readouterr().out


def _check_outputs(out_path, num_frames, h, w):
    from framecap_core.video import read_mp4

    frames = read_mp4(out_path)
    assert frames.shape == (num_frames, h, w, 3)
    board = out_path.with_name(out_path.stem + ".storyboard.png")
    from PIL import Image

    image = Image.open(board)
    assert image.width == 1600 and image.height > 300
    timeline = json.loads(out_path.with_name(out_path.stem + ".timeline.json").read_text())
    assert timeline["num_frames"] == num_frames and len(timeline["scenes"]) == 2
    assert not [p for p in out_path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    return frames


def test_generate_from_diffusers_folder(tiny, tmp_path, capsys):
    out = tmp_path / "fox.mp4"
    code = main(["generate", "--model", str(tiny["diffusers"]), "--timeline", TIMELINE, "--seconds", "1",
                 "--out", str(out), "--quiet", "--seed", "3"])
    assert code == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    assert "Loading" not in captured.err and "%|" not in captured.err, captured.err  # --quiet: no loading bar either
    _check_outputs(out, 17, 48, 32)  # size from the folder's framecap.json defaults


def test_generate_from_comfy_single_files_same_seed_same_video(tiny, tmp_path, capsys):
    args = ["generate", "--transformer-file", str(tiny["transformer_fp16"]), "--vae-file", str(tiny["vae"]),
            "--text-encoder-file", str(tiny["umt5_fp16"]), "--config-dir", str(tiny["diffusers"]),
            "--timeline", TIMELINE, "--seconds", "1", "--method", "sliding", *SMALL]
    assert main([*args, "--out", str(tmp_path / "a.mp4")]) == 0, capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b.mp4"), "--no-storyboard"]) == 0
    a = _check_outputs(tmp_path / "a.mp4", 17, 32, 32)
    from framecap_core.video import read_mp4

    assert np.array_equal(a, read_mp4(tmp_path / "b.mp4"))
    assert not (tmp_path / "b.storyboard.png").exists()


def test_prompt_input(tiny, tmp_path, capsys):
    code = main(["generate", "--model", str(tiny["diffusers"]), "--prompt",
                 "A red fox runs through the snow. Then the fox jumps over a frozen river.", "--seconds", "3",
                 "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "49 frames = 13 latents" in out and "fox" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "/nonexistent/wan"], "not found"),
        (["--model", "TINY", "--overlap", "12"], "overlap=12 frames (3 latents) must be smaller than the window"),
        (["--model", "TINY", "--window", "10"], "4k+1"),
        (["--model", "TINY", "--width", "40"], "multiple of 16"),
        (["--model", "TINY", "--vae-file", "/nonexistent/vae.safetensors"], "vae file /nonexistent/vae.safetensors not found"),
    ],
)
def test_clear_errors(tiny, tmp_path, capsys, extra, message):
    extra = [str(tiny["diffusers"]) if e == "TINY" else e for e in extra]
    code = main(["generate", "--timeline", TIMELINE, "--seconds", "1", "--out", str(tmp_path / "x.mp4"), "--quiet",
                 *extra])
    err = capsys.readouterr().err
    assert code == 1 and message in err, err
    assert err.startswith("framecap: error:") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_timeline_errors(tmp_path, capsys):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"num_frames": 33, "scenes": [{"start": 0, "end": 20, "caption": "a"},
                                                            {"start": 24, "end": 33, "caption": "b"}]}))
    assert main(["generate", "--timeline", str(bad), "--dry-run"]) == 1
    assert "Gap before scene 2" in capsys.readouterr().err
    assert main(["generate", "--timeline", "a fox | a dog", "--dry-run"]) == 1
    assert "--seconds" in capsys.readouterr().err
    assert main(["generate", "--timeline", TIMELINE, "--seconds", "1"]) == 1
    assert "--out is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "/nonexistent/wan"], "Model '/nonexistent/wan' not found"),
        (["--model", "TINY", "--checkpoint", "/nonexistent/ft.safetensors"], "--checkpoint /nonexistent/ft.safetensors"),
    ],
)
def test_missing_model_error_comes_first_and_alone(tiny, tmp_path, capsys, extra, message):
    # Not --quiet: the plan would be printed before loading; a model that cannot be found must be reported instead.
    extra = [str(tiny["diffusers"]) if e == "TINY" else e for e in extra]
    code = main(["generate", "--timeline", TIMELINE, "--seconds", "1", "--out", str(tmp_path / "x.mp4"), *extra])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    err = captured.err
    assert err.startswith("framecap: error:") and message in err, err
    assert len(err.strip().splitlines()) == 1, err  # the error alone: no plan ("window ...", "steps ...") above it
    assert "window" not in err and "latents" not in err
    assert list(tmp_path.iterdir()) == []
