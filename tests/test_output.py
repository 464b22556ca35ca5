"""The one output writer: mp4, timeline JSON and storyboard, beside each other, written atomically."""

import json

import numpy as np
import pytest

from framecap_core.errors import ConfigError
from framecap_core.output import scene_frames, timeline_path, write_outputs
from framecap_core.timeline import parse_timeline
from framecap_core.video import read_mp4, storyboard_path


def _frames(n: int) -> np.ndarray:
    return np.stack([np.full((16, 16, 3), 10 * i, dtype=np.uint8) for i in range(n)])


def test_scene_frame_is_the_middle_of_each_scene():
    timeline = parse_timeline({"fps": 16, "num_frames": 17, "scenes": [
        {"start": 0, "end": 5, "caption": "a"}, {"start": 5, "end": 17, "caption": "b"}]})
    picked = scene_frames(_frames(17), timeline)
    assert [int(f[0, 0, 0]) for f in picked] == [20, 100]  # frames 2 and 10


def test_write_outputs_names_and_contents(tmp_path):
    timeline = parse_timeline("a red fox | the fox jumps", num_frames=17)
    files = write_outputs(_frames(17), tmp_path / "out" / "clip.mp4", fps=16, timeline=timeline,
                          window_spans=[(0, 3), (2, 5)], legend={"seed": 1})
    assert files.paths() == [tmp_path / "out" / "clip.mp4", tmp_path / "out" / "clip.timeline.json",
                             tmp_path / "out" / "clip.storyboard.png"]
    assert files.storyboard == storyboard_path(files.video) and files.timeline == timeline_path(files.video)
    assert read_mp4(files.video).shape == (17, 16, 16, 3)
    assert json.loads(files.timeline.read_text()) == timeline.to_dict()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4", "clip.storyboard.png",
                                                                     "clip.timeline.json"]  # no temp files left

    only = write_outputs(_frames(17), tmp_path / "v.mp4", fps=16, timeline=timeline, storyboard=False)
    assert only.storyboard is None and only.timeline.is_file()
    assert write_outputs(_frames(5), tmp_path / "w.mp4", fps=16).paths() == [tmp_path / "w.mp4"]


def test_a_storyboard_of_another_video_is_refused(tmp_path):
    timeline = parse_timeline("a red fox", num_frames=17)
    with pytest.raises(ConfigError, match="17 frames but the video 9"):
        write_outputs(_frames(9), tmp_path / "v.mp4", fps=16, timeline=timeline)
