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
