"""The paper's metrics (eqs. 2-5) against values computed by hand, and the embedders' interface."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from framecap_core.errors import ModelLoadError, NumericalError
from framecap_core.metrics import (
    ClipEmbedder,
    Embedder,
    FrameAverageVideoEmbedder,
    confusion_degree,
    cosine_similarity,
    cosine_similarity_matrix,
    evaluate_video,
    format_paired_table,
    frame_text_consistency,
    global_caption,
    paired_difference,
    sample_frame_indices,
    t_quantile,
    video_text_similarity,
)
from framecap_core.timeline import Scene, Timeline


def test_confusion_degree_two_frames_by_hand():
    # ~S_TT = S_TT (unit diagonal). ~S_TF row 0 = [.4, .3] / .4 = [1, .75]; row 1 = [.1, .5] / .5 = [.2, 1].
    # CD_0 = max(0, 1 - 1) + max(0, .75 - .5) = .25 ; CD_1 = max(0, .2 - .5) + max(0, 1 - 1) = 0 ; CD = .125
    s_tt = [[1.0, 0.5], [0.5, 1.0]]
    s_tf = [[0.4, 0.3], [0.1, 0.5]]
    res = confusion_degree(s_tt, s_tf)
    assert res.per_frame.tolist() == pytest.approx([0.25, 0.0])
    assert res.cd == pytest.approx(0.125)


def test_confusion_degree_three_frames_by_hand():
    # ~S_TF rows: [.5,.25,.1]/.5 = [1,.5,.2]; [.2,.4,.2]/.4 = [.5,1,.5]; [.3,.3,.3]/.3 = [1,1,1]
    # minus ~S_TT rows [1,.2,0], [.2,1,.6], [0,.6,1], clamped at 0:
    # [0,.3,.2] -> .5 ; [.3,0,0] -> .3 ; [1,.4,0] -> 1.4 ; CD = 2.2 / 3
    s_tt = [[1.0, 0.2, 0.0], [0.2, 1.0, 0.6], [0.0, 0.6, 1.0]]
    s_tf = [[0.5, 0.25, 0.1], [0.2, 0.4, 0.2], [0.3, 0.3, 0.3]]
    res = confusion_degree(s_tt, s_tf)
    assert res.per_frame.tolist() == pytest.approx([0.5, 0.3, 1.4])
    assert res.cd == pytest.approx(2.2 / 3)


def test_confusion_degree_normalizes_by_the_diagonal_inside():
    s_tt = torch.tensor([[1.0, 0.2, 0.0], [0.2, 1.0, 0.6], [0.0, 0.6, 1.0]])
    s_tf = torch.tensor([[0.5, 0.25, 0.1], [0.2, 0.4, 0.2], [0.3, 0.3, 0.3]])
    rows = torch.tensor([[2.0], [0.5], [3.0]])  # per-row positive scales cancel in ~S = S / S(i, i)
    scaled = confusion_degree(s_tt * rows, s_tf * rows.flip(0))
    assert scaled.cd == pytest.approx(2.2 / 3)
    # a perfect video (S_TF == S_TT) has no confusion; a video whose frames all match caption 0 confuses the rest
    assert confusion_degree(s_tt, s_tt).cd == 0.0
    s_same = s_tt[:, [0, 0, 0]].clone()
    s_same.fill_diagonal_(1.0)
    assert confusion_degree(s_tt, s_same).cd > 0


def test_confusion_degree_rejects_bad_input():
    with pytest.raises(ValueError):
        confusion_degree(np.eye(2), np.eye(3))
    with pytest.raises(NumericalError, match="S_TF"):
        confusion_degree(np.eye(2), [[0.0, 0.1], [0.1, 1.0]])


def test_cosine_helpers_and_eq2():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # (3*4 + 4*3) / (5 * 5) = 24/25 ; (3*0 + 4*2) / (5 * 2) = .8 ; 4/5 = .8 ; 0
    torch.testing.assert_close(cosine_similarity_matrix(a, b), torch.tensor([[0.96, 0.8], [0.8, 0.0]]))
    assert cosine_similarity([1, 1], [1, 0]) == pytest.approx(1 / math.sqrt(2))
    assert video_text_similarity(np.array([1.0, 2.0, 2.0]), np.array([2.0, 0.0, 0.0])) == pytest.approx(1 / 3)
    # frame-level consistency is the mean of the diagonal: (.96 + 0) / 2
    assert frame_text_consistency(a, b) == pytest.approx(0.48)


def test_sample_frame_indices_uniform():
    assert sample_frame_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_frame_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]  # floor((k + .5) * 3 / 8)
    assert len(set(sample_frame_indices(81))) == 8


class _ColourEmbedder:
    """Frames -> mean RGB; texts 'red'/'green'/'blue' -> unit axes. Exact and easy to reason about."""

    AXES = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def embed_texts(self, texts):
        out = []
        for t in texts:
            v = np.zeros(3)
            for word, axis in self.AXES.items():
                v += np.array(axis) * t.count(word)
            out.append(v)
        return torch.tensor(np.array(out), dtype=torch.float32)

    def embed_frames(self, frames):
        return torch.as_tensor(np.asarray(frames, dtype=np.float32).mean(axis=(1, 2)))

    def embed_video(self, frames):
        return self.embed_frames(frames).mean(0)


def _video(colours, n_each):
    rgb = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    return np.concatenate([np.broadcast_to(np.array(rgb[c], np.uint8), (n_each, 4, 4, 3)) for c in colours])


def test_evaluate_video_follows_story_vs_confused():
    timeline = Timeline([Scene(0, 8, "red"), Scene(8, 17, "blue")], num_frames=17)
    emb = _ColourEmbedder()
    assert isinstance(emb, Embedder)
    good = _video(["red", "blue"], 8)
    good = np.concatenate([good, good[-1:]])
    scores = evaluate_video(emb, good, timeline, stride=4)
    assert scores.frames == [0, 4, 8, 12, 16]
    assert scores.confusion_degree == pytest.approx(0.0)
    assert scores.frame_consistency == pytest.approx(1.0)
    # one colour all along: caption "blue" rows see its own frame red (S_TF(i, i) = 0) -> undefined, must raise;
    # a purple video (red + blue in every frame) is the "blended scenes" case: CD > 0 although eq. 2 stays high
    purple = np.broadcast_to(np.array([255, 0, 255], np.uint8), good.shape)
    blended = evaluate_video(emb, purple, timeline, stride=4)
    # ~S_TF = 1 everywhere, ~S_TT = 1 within a scene and 0 across: frames 0, 4 (red) each get 3 cross terms
    # frames 8, 12, 16 (blue) each get 2 -> CD = (3 + 3 + 2 + 2 + 2) / 5
    assert blended.confusion_degree == pytest.approx(12 / 5)
    assert blended.frame_consistency == pytest.approx(1 / math.sqrt(2))
    assert global_caption(timeline) == "red. blue."
    assert blended.video_consistency == pytest.approx(1.0)  # eq. 2 cannot see the blending


def test_frame_average_video_embedder():
    emb = FrameAverageVideoEmbedder(_ColourEmbedder(), num_frames=8)
    frames = _video(["red", "green"], 8)
    v = emb.embed_video(frames)
    # sampled frames 1,3,5,7 are red and 9,11,13,15 green: unit vectors averaged
    assert v.tolist() == pytest.approx([0.5, 0.5, 0.0])


# ------------------------------------------------------------------------------------------------ CLIP from a folder


def _write_tiny_clip(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).eval().save_pretrained(folder, safe_serialization=True)
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3}
    for i, w in enumerate("a red blue green circle square moves left right on background".split()):
        vocab[w] = 4 + i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(folder)
    (folder / "marker.json").write_text(json.dumps({"tiny": True}))


def test_clip_embedder_from_local_folder(tmp_path):
    from transformers import CLIPModel

    _write_tiny_clip(tmp_path)
    emb = ClipEmbedder(tmp_path)
    texts = ["a red circle", "a blue square moves left"]
    t = emb.embed_texts(texts)
    assert t.shape == (2, 8)
    model = CLIPModel.from_pretrained(tmp_path).eval()
    tok = emb.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(**tok)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(t, ref)
    frames = np.random.default_rng(0).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    f = emb.embed_frames(frames)
    assert f.shape == (5, 8)
    torch.testing.assert_close(emb.embed_frames(frames[2:3])[0], f[2], atol=1e-5, rtol=1e-5)
    v = emb.embed_video(frames)
    unit = f / f.norm(dim=1, keepdim=True)
    torch.testing.assert_close(v, unit[sample_frame_indices(5)].mean(0), atol=1e-5, rtol=1e-5)


def test_clip_embedder_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not a CLIP folder"):
        ClipEmbedder(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ framecap eval


def test_framecap_eval_scores_a_folder(tmp_path, capsys):
    from framecap_core import toyworld as tw
    from framecap_core.cli import main
    from framecap_core.video import write_mp4

    for method, faithful in (("good", True), ("stuck", False)):
        folder = tmp_path / method
        folder.mkdir()
        for seed in range(2):
            story = tw.random_story(seed, num_frames=49, num_scenes=3)
            shown = story if faithful else tw.ToyStory([tw.ToyScene(**{**story.scenes[0].__dict__, "frames": 49})])
            write_mp4(tw.render_story(shown), folder / f"v{seed}.mp4", fps=16)
            (folder / f"v{seed}.timeline.json").write_text(story.timeline().to_json())
    out_json = tmp_path / "scores.json"
    assert main(["eval", str(tmp_path), "--embedder", "toy", "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "| good | 2 |" in table and "| stuck | 2 |" in table and "Confusion Degree" in table
    rows = json.loads(out_json.read_text())["rows"]
    good = [s["confusion_degree"] for s in rows["good"]]
    stuck = [s["confusion_degree"] for s in rows["stuck"]]
    assert max(good) < min(stuck)
    assert min(s["frame_consistency"] for s in rows["good"]) > 0.9


def test_framecap_eval_errors(tmp_path, capsys):
    from framecap_core.cli import main

    assert main(["eval", str(tmp_path)]) == 1
    assert "No .mp4 videos" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--embedder", "vbench"]) == 1
    assert "Unknown embedder" in capsys.readouterr().err


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.7062047), (0.975, 2, 4.3026527), (0.975, 3, 3.1824463), (0.975, 9, 2.2621572),
    (0.975, 29, 2.0452296), (0.95, 4, 2.1318468), (0.5, 7, 0.0),
])
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


def test_paired_difference_by_hand():
    # differences [1, 2, 2, 3]: mean 2, sample sd sqrt(2/3), se sqrt(2/3)/2; t(0.975, 3) = 3.1824463
    diff = paired_difference([1, 2, 3, 4], [0, 0, 1, 1])
    half = 3.1824463 * math.sqrt(2 / 3) / 2
    assert (diff.mean, diff.n) == (2.0, 4)
    assert (diff.low, diff.high) == (pytest.approx(2 - half, abs=1e-6), pytest.approx(2 + half, abs=1e-6))
    assert diff.excludes_zero()
    # a constant offset shared by both (the story's difficulty) cancels: only the differences count
    assert paired_difference([11, 2, 23, 4], [10, 0, 21, 1]) == diff
    assert not paired_difference([1, -1, 2, -2], [0, 0, 0, 0]).excludes_zero()
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_difference([1.0], [0.0])


def test_format_paired_table_marks_intervals_that_exclude_zero():
    a = [{"cd": 1.0}, {"cd": 2.0}, {"cd": 3.0}, {"cd": 4.0}]
    b = [{"cd": 0.0}, {"cd": 0.0}, {"cd": 1.0}, {"cd": 1.0}]
    table = format_paired_table([("A − B", a, b), ("B − A", b, b)], columns=(("cd", "CD"),))
    lines = table.splitlines()
    assert lines[0] == "| Difference | pairs | CD |"
    assert lines[2].startswith("| A − B | 4 | +2.0000 [+0.7008, +3.2992]*")
    assert lines[3] == "| B − A | 4 | +0.0000 [+0.0000, +0.0000] |"
    with pytest.raises(ValueError, match="cannot be paired"):
        format_paired_table([("x", a, b[:3])], columns=(("cd", "CD"),))
