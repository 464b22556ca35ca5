"""Dataset construction (paper section 3), the manifest, per-latent captions and the latent cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from fake_gemini import FakeGemini, reply_json

from framecap_core.data import (
    CacheWriter,
    ClipRecord,
    DatasetConfig,
    LatentCache,
    ManifestWriter,
    VideoInfo,
    build_dataset,
    build_latent_cache,
    clip_id_for,
    clip_latent_captions,
    encode_video_latents,
    gemini_annotator,
    hamming,
    merge_manifests,
    phash,
    plan_clips,
    read_clip_frames,
    read_manifest,
)
from framecap_core.data.hashing import _dct_matrix
from framecap_core.errors import DatasetError
from framecap_core.prompting.templates import annotation_system_instruction

FPS = 24
SMALL = DatasetConfig(min_duration_s=2.0, clip_seconds=1.0, phash_frames=4, phash_threshold=8.0)


def _pattern(kind: str, t: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth random colour field (seeded by ``kind``) drifting right by one pixel every 3 frames."""
    from PIL import Image

    seed = {"stripes": 1, "rings": 2}[kind]
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
    return np.roll(field, t // 3, axis=1)


def _write_video(path, kind, seconds, brightness=0):
    frames = [np.clip(_pattern(kind, t).astype(int) + brightness, 0, 255).astype(np.uint8)
              for t in range(int(seconds * FPS))]
    imageio.mimwrite(path, frames, fps=FPS, macro_block_size=1, quality=8)


def _annotation_reply(request):
    n = len(request.images())
    segments = [{"first_frame": 0, "last_frame": n // 2, "caption": "a striped wall moves slowly"},
                {"first_frame": n // 2 + 1, "last_frame": n - 1, "caption": "the camera pans across bright rings"}]
    if n == 1:
        segments = segments[:1]
        segments[0]["last_frame"] = 0
    return reply_json({"segments": segments, "video_caption": "abstract patterns move"})


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    _write_video(root / "a_stripes.mp4", "stripes", 6)
    _write_video(root / "b_stripes_copy.mp4", "stripes", 6, brightness=6)  # near-duplicate of a
    _write_video(root / "c_rings.mp4", "rings", 6)
    _write_video(root / "d_short.mp4", "rings", 1)
    (root / "e_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return root


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory):
    """The dataset of ``videos`` annotated through the fake Gemini server; returns (out dir, summary, requests)."""
    out = tmp_path_factory.mktemp("dataset")
    mp = pytest.MonkeyPatch()
    mp.setenv("GEMINI_API_KEY", "test-key")
    try:
        with FakeGemini(default=_annotation_reply) as server:
            annotator = gemini_annotator(base_url=server.base_url, backoff=0, max_caption_tokens=40)
            summary = build_dataset([videos], out, config=SMALL, annotator=annotator, progress=False,
                                    log=lambda s: None)
            requests = list(server.requests)
    finally:
        mp.undo()
    return out, summary, requests


def test_dct_matrix_is_orthonormal_and_phash_separates_images():
    d = _dct_matrix(32)
    assert np.allclose(d @ d.T, np.eye(32), atol=1e-12)
    # the DCT of a constant signal is all DC
    assert np.allclose((d @ np.ones(32))[1:], 0, atol=1e-12)
    a, c = _pattern("stripes", 0), _pattern("rings", 0)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    assert phash(a) == phash(a.copy())
    assert hamming(phash(a), phash(noisy)) <= 6
    assert hamming(phash(a), phash(np.ascontiguousarray(a[::2, ::2]))) <= 6  # resized copy
    assert hamming(phash(a), phash(c)) >= 16
    assert 0 <= phash(a) < 2**64


def test_plan_clips_follows_the_paper_numbers():
    config = DatasetConfig()  # 10 min, 10% trims, 4 segments, 8 s clips, every 8th frame at 24 fps, 16 fps training
    info = VideoInfo("/v/long.mp4", fps=24.0, num_frames=20 * 60 * 24, width=1280, height=720)
    plans = plan_clips(info, config)
    assert len(plans) == 4 and config.train_frames == 125
    first, last = int(info.num_frames * 0.1), int(np.ceil(info.num_frames * 0.9))
    seg = (last - first) / 4
    for k, plan in enumerate(plans):
        assert plan.end_frame - plan.start_frame == 192  # 8 s at 24 fps
        assert first + k * seg <= plan.start_frame and plan.end_frame <= first + (k + 1) * seg + 1
        # centred in its segment
        assert abs((plan.start_frame + plan.end_frame) / 2 - (first + (k + 0.5) * seg)) <= 1
        assert plan.sample_frames == list(range(plan.start_frame, plan.end_frame, 8))  # 24 frames
        assert len(plan.sample_frames) == 24
        assert len(plan.frame_indices) == 125
        assert plan.frame_indices[:4] == [plan.start_frame + x for x in (0, 2, 3, 5)]  # 16 fps from 24 fps
    # a 30 fps source is sampled at the same instants (every 1/3 s), 240-frame clips
    plans30 = plan_clips(VideoInfo("/v/x.mp4", 30.0, 20 * 60 * 30, 640, 360), config)
    assert all(p.end_frame - p.start_frame == 240 for p in plans30)
    assert [s - plans30[0].start_frame for s in plans30[0].sample_frames[:4]] == [0, 10, 20, 30]
    # a video too short for a clip per segment gives none
    assert plan_clips(VideoInfo("/v/s.mp4", 24.0, 24 * 20, 64, 64), config) == []


def test_build_dataset_filters_annotates_and_writes_the_manifest(built, videos):
    out, summary, requests = built
    assert summary.videos == 5
    assert len(summary.corrupt) == 1 and "e_corrupt" in summary.corrupt[0]
    assert summary.too_short == [str(videos / "d_short.mp4")]
    assert len(summary.duplicates) == 1 and summary.duplicates[0].startswith(str(videos / "b_stripes_copy.mp4"))
    records = read_manifest(out / "manifest.jsonl")
    assert summary.clips_written == len(records) == 8  # 4 clips from each of a and c
    assert {r.source.split("/")[-1] for r in records} == {"a_stripes.mp4", "c_rings.mp4"}
    info_frames = 6 * FPS
    for r in records:
        assert r.source_fps == pytest.approx(24.0)
        assert len(r.sample_frames) == 3 and r.sample_frames == list(range(r.start_frame, r.start_frame + 24, 8))
        assert r.num_frames == SMALL.train_frames == 13
        assert info_frames * 0.1 <= r.start_frame and r.end_frame <= info_frames * 0.9 + 1
        assert r.captions == ["a striped wall moves slowly"] * 2 + ["the camera pans across bright rings"]
        assert r.global_caption == "abstract patterns move"
    # every clip was one request holding its 3 sampled frames as images and the shared annotation template
    assert len(requests) == 8
    for request in requests:
        images = request.images()
        assert len(images) == 3 and all(mime == "image/jpeg" for mime, _ in images)
        assert request.system_instruction() == annotation_system_instruction(40)
        assert any("3 sampled frames" in t for t in request.texts())
    assert "clips written: 8" in summary.report()


def test_rerun_skips_finished_clips_and_a_torn_line_is_redone(built, videos, tmp_path):
    out, _, _ = built
    work = tmp_path / "ds"
    shutil.copytree(out, work)
    manifest = work / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    # simulate a build killed while appending the 8th clip
    manifest.write_text("\n".join(lines[:7]) + "\n" + lines[7][: len(lines[7]) // 2])
    calls = []

    def annotator(images, timestamps):
        calls.append((len(images), timestamps))
        return ["a striped wall moves slowly"] * len(images), "again"

    summary = build_dataset([videos], work, config=SMALL, annotator=annotator, progress=False, log=lambda s: None)
    assert summary.clips_done_before == 7 and summary.clips_written == 1
    assert calls == [(3, [0.0, 1 / 3, 2 / 3])]
    records = read_manifest(manifest)
    assert len(records) == 8 and len({r.clip_id for r in records}) == 8
    assert all(json.loads(line) for line in manifest.read_text().splitlines())  # every line parses again
    again = build_dataset([videos], work, config=SMALL, annotator=annotator, progress=False, log=lambda s: None)
    assert again.clips_written == 0 and again.clips_done_before == 8 and len(calls) == 1


def test_shards_partition_the_videos(built, videos, tmp_path):
    out, _, _ = built
    expected = {r.clip_id: r for r in read_manifest(out / "manifest.jsonl")}
    table = [{"clip_id": cid, "captions": r.captions, "global_caption": r.global_caption} for cid, r in expected.items()]
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("".join(json.dumps(e) + "\n" for e in table))
    parts = []
    for i in range(2):
        s = build_dataset([videos], tmp_path / "sharded", config=SMALL, annotations=annotations, shard=(i, 2),
                          progress=False, log=lambda s: None)
        assert s.other_shards == 1 and s.clips_written == 4
        parts.append({r.clip_id for r in read_manifest(tmp_path / "sharded" / f"manifest.{i}-of-2.jsonl")})
    assert not parts[0] & parts[1] and parts[0] | parts[1] == set(expected)
    merged = tmp_path / "merged.jsonl"
    assert merge_manifests(sorted((tmp_path / "sharded").glob("manifest.*")), merged) == 8
    assert {r.clip_id: r.captions for r in read_manifest(merged)} == {k: r.captions for k, r in expected.items()}
    with pytest.raises(DatasetError, match="shard"):
        build_dataset([videos], tmp_path / "x", config=SMALL, annotations=annotations, shard=(2, 2))


def test_plan_then_annotations_by_source_and_segment(videos, tmp_path):
    summary = build_dataset([videos], tmp_path, config=SMALL, plan_only=True, progress=False, log=lambda s: None)
    plan = [json.loads(line) for line in (tmp_path / "plan.jsonl").read_text().splitlines()]
    assert summary.clips_planned == len(plan) == 8
    assert plan[0]["timestamps"] == [0.0, 1 / 3, 2 / 3]
    # captions made elsewhere, keyed by file name + segment; one caption stands for every sample frame
    entries = [{"source": p["source"].split("/")[-1], "segment": p["segment"], "captions": [f"clip {p['segment']}"]}
               for p in plan if "rings" in p["source"]]
    entries.append({"clip_id": next(p["clip_id"] for p in plan if "stripes" in p["source"]),
                    "captions": ["one", "two", "three"], "global_caption": "g"})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(entries))
    s = build_dataset([videos], tmp_path, config=SMALL, annotations=path, progress=False, log=lambda s: None)
    assert s.clips_written == 5 and len(s.clips_failed) == 3  # the 3 stripes clips nobody annotated
    records = {r.clip_id: r for r in read_manifest(tmp_path / "manifest.jsonl")}
    assert sorted(r.captions[0] for r in records.values() if "rings" in r.source) == [f"clip {k}" for k in range(4)]
    assert [r.captions for r in records.values() if "stripes" in r.source] == [["one", "two", "three"]]


def _record(captions, samples, frames):
    return ClipRecord(clip_id="c", source="v.mp4", source_fps=16.0, start_frame=0, end_frame=frames[-1] + 1,
                      sample_frames=samples, captions=captions, frame_indices=frames)


def test_clip_latent_captions_follow_the_timeline_majority_rule():
    # 17 training frames = 5 latents: [0], [1-4], [5-8], [9-12], [13-16]
    rec = _record(["a", "a", "b", "c", "c"], [0, 4, 8, 12, 16], list(range(17)))
    # nearest sample per frame (earlier on ties): 0-6 a, 7-10 b, 11-16 c
    # latents: [0] a; [1-4] a; [5-8] a,a,b,b -> tie, earlier a; [9-12] b,b,c,c -> tie, earlier b; [13-16] c
    assert clip_latent_captions(rec) == (["a", "b", "c"], [0, 0, 0, 1, 2])
    # here "c" covers only frames 15-16, half of the last latent, and loses the tie: it is merged away
    rec = _record(["a", "a", "b", "b", "c"], [0, 4, 8, 12, 16], list(range(17)))
    assert clip_latent_captions(rec) == (["a", "b"], [0, 0, 0, 1, 1])
    # a caption owning no latent in the middle is merged into its predecessor
    # (per frame: 0-2 a, 3-5 x, 6-11 a, 12-16 b; latent [1-4] is a,a,x,x -> a, [5-8] is x,a,a,a -> a)
    rec = _record(["a", "x", "a", "b"], [0, 5, 6, 16], list(range(17)))
    assert clip_latent_captions(rec) == (["a", "b"], [0, 0, 0, 0, 1])


def test_manifest_writer_appends_and_reader_rejects_bad_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    rec = _record(["a"], [0], list(range(5)))
    with ManifestWriter(path) as w:
        w.append(rec)
        w.append(rec)  # a clip is written once
    assert len(path.read_text().splitlines()) == 1
    path.write_text(path.read_text() + "not json\n" + rec.to_json() + "\n")
    with pytest.raises(DatasetError, match=r"m.jsonl:2"):
        read_manifest(path)
    with pytest.raises(DatasetError, match="4k\\+1"):
        _record(["a"], [0], list(range(6)))
    with pytest.raises(DatasetError, match="one caption per annotated frame"):
        _record(["a", "b"], [0], list(range(5)))


def test_latent_cache_from_the_manifest(built, tmp_path):
    from framecap_core.testing import make_tiny_vae

    out, _, _ = built
    manifest = out / "manifest.jsonl"
    records = read_manifest(manifest)
    vae = make_tiny_vae(0, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    dim = 16

    def encode_text(captions):
        return torch.stack([torch.full((4, dim), float(len(c))) for c in captions])

    summary = build_latent_cache(manifest, tmp_path / "cache", vae=vae, encode_text=encode_text, height=32, width=32,
                                 shard_size=3, progress=False)
    assert (summary.cached, summary.skipped, summary.failed) == (8, 0, 0)
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 8 and len({m["shard"] for m in cache.meta.values()}) == 3
    item = cache[cache.clip_ids.index(records[0].clip_id)]
    assert item["latents"].shape == (16, 4, 4, 4)  # 13 frames -> 4 latents, 32x32 -> 4x4
    frames = read_clip_frames(records[0], out, 32, 32)
    assert frames.shape == (13, 32, 32, 3)
    assert torch.allclose(item["latents"], encode_video_latents(vae, frames), atol=1e-5)
    # normalized with the VAE's statistics: undo it and compare with the raw VAE mean
    raw = vae.encode(torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(-1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(-1, 1, 1, 1)
    assert torch.allclose(item["latents"] * std + mean, raw[0], atol=1e-4)
    unique, index = clip_latent_captions(records[0])
    assert item["caption_index"].tolist() == index
    assert item["text"][:, 0, 0].tolist() == [float(len(c)) for c in unique]
    # the empty caption's embedding is cached too (caption dropout trains the unconditional pass on it)
    assert torch.equal(cache.empty_caption(), encode_text([""])[0])
    # resumable: nothing is re-encoded
    again = build_latent_cache(manifest, tmp_path / "cache", vae=vae, encode_text=encode_text, height=32, width=32,
                               progress=False)
    assert (again.cached, again.skipped) == (0, 8)
    with pytest.raises(DatasetError, match="32x32"):
        build_latent_cache(manifest, tmp_path / "cache", vae=vae, encode_text=encode_text, height=48, width=48,
                           progress=False)
    # sharded cache builds land in separate indexes that LatentCache reads together
    small = tmp_path / "small.jsonl"
    small.write_text("".join(r.to_json() + "\n" for r in records[:3]))
    for i in range(2):
        build_latent_cache(small, tmp_path / "sharded", vae=vae, encode_text=encode_text, height=32, width=32,
                           shard=(i, 2), progress=False)
    assert sorted(LatentCache(tmp_path / "sharded").clip_ids) == sorted(r.clip_id for r in records[:3])


def test_cache_writer_rejects_bad_shapes(tmp_path):
    with CacheWriter(tmp_path) as w:
        with pytest.raises(DatasetError, match="caption_index"):
            w.add("x", torch.zeros(16, 3, 2, 2), torch.zeros(2, 4, 8), [0, 1, 2])
        with pytest.raises(DatasetError, match="not finite"):
            w.add("x", torch.full((16, 3, 2, 2), float("nan")), torch.zeros(2, 4, 8), [0, 1, 1])


def _build_dataset_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "training" / "build_dataset.py"
    spec = importlib.util.spec_from_file_location("framecap_build_dataset", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


# The SMALL recipe as build_dataset.py flags.
SMALL_FLAGS = ["--min-duration", "2", "--clip-seconds", "1", "--phash-frames", "4", "--phash-threshold", "8",
               "--no-progress"]


def test_build_dataset_script(built, videos, tmp_path, capsys):
    script = _build_dataset_script()
    out, _, _ = built
    annotations = tmp_path / "ann.jsonl"
    annotations.write_text("".join(
        json.dumps({"clip_id": r.clip_id, "captions": r.captions}) + "\n" for r in read_manifest(out / "manifest.jsonl")
    ))
    small = SMALL_FLAGS
    for i in range(2):
        assert script.main([str(videos), "--out", str(tmp_path), "--shard", f"{i}/2", "--annotations",
                            str(annotations), *small]) == 0
    assert script.main(["--merge", *map(str, sorted(tmp_path.glob("manifest.*-of-2.jsonl"))), "--out",
                        str(tmp_path)]) == 0
    assert len(read_manifest(tmp_path / "manifest.jsonl")) == 8
    report = capsys.readouterr().out
    assert "clips written: 4" in report and "near-duplicates dropped: 1" in report and "merged 2 manifests" in report
    with pytest.raises(SystemExit):
        script.main([str(videos), "--out", str(tmp_path), "--shard", "2/2"])
    assert script.main([str(videos), "--out", str(tmp_path), "--trim", "0.7", *small]) == 2  # DatasetError, exit 2


def test_cache_stores_caption_rows_up_to_the_longest_caption(tmp_path):
    g = torch.Generator().manual_seed(0)
    text = torch.zeros(3, 16, 8)
    for u, tokens in enumerate((3, 7, 5)):  # zero past each caption's token count, as Wan's encoder gives
        text[u, :tokens] = torch.randn(tokens, 8, generator=g)
    latents = torch.randn(16, 4, 2, 2, generator=g)
    for dtype, atol in (("float32", 0.0), ("bfloat16", 1e-2)):
        with CacheWriter(tmp_path / dtype, text_dtype=dtype) as w:
            w.add("c", latents, text, [0, 1, 2, 2], ["a", "b", "c"])
        cache = LatentCache(tmp_path / dtype)
        assert cache.meta["c"]["text_stored"] == 7 and cache.text_len == 16
        item = cache[0]
        assert item["text"].shape == (3, 16, 8) and item["text"].dtype == torch.float32
        assert torch.allclose(item["text"], text, atol=atol, rtol=atol) and torch.equal(item["latents"], latents)
        assert torch.count_nonzero(item["text"][:, 7:]) == 0


def test_training_frames_alternate_two_and_one_source_frames_at_24_to_16_fps():
    """24 -> 16 fps takes every 1.5th source frame: the gaps alternate 2, 1 (half-up), never 2,1,1,2 (half-even)."""
    from framecap_core.data import nearest_frame

    plan = plan_clips(VideoInfo("/v/long.mp4", 24.0, 20 * 60 * 24, 64, 64), DatasetConfig())[0]
    gaps = np.diff(plan.frame_indices).tolist()
    assert gaps == [2, 1] * (len(gaps) // 2)
    assert [nearest_frame(x) for x in (0.5, 1.5, 2.5, 4.5, 2.49)] == [1, 2, 3, 5, 2]
    # 30 -> 16 fps: gaps of 2 and 1 only, and the clip's span is the same length in seconds
    plan30 = plan_clips(VideoInfo("/v/x.mp4", 30.0, 20 * 60 * 30, 64, 64), DatasetConfig())[0]
    assert set(np.diff(plan30.frame_indices).tolist()) == {1, 2}


def _annotations_for(records, path):
    path.write_text("".join(json.dumps({"clip_id": r.clip_id, "captions": r.captions,
                                        "global_caption": r.global_caption}) + "\n" for r in records))
    return path


def test_clip_ids_do_not_depend_on_where_the_videos_are(built, videos, tmp_path):
    """The same videos under another folder keep their clip ids, so annotations made for them still match."""
    out, _, _ = built
    records = read_manifest(out / "manifest.jsonl")
    annotations = _annotations_for(records, tmp_path / "ann.jsonl")
    moved = tmp_path / "elsewhere" / "mounted" / "raw"
    shutil.copytree(videos, moved)
    summary = build_dataset([moved], tmp_path / "out", config=SMALL, annotations=annotations, progress=False,
                            log=lambda s: None)
    assert summary.clips_failed == [] and summary.clips_written == len(records) == 8
    assert {r.clip_id for r in read_manifest(tmp_path / "out" / "manifest.jsonl")} == {r.clip_id for r in records}
    # ids hash the name relative to the source folder: a sub-folder is part of the name
    assert clip_id_for("sub/a.mp4", 0) == clip_id_for(Path("sub") / "a.mp4", 0) != clip_id_for("a.mp4", 0)


def test_shards_built_under_two_paths_merge_to_one_build_byte_for_byte(built, videos, tmp_path):
    out, _, _ = built
    annotations = _annotations_for(read_manifest(out / "manifest.jsonl"), tmp_path / "ann.jsonl")
    kwargs = dict(config=SMALL, annotations=annotations, progress=False, log=lambda s: None)
    for i, machine in enumerate(("machine_a", "mnt/machine_b")):  # each machine mounts the videos elsewhere
        shutil.copytree(videos, tmp_path / machine / "raw")
        build_dataset([tmp_path / machine / "raw"], tmp_path / machine / "out", shard=(i, 2), **kwargs)
    shutil.copytree(videos, tmp_path / "one" / "raw")
    build_dataset([tmp_path / "one" / "raw"], tmp_path / "one" / "out", **kwargs)
    shards = [tmp_path / "machine_a" / "out" / "manifest.0-of-2.jsonl",
              tmp_path / "mnt/machine_b" / "out" / "manifest.1-of-2.jsonl"]
    for order in (shards, shards[::-1]):  # whatever order the shards are given in
        assert merge_manifests(order, tmp_path / "one" / "merged.jsonl") == 8
        merged = (tmp_path / "one" / "merged.jsonl").read_bytes()
        assert merged == (tmp_path / "one" / "out" / "manifest.jsonl").read_bytes()
    # the manifest does not hold the mount point: sources are relative to the manifest's folder
    assert all(not Path(r.source).is_absolute() for r in read_manifest(tmp_path / "one" / "merged.jsonl"))


def test_a_retried_clip_goes_back_to_its_place_in_the_manifest(built, videos, tmp_path):
    out, _, _ = built
    records = read_manifest(out / "manifest.jsonl")
    partial = _annotations_for(records[1:], tmp_path / "partial.jsonl")  # the first clip fails on the first run
    kwargs = dict(config=SMALL, progress=False, log=lambda s: None)
    first = build_dataset([videos], tmp_path / "out", annotations=partial, **kwargs)
    assert len(first.clips_failed) == 1
    build_dataset([videos], tmp_path / "out", annotations=_annotations_for(records, tmp_path / "all.jsonl"), **kwargs)
    build_dataset([videos], tmp_path / "one", annotations=tmp_path / "all.jsonl", **kwargs)
    assert (tmp_path / "out" / "manifest.jsonl").read_bytes() == (tmp_path / "one" / "manifest.jsonl").read_bytes()


def test_build_summary_names_what_it_dropped_and_why_nothing_was_built(built, videos, tmp_path, capsys):
    _, summary, _ = built
    report = summary.report()
    assert f"near-duplicate: {videos / 'b_stripes_copy.mp4'} (duplicate of {videos / 'a_stripes.mp4'})" in report
    assert f"shorter than the minimum: {videos / 'd_short.mp4'}" in report
    assert f"unreadable: {videos / 'e_corrupt.mp4'}" in report
    # the paper's 600 s minimum on a folder of short videos: nothing kept, and the message names --min-duration
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "training" / "build_dataset.py"
    spec = importlib.util.spec_from_file_location("framecap_build_dataset_min", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(videos), "--out", str(tmp_path), "--plan-only", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "--min-duration" in err and "600 s or shorter" in err
    with pytest.raises(SystemExit):
        script.main([str(videos), "--out", str(tmp_path), "--shard", "8/8"])
    assert "numbered from 0" in capsys.readouterr().err


def test_build_dataset_script_annotates_with_a_local_openai_server(videos, tmp_path, monkeypatch):
    import fake_http
    from fake_openai import FakeOpenAI, auto_annotation

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    foreign = fake_http.local_only(monkeypatch)
    script = _build_dataset_script()
    assert script.parse_args(["v", "--out", "o", "--gemini-model", "g", "--gemini-base-url", "u"]).model == "g"
    with FakeOpenAI(default=auto_annotation(shared=2, caption="A drifting colour field")) as server:
        assert script.main([str(videos), "--out", str(tmp_path), "--annotator", "openai", "--base-url", server.url,
                            *SMALL_FLAGS]) == 0
    records = read_manifest(tmp_path / "manifest.jsonl")
    assert len(records) == server.calls == 8  # 4 clips from each of a and c, one request each
    for r in records:
        assert r.captions == ["A drifting colour field, frames 0-1."] * 2 + ["A drifting colour field, frames 2-2."]
        assert r.global_caption == "A drifting colour field, 3 frames."
    for request in server.requests:
        assert request.path == "/v1/chat/completions"
        assert request.model == "qwen2.5vl:7b"  # the default vision model
        assert "authorization" not in request.headers
        assert request.messages()[0] == {"role": "system", "content": annotation_system_instruction(120)}
        images = request.images()  # base64 data URLs, decoded
        assert [mime for mime, _ in images] == ["image/jpeg"] * 3
        assert all(data[:2] == b"\xff\xd8" for _, data in images)  # JPEG
    assert foreign == []


def test_build_without_annotations_or_gemini_key_names_this_scripts_options(videos, tmp_path, capsys, monkeypatch):
    import importlib.util

    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    path = Path(__file__).resolve().parents[1] / "training" / "build_dataset.py"
    spec = importlib.util.spec_from_file_location("framecap_build_dataset_nokey", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(videos), "--out", str(tmp_path), "--min-duration", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "GEMINI_API_KEY" in err and "--annotator openai" in err and "--plan-only" in err and "--annotations" in err
    assert "--backend offline" not in err and not (tmp_path / "manifest.jsonl").exists()
