"""mp4 export and the storyboard image."""

from __future__ import annotations

import numpy as np
import pytest

from framecap_core.errors import ConfigError
from framecap_core.timeline import parse_timeline
from framecap_core.video import read_mp4, render_storyboard, storyboard_path, write_mp4


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    # Smooth content (H.264 keeps it close), different per frame so frame order is checkable.
    y, x = np.mgrid[0:h, 0:w]
    frames = np.stack([
        np.stack([(x * 255 // max(w - 1, 1) + 20 * i) % 256, y * 255 // max(h - 1, 1), np.full_like(x, 12 * i)], -1)
        for i in range(t)
    ])
    return frames.astype(np.uint8)


def test_mp4_round_trip_uint8():
    import tempfile
    from pathlib import Path

    frames = _frames(9, 32, 48)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_mp4(frames, Path(tmp) / "sub" / "clip.mp4", fps=16, quality=10)
        back = read_mp4(path)
        assert back.shape == (9, 32, 48, 3)
        # lossy, but the content (and its order) must survive: frame i is closest to frame i
        err = np.abs(back.astype(int)[:, None] - frames.astype(int)[None]).mean(axis=(2, 3, 4))
        assert (err.argmin(axis=1) == np.arange(9)).all()
        assert err.diagonal().max() < 12
        assert [p.name for p in Path(tmp, "sub").iterdir()] == ["clip.mp4"]


def test_mp4_float_input_and_odd_size(tmp_path):
    frames = _frames(5, 33, 45).astype(np.float32) / 255.0
    back = read_mp4(write_mp4(frames, tmp_path / "odd.mp4", fps=8))
    # yuv420p needs even sizes: padded by one replicated row / column, never resized
    assert back.shape == (5, 34, 46, 3)
    assert np.abs(back[:, :33, :45].astype(int) - np.rint(frames * 255).astype(int)).mean() < 12


def test_mp4_rejects_bad_frames(tmp_path):
    with pytest.raises(ConfigError, match=r"\[T, H, W, 3\]"):
        write_mp4(np.zeros((4, 8, 8)), tmp_path / "x.mp4")
    with pytest.raises(ConfigError, match="NaN"):
        write_mp4(np.full((2, 8, 8, 3), np.nan, dtype=np.float32), tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_mp4_is_atomic_on_error(tmp_path):
    frames = _frames(4, 16, 16)
    import framecap_core.video as video

    original = video._pad_even

    def exploding(array):
        out = original(array)

        class It:
            shape = out.shape

            def __iter__(self):
                yield out[0]
                raise RuntimeError("disk full")

        return It()

    video._pad_even = exploding
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            write_mp4(frames, tmp_path / "a.mp4")
    finally:
        video._pad_even = original
    assert list(tmp_path.iterdir()) == []  # neither the final file nor a temp file


def _timeline(num_scenes: int, long: bool = False):
    word = "a red fox walks through the snowy forest while the camera pans slowly "
    caps = [f"scene {i} " + word * (3 if long and i % 2 else 1) for i in range(num_scenes)]
    return parse_timeline(" | ".join(caps), num_frames=161)


def test_storyboard_regions(tmp_path):
    tl = _timeline(3)
    frames = [np.full((24, 40, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    spans = [(0, 21), (14, 35), (20, 41)]
    path = tmp_path / "v.storyboard.png"
    img = render_storyboard(tl, window_spans=spans, scene_frames=frames, path=path, title="t",
                            settings={"method": "pmwd", "steps": 4})
    from PIL import Image

    on_disk = np.asarray(Image.open(path).convert("RGB"))
    assert on_disk.shape == (img.height, img.width, 3)
    assert img.width == 1600 and img.height > 300
    arr = np.asarray(img).astype(int)
    background = np.array([250, 250, 248])
    # the timeline bar: a row fully covered by scene colours (no background) across the whole axis
    non_bg_rows = (np.abs(arr[:, 28:1572] - background).sum(-1) > 0).all(axis=1)
    assert non_bg_rows.any()
    # the three thumbnails: a black, a mid-grey and a white block exist
    for value in (0, 128, 255):
        assert ((arr == value).all(-1).sum()) > 200 * 30
    assert not list(tmp_path.glob(".*"))


def test_storyboard_many_scenes_grows_and_no_thumbnails(tmp_path):
    short = render_storyboard(_timeline(3), window_spans=[], scene_frames=None)
    many = render_storyboard(_timeline(20, long=True), window_spans=[(0, 21), (20, 41)], scene_frames=None)
    assert many.height > short.height + 20 * 20  # every scene gets its (wrapped) caption rows


def test_storyboard_checks_inputs():
    tl = _timeline(3)
    with pytest.raises(ConfigError, match="one per scene"):
        render_storyboard(tl, window_spans=[], scene_frames=[np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ConfigError, match="outside"):
        render_storyboard(tl, window_spans=[(30, 50)], scene_frames=None)


def test_storyboard_path():
    assert storyboard_path("out/video.mp4").as_posix() == "out/video.storyboard.png"
