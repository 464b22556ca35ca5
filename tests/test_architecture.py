"""docs/architecture.md matches the code: every module of framecap_core is named in it, every module it names exists,
and the library never imports ComfyUI or the node pack."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "framecap_core"


def _modules() -> set[str]:
    """``framecap_core/x.py`` for every module, ``framecap_core/pkg/`` for every subpackage (its ``__init__``)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        found.add(rel[: -len("__init__.py")] if path.name == "__init__.py" else rel)
    return found - {"framecap_core/"}


def _named() -> set[str]:
    return set(re.findall(r"`(framecap_core/[\w/]*?(?:\.py|/))`", DOC.read_text(encoding="utf-8")))


def test_every_module_is_in_the_architecture_document():
    missing = sorted(_modules() - _named())
    assert not missing, f"docs/architecture.md does not name {missing}; add each with the one concept it owns."


def test_every_module_the_document_names_exists():
    named = _named()
    assert len(named) >= 30  # the module table is there
    stale = sorted(name for name in named if not (ROOT / name).exists())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_the_library_never_imports_comfyui_or_the_nodes():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                assert name.split(".")[0] not in ("comfy", "comfy_extras", "nodes", "folder_paths", "server"), (
                    f"{path.relative_to(ROOT)} imports {name}")


RULES = {"grid", "choices", "timeline", "model_settings", "limits", "errors", "fileio"}
METHOD = {"sampling", "windows", "schedule", "text", "narrow_text", "attention", "backend", "metrics", "models", "convert",
          "comfy_files", "placement", "memory", "distributed"}
UPPER = {"pipeline", "output", "video", "prompting", "data", "training", "toyworld", "cli", "testing"}


def _imports(path: Path) -> set[str]:
    """First-level framecap_core modules imported by ``path`` (also lazily, inside functions)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = list(package[: len(package) - node.level + 1]) + (node.module or "").split(".")
            else:
                parts = (node.module or "").split(".")
            if parts[0] == "framecap_core":
                names = [parts[1]] if len(parts) > 1 and parts[1] else [a.name for a in node.names]
                found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("framecap_core."))
    return found


def test_layers_import_only_downwards():
    for path in PACKAGE.rglob("*.py"):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        used = _imports(path) - {top}
        if top in RULES:
            assert used <= RULES, f"{path.relative_to(ROOT)} (rules) imports {sorted(used - RULES)}"
        if top in METHOD:
            assert not used & UPPER, f"{path.relative_to(ROOT)} (method) imports {sorted(used & UPPER)}"
