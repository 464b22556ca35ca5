import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_core_is_cheap():
    code = "import sys, framecap_core; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_errors_share_a_base():
    errors = importlib.import_module("framecap_core.errors")
    for name in ("TimelineError", "ConfigError", "ModelLoadError", "PromptBuildError", "DatasetError"):
        assert issubclass(getattr(errors, name), errors.FrameCapError)


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "framecap_core", "--help"], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    assert "framecap" in out


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path):
    import os

    import pytest

    from framecap_core.fileio import atomic_path, atomic_write_text

    target = tmp_path / "out" / "video.txt"
    atomic_write_text(target, "done")
    assert target.read_text() == "done"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not the 0600 of a temp file
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out" / "half.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["video.txt"]
