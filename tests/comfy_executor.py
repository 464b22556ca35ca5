"""A small stand-in for ComfyUI's executor, to run UI-format workflows in tests without ComfyUI.

It does what ComfyUI does with a saved graph, and no more: widget values are matched to the node's widget inputs in
``INPUT_TYPES`` order (required, then optional), skipping the extra ``control_after_generate`` value the frontend
stores after a seed widget; linked inputs take the upstream node's output; combo values must be in their list and
numbers within min / max (ComfyUI validates both before running); nodes run in dependency order; frontend-only nodes
(notes, reroutes) and muted / bypassed nodes are skipped.

:func:`workflow_to_api` converts the same graph to ComfyUI's API ("prompt") format given ``/object_info``, for the
test that runs workflows in a real ComfyUI server.
"""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SKIPPED_MODES = {2, 4}  # muted, bypassed


class WorkflowError(AssertionError):
    pass


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def ordered_inputs(input_types: dict, order: dict | None = None) -> list[tuple[str, Any, str]]:
    """``(name, spec, section)`` in the frontend's order: required then optional (``order`` = object_info's
    ``input_order`` when given)."""
    out = []
    for section in ("required", "optional"):
        specs = input_types.get(section, {}) or {}
        names = (order or {}).get(section) or list(specs)
        out.extend((name, specs[name], section) for name in names)
    return out


def _has_seed_control(name: str, spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def map_widgets(node: dict, input_types: dict, order: dict | None = None) -> dict[str, Any]:
    """The node's widget values by input name, checked against their specs."""
    values = list(node.get("widgets_values") or [])
    if isinstance(node.get("widgets_values"), dict):
        raise WorkflowError(f"node {node['id']} ({node['type']}): dict widgets_values are not supported")
    mapped: dict[str, Any] = {}
    index = 0
    for name, spec, _ in ordered_inputs(input_types, order):
        if not is_widget(spec):
            continue
        if index >= len(values):
            raise WorkflowError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
        value = values[index]
        index += 1
        if _has_seed_control(name, spec):
            if index >= len(values) or values[index] not in ("fixed", "increment", "decrement", "randomize"):
                raise WorkflowError(f"node {node['id']} ({node['type']}): missing control_after_generate after {name}")
            index += 1
        check_value(node, name, spec, value)
        mapped[name] = value
    if index != len(values):
        raise WorkflowError(
            f"node {node['id']} ({node['type']}): {len(values)} widget values for {index} widget slots: {values}"
        )
    return mapped


def check_value(node: dict, name: str, spec, value) -> None:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    where = f"node {node['id']} ({node['type']}) input {name!r}"
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        choices = list(kind) if isinstance(kind, (list, tuple)) else list(options.get("options", []))
        if value not in choices:
            raise WorkflowError(f"{where}: {value!r} is not one of {choices}")
    elif kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkflowError(f"{where}: {value!r} is not a number")
        if kind == "INT" and not float(value).is_integer():
            raise WorkflowError(f"{where}: {value!r} is not an integer")
        if "min" in options and value < options["min"]:
            raise WorkflowError(f"{where}: {value} < min {options['min']}")
        if "max" in options and value > options["max"]:
            raise WorkflowError(f"{where}: {value} > max {options['max']}")
    elif kind == "STRING" and not isinstance(value, str):
        raise WorkflowError(f"{where}: {value!r} is not a string")
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        raise WorkflowError(f"{where}: {value!r} is not a boolean")


def _runnable(workflow: dict) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY and n.get("mode", 0) not in SKIPPED_MODES]


def _links(workflow: dict) -> dict[int, list]:
    links = {}
    for link in workflow["links"]:
        if not (isinstance(link, list) and len(link) == 6):
            raise WorkflowError(f"link {link!r} is not [id, from_node, from_slot, to_node, to_slot, type]")
        links[link[0]] = link
    return links


def _linked_inputs(node: dict, links: dict[int, list]) -> dict[str, tuple[int, int]]:
    out = {}
    for slot, entry in enumerate(node.get("inputs") or []):
        link_id = entry.get("link")
        if link_id is None:
            continue
        link = links.get(link_id)
        if link is None or link[3] != node["id"] or link[4] != slot:
            raise WorkflowError(f"node {node['id']} input {entry['name']!r}: link {link_id} does not point here")
        out[entry["name"]] = (link[1], link[2])
    return out


def topological_order(nodes: list[dict], links: dict[int, list]) -> list[dict]:
    by_id = {n["id"]: n for n in nodes}
    deps = {n["id"]: {src for src, _ in _linked_inputs(n, links).values()} for n in nodes}
    order, done = [], set()
    while len(order) < len(nodes):
        ready = [i for i in sorted(deps) if i not in done and deps[i] <= done]
        if not ready:
            raise WorkflowError(f"cycle or dangling link among nodes {sorted(set(deps) - done)}")
        for i in ready:
            order.append(by_id[i])
            done.add(i)
    return order


def run_workflow(workflow: dict, mappings: dict, overrides: dict | None = None) -> dict[int, dict]:
    """Execute a UI-format workflow. ``overrides``: ``{node_type: {input: value}}`` applied after the widgets.

    Returns ``{node_id: {"outputs": tuple, "ui": dict | None}}``.
    """
    links = _links(workflow)
    nodes = _runnable(workflow)
    results: dict[int, dict] = {}
    for node in topological_order(nodes, links):
        cls = mappings.get(node["type"])
        if cls is None:
            raise WorkflowError(f"node {node['id']}: unknown type {node['type']!r}")
        input_types = cls.INPUT_TYPES()
        kwargs = map_widgets(node, input_types)
        linked = _linked_inputs(node, links)
        for name, spec, section in ordered_inputs(input_types):
            if name in linked:
                source, slot = linked[name]
                kwargs[name] = results[source]["outputs"][slot]
            elif not is_widget(spec) and section == "required":
                raise WorkflowError(f"node {node['id']} ({node['type']}): required input {name!r} not connected")
        kwargs.update((overrides or {}).get(node["type"], {}))
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        ui = None
        if isinstance(out, dict):
            ui, out = out.get("ui"), out.get("result", ())
        if not isinstance(out, tuple) or len(out) != len(cls.RETURN_TYPES):
            raise WorkflowError(f"node {node['id']} ({node['type']}) returned {type(out).__name__} of wrong length")
        results[node["id"]] = {"outputs": out, "ui": ui}
    return results


def workflow_to_api(workflow: dict, object_info: dict, overrides: dict | None = None) -> dict[str, dict]:
    """UI-format workflow -> API format (``{"id": {"class_type", "inputs"}}``) using ComfyUI's ``/object_info``."""
    links = _links(workflow)
    prompt: dict[str, dict] = {}
    for node in _runnable(workflow):
        info = object_info.get(node["type"])
        if info is None:
            raise WorkflowError(f"ComfyUI has no node {node['type']!r} (is the pack loaded?)")
        inputs: dict[str, Any] = dict(map_widgets(node, info["input"], info.get("input_order")))
        for name, (source, slot) in _linked_inputs(node, links).items():
            inputs[name] = [str(source), slot]
        inputs.update((overrides or {}).get(node["type"], {}))
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load_pack(root, name: str = "framecap-pack"):
    """Import the repository folder as ComfyUI imports a custom node pack: a module named after its folder (a name
    that is no valid identifier), loaded from ``<root>/__init__.py`` with relative imports inside."""
    import importlib.util
    import sys
    from pathlib import Path

    if name in sys.modules:
        return sys.modules[name]
    root = Path(root)
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
