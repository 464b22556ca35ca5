"""The toy world: stories, rendering, the pixel oracle and its embedder (and, with the bundled toy model, that the
main command's video follows its story)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framecap_core import toyworld as tw
from framecap_core.metrics import confusion_degree, cosine_similarity_matrix, evaluate_video
from framecap_core.timeline import parse_timeline


def _accuracy(frames, story, noise=0.0, seed=0):
    if noise:
        rng = np.random.default_rng(seed)
        frames = np.clip(frames.astype(np.float32) + rng.normal(0, noise, frames.shape), 0, 255).astype(np.uint8)
    reads = tw.read_video_attributes(frames)
    truth = story.frame_attributes()
    return {k: np.mean([r[k] == t[k] for r, t in zip(reads, truth, strict=True)]) for k in tw.ATTRIBUTES}


def test_caption_grammar_round_trip():
    assert tw.caption("circle", "red", "blue", "left") == "a red circle moves left on a blue background"
    assert tw.caption("square", "white", "black", "still") == "a white square stays still on a black background"
    for shape in tw.SHAPES:
        for motion in tw.MOTIONS:
            attrs = {"shape": shape, "colour": "green", "background": "yellow", "motion": motion}
            assert tw.parse_caption(tw.caption(**attrs)) == attrs
    # prose from a prompt builder still parses; unnamed attributes are None
    assert tw.parse_caption("Then a Green Triangle moves up on a black background.") == {
        "shape": "triangle", "colour": "green", "background": "black", "motion": "up"}
    assert tw.parse_caption("a circle")["colour"] is None
    assert set(tw.TOY_WORDS) >= set(tw.caption("triangle", "yellow", "black", "down").split())


def test_random_story_is_seeded_and_latent_aligned():
    a, b = tw.random_story(3, num_frames=49), tw.random_story(3, num_frames=49)
    assert a == b
    assert tw.random_story(4, num_frames=49) != a
    timeline = a.timeline()
    assert timeline.num_frames == 49 and len(timeline.scenes) == len(a.scenes) >= 2
    for scene in timeline.scenes[1:]:
        assert (scene.start + 3) % 4 == 0  # starts latent (start + 3) / 4
    # consecutive scenes differ in at least one attribute, the shape stays visible
    for prev, cur in zip(a.scenes, a.scenes[1:], strict=False):
        assert prev.attributes() != cur.attributes()
    for s in a.scenes:
        assert s.colour != s.background
    with pytest.raises(ValueError):
        tw.random_story(0, num_frames=48)


def test_render_shapes_stay_inside_and_move():
    story = tw.random_story(1, num_frames=49)
    frames = tw.render_story(story)
    assert frames.shape == (49, 64, 64, 3) and frames.dtype == np.uint8
    scene = tw.ToyScene("square", "red", "blue", "right", frames=9, x=20.0, y=30.0)
    clip = tw.render_story(tw.ToyStory([scene]))
    xs = [tw.read_frame_attributes(f).centroid[0] for f in clip]
    # 1.5 px per frame: 8 steps move the centroid by 12 px
    assert xs[-1] - xs[0] == pytest.approx(8 * tw.SPEED, abs=0.3)


def test_a_long_moving_scene_slows_down_and_stays_whole_in_the_frame():
    short, long = tw.ToyScene("circle", "red", "blue", "right", frames=27), tw.ToyScene(
        "circle", "red", "blue", "right", frames=129)
    assert short.speed == tw.SPEED  # up to 27 frames a scene moves at full speed
    assert long.speed == pytest.approx(tw.TRAVEL_RANGE / 128)
    scene = tw.ToyScene("square", "white", "black", "right", frames=129, x=tw.MARGIN, y=30.0)
    reads = tw.read_video_attributes(tw.render_story(tw.ToyStory([scene])))
    assert all(r["shape"] == "square" for r in reads)  # whole to the end (it used to leave the frame at frame 54)
    # 0.31 px per frame, just over the oracle's still threshold (STILL_SPEED = 0.3): most frames still read as moving
    assert sum(r["motion"] == "right" for r in reads) >= 0.75 * len(reads)


def _scene_video(shape: str, sizes: list[float]) -> np.ndarray:
    """A still ``shape`` (yellow on green, centred) drawn at ``sizes[k]`` in frame ``k``."""
    fg, bg = np.array(tw.COLOURS["yellow"], np.float32), np.array(tw.COLOURS["green"], np.float32)
    frames = [np.round(bg * (1 - m) + fg * m).astype(np.uint8)
              for m in (tw._shape_mask(shape, 32.0, 32.0, size=s)[..., None] for s in sizes)]
    return np.stack(frames)


def test_scene_hold_measures_identity_and_size_kept_over_a_long_scene():
    still = tw.ToyStory([tw.ToyScene("square", "yellow", "green", "still", frames=64),
                         tw.ToyScene("circle", "red", "blue", "still", frames=20)])  # too short: not counted
    rendered = tw.render_story(still)
    assert tw.scene_hold(rendered, still) == {"identity_hold": 1.0, "size_drift": 0.0}
    # the square turns into a circle for the last 15 of the 60 frames counted (from frame 4): 45 / 60 held
    changed = rendered.copy()
    changed[49:64] = _scene_video("circle", [20.0] * 15)
    assert tw.scene_hold(changed, still)["identity_hold"] == pytest.approx(45 / 60)
    # the square shrinks from 20 to 14 pixels: 400 -> 196 mask pixels over the last 8 frames, a drift of 204 / 400
    shrunk = rendered.copy()
    shrunk[:64] = _scene_video("square", [20.0] * 56 + [14.0] * 8)
    assert tw.scene_hold(shrunk, still)["size_drift"] == pytest.approx(204 / 400, abs=0.01)
    assert np.isnan(tw.scene_hold(rendered[:20], tw.ToyStory([still.scenes[1]]))["identity_hold"])
    with pytest.raises(ValueError, match="frames"):
        tw.scene_hold(rendered[:10], still)


@pytest.mark.parametrize("noise", [0.0, 25.0])
def test_oracle_reads_clean_and_noisy_videos(noise):
    accs = [_accuracy(tw.render_story(tw.random_story(seed, num_frames=49)), tw.random_story(seed, num_frames=49),
                      noise=noise, seed=seed) for seed in range(6)]
    mean = {k: float(np.mean([a[k] for a in accs])) for k in tw.ATTRIBUTES}
    floor = {"shape": 0.97, "colour": 0.99, "background": 0.99, "motion": 0.93}
    for k, v in mean.items():
        assert v >= floor[k], (k, v, noise)


def _box_blur(frames: np.ndarray, passes: int) -> np.ndarray:
    """3x3 box blur applied ``passes`` times (edge pixels repeated): the soft edges a generator's decoder gives."""
    x = frames.astype(np.float32)
    for _ in range(passes):
        p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        x = sum(p[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0
    return np.round(x).astype(np.uint8)


def test_oracle_reads_shapes_through_blur():
    """The shape is matched against drawn templates, not a fill ratio, so soft edges do not turn squares into
    circles or triangles into circles."""
    accs = []
    for seed in range(4):
        story = tw.random_story(seed, num_frames=25)
        accs.append(_accuracy(_box_blur(tw.render_story(story), passes=2), story))
    assert np.mean([a["shape"] for a in accs]) >= 0.99
    assert np.mean([a["colour"] for a in accs]) >= 0.99
    # a shape never drawn (a plus sign) matches every template badly
    plus = np.zeros((64, 64, 3), np.uint8)
    plus[..., 2] = 255
    plus[22:42, 30:34] = 255
    plus[30:34, 22:42] = 255
    assert tw.read_frame_attributes(plus).match < 0.55


def test_oracle_catches_a_wrong_video():
    story = tw.random_story(5, num_frames=49)
    other = tw.ToyStory([tw.random_scene(np.random.default_rng(9), 49)])
    reads = _accuracy(tw.render_story(other), story)
    assert min(reads.values()) < 0.9


def test_track_steps_finds_a_sawtooth():
    """A rendered scene moves forward in every frame pair; the same scene replayed in 8-frame loops goes back once
    every 8 pairs, and only the moving scene's pairs count."""
    story = tw.ToyStory([tw.ToyScene("square", "red", "blue", "right", frames=33, x=20.0, y=32.0),
                         tw.ToyScene("circle", "white", "black", "still", frames=16)])
    frames = tw.render_story(story)
    truth = [sc.attributes() for sc in story.scenes for _ in range(sc.frames)]
    assert tw.track_steps(frames, truth) == {"forward": 1.0, "level": 0.0, "back": 0.0, "pairs": 32}
    looped = frames.copy()
    looped[:33] = frames[[t % 8 for t in range(33)]]
    steps = tw.track_steps(looped, truth)
    assert steps["pairs"] == 32 and steps["back"] == pytest.approx(4 / 32) and steps["forward"] == pytest.approx(28 / 32)
    still_only = [sc.attributes() | {"motion": "still"} for sc in story.scenes for _ in range(sc.frames)]
    assert tw.track_steps(frames, still_only)["forward"] is None
    with pytest.raises(ValueError, match="one per frame"):
        tw.track_steps(frames, truth[:-1])


def test_oracle_embedder_similarity_counts_agreements():
    emb = tw.OracleEmbedder()
    t = emb.embed_texts([tw.caption("circle", "red", "blue", "left"), tw.caption("circle", "red", "green", "up")])
    sim = cosine_similarity_matrix(t, t)
    assert sim[0, 1].item() == pytest.approx((1 + 2) / 5)  # constant + shape + colour agree
    frames = tw.render_story(tw.ToyStory([tw.ToyScene("circle", "red", "blue", "left", 17, 45.0, 32.0)]))
    f = emb.embed_frames(frames)
    s_tf = cosine_similarity_matrix(t, f)
    assert s_tf[0].min().item() == pytest.approx(1.0, abs=1e-6)
    assert s_tf[1, 8].item() == pytest.approx(3 / 5, abs=1e-6)


def test_metrics_on_toy_videos_rank_faithful_above_blended():
    story = tw.random_story(2, num_frames=49, num_scenes=3)
    timeline = story.timeline()
    emb = tw.OracleEmbedder()
    good = evaluate_video(emb, tw.render_story(story), timeline)
    # "video-level prompting" failure: the first scene all along
    first = tw.ToyStory([tw.ToyScene(**{**story.scenes[0].__dict__, "frames": 49})])
    stuck = evaluate_video(emb, tw.render_story(first), timeline)
    assert good.confusion_degree < stuck.confusion_degree
    assert good.frame_consistency > 0.95 > stuck.frame_consistency
    s = cosine_similarity_matrix(emb.embed_texts([s.caption for s in timeline.scenes]),
                                 emb.embed_texts([s.caption for s in timeline.scenes]))
    assert confusion_degree(s, s).cd == 0.0


def test_story_text_splits_back_with_the_offline_builder():
    from framecap_core.prompting.offline import offline_timeline

    story = tw.random_story(7, num_frames=97, num_scenes=3)
    timeline = offline_timeline(tw.story_text(story), num_frames=97)
    assert [tw.parse_caption(s.caption) for s in timeline.scenes] == [s.attributes() for s in story.scenes]


def test_story_from_timeline_draws_the_captions():
    timeline = parse_timeline([tw.caption("square", "yellow", "black", "down"),
                               tw.caption("triangle", "white", "red", "still")], num_frames=33)
    story = tw.story_from_timeline(timeline, seed=1)
    reads = tw.read_video_attributes(tw.render_story(story))
    assert reads[5] == tw.parse_caption(timeline.scenes[0].caption)
    assert reads[28] == tw.parse_caption(timeline.scenes[1].caption)
    assert torch.is_tensor(tw.OracleEmbedder().embed_video(tw.render_story(story)))


# ------------------------------------------------------------------------------------- the bundled toy model

TOY_STORY = ("A red circle moves right on a blue background. Then a yellow square stays still on a black "
             "background. Finally a white triangle moves left on a green background.")


def _toy_model_dir():
    from framecap_core.models import TOY_MODEL_DIR

    return TOY_MODEL_DIR


def test_toy_model_folder_is_small_and_safetensors_only():
    folder = _toy_model_dir()
    if not (folder / "model_index.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    # prose around the toy words is dropped: the offline builder's captions tokenize into toy words only
    ids = tok("Then, a Red circle slowly moves left on a blue background!").input_ids
    assert ids == tok("a red circle moves left on a blue background").input_ids
    assert tok.unk_token_id not in ids


def test_toy_model_has_the_shapes_comfyuis_native_loaders_assume():
    """ComfyUI reads a Wan2.1 transformer's width and depth from its weights but assumes head_dim 128, freq_dim 256
    and text_dim 4096, and its Wan2.1 VAE has 16 latent channels with fixed statistics (``Wan21`` latent format):
    the bundled toy model has exactly those, so ``comfy_files`` maps both parts onto ComfyUI's layouts with nothing
    left over (loading them in a real ComfyUI: tests/test_comfy_files.py, with ``COMFYUI_PATH``)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from framecap_core.comfy_files import comfy_transformer_state, comfy_vae_state
    from framecap_core.models import load_wan
    from framecap_core.testing import WAN_LATENTS_MEAN, WAN_LATENTS_STD

    folder = _toy_model_dir()
    if not (folder / "model_index.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    transformer = WanTransformer3DModel.from_pretrained(str(folder / "transformer"))
    config = transformer.config
    assert (config.attention_head_dim, config.freq_dim, config.text_dim) == (128, 256, 4096)
    assert (config.in_channels, config.out_channels) == (16, 16)
    vae = AutoencoderKLWan.from_pretrained(str(folder / "vae"))
    assert vae.config.z_dim == 16 and list(vae.config.dim_mult) == [1, 2, 4, 4]
    assert vae.config.latents_mean == pytest.approx(WAN_LATENTS_MEAN)
    assert vae.config.latents_std == pytest.approx(WAN_LATENTS_STD)
    assert len(comfy_transformer_state(transformer)) == len(transformer.state_dict())
    assert comfy_vae_state(vae)  # raises when some toy weight has no place in Wan2.1's VAE layout
    model = load_wan("toy")
    assert (model.text_dim, model.caption_dim) == (4096, 32)  # 32 features read as zero-padded to 4096


def _encode_decode(vae, frames: np.ndarray) -> np.ndarray:
    """``frames`` ``[T, H, W, 3]`` uint8 through ``vae`` (posterior mean, then decode) back to uint8."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return ((y[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()


def test_toy_vae_moves_a_shape_in_every_frame():
    """A latent holds four frames; a decoder taught on single frames only draws them as copies of one position (the
    shape jumps every fourth frame). The bundled decoder moves it in every frame: through the VAE, a moving shape's
    centroid advances between almost all consecutive frames (unevenly: about 3, 1, 1 and 0.5 pixels over a latent's
    four frames rather than 1.5 each), at the scene's speed on average, and the oracle reads the motion."""
    from diffusers import AutoencoderKLWan

    folder = _toy_model_dir()
    if not (folder / "model_index.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    vae = AutoencoderKLWan.from_pretrained(str(folder / "vae")).eval()
    scene = tw.ToyScene("square", "yellow", "blue", "right", frames=25, x=tw.MARGIN, y=32.0)
    frames = _encode_decode(vae, tw.render_story(tw.ToyStory([scene])))
    xs = [tw.read_frame_attributes(f).centroid[0] for f in frames]
    steps = np.diff(xs)
    assert np.mean(steps > 0.2) >= 0.9, np.round(steps, 2)  # the old decoder: 0 in three steps of four
    assert np.mean(steps) == pytest.approx(tw.SPEED, abs=0.2)
    assert np.mean([r["motion"] == "right" for r in tw.read_video_attributes(frames)]) >= 0.9


@pytest.fixture(scope="module")
def main_command_reading(tmp_path_factory):
    """`framecap generate --model toy --prompt STORY` (the README's main command), read back by the oracle: per
    scene, the fraction of its inner frames (away from the cuts) whose shape / colour / background match."""
    if not (_toy_model_dir() / "model_index.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    from framecap_core.cli import main
    from framecap_core.timeline import Timeline
    from framecap_core.video import read_mp4

    out = tmp_path_factory.mktemp("main") / "demo.mp4"
    assert main(["generate", "--model", "toy", "--prompt", TOY_STORY, "--out", str(out), "--quiet",
                 "--no-storyboard"]) == 0
    timeline = Timeline.from_json(out.with_name("demo.timeline.json").read_text())
    assert len(timeline.scenes) == 3
    reads = tw.read_video_attributes(read_mp4(out)[: timeline.num_frames])
    scenes = []
    for scene in timeline.scenes:
        truth = tw.parse_caption(scene.caption)
        inner = range(scene.start + 4, scene.end - 4)
        scenes.append({k: float(np.mean([reads[i][k] == truth[k] for i in inner]))
                       for k in ("shape", "colour", "background")})
    return scenes


@pytest.mark.slow
def test_main_command_changes_scene_with_the_story(main_command_reading):
    """Every scene shows its own background, and most scenes get most of their caption (2 of shape / colour /
    background in the majority of their frames): the video follows the story scene by scene."""
    assert all(s["background"] >= 0.9 for s in main_command_reading), main_command_reading
    mostly = [sum(v > 0.5 for v in s.values()) >= 2 for s in main_command_reading]
    assert sum(mostly) >= 2, main_command_reading


@pytest.mark.slow
def test_main_command_draws_every_attribute_of_most_scenes(main_command_reading):
    """The strict reading: in most scenes the shape, its colour and the background are all right in most frames (the
    bundled model: scene 2 in every inner frame, scene 3 in 88%; scene 1's circle seldom reads as a circle)."""
    agree = [min(s.values()) >= 0.6 for s in main_command_reading]
    assert sum(agree) >= 2, main_command_reading
