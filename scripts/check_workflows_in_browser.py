"""Open every bundled workflow in ComfyUI's real frontend (headless Chromium, Playwright) and check what a user sees.

    python scripts/check_workflows_in_browser.py --comfyui /path/to/ComfyUI --python /path/to/comfy/python \
        --out browser_check [--run framecap_timeline_to_video]

Starts ComfyUI (``--cpu``, a free local port, this pack linked into a temporary custom_nodes folder, empty model
folders, a temporary user directory), then opens the template browser as a user does (the sidebar's Templates
button), picks the "framecap" category, checks that every bundled workflow has a card, clicks one card and checks that
the workflow it opens is the bundled one (``template_browser*.png``). Then for each workflow: loads it as the template
browser does, records the missing-models dialog (which files it offers), whether the notes are on screen, the overlap
widget's step and what a typed 33 becomes, and takes a screenshot. The thumbnails are fetched from
``/api/workflow_templates/framecap/<name>.jpg``. With ``--run`` one toy workflow is queued (and is the card opened
from the template browser) and the Save node's video element is checked. Writes ``<out>/report.json`` and PNGs.

Needs ``pip install playwright`` and a Chromium (``--chromium``, default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_comfyui(comfy: Path, python: str, work: Path) -> tuple[subprocess.Popen, str]:
    (work / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = work / "custom_nodes" / "framecap"
    if not link.exists():
        os.symlink(ROOT, link, target_is_directory=True)
    (work / "extra_model_paths.yaml").write_text(
        f"framecap_check:\n  base_path: {work}\n  custom_nodes: custom_nodes/\n")
    # A user directory of its own: the checkout's settings (whether the first-visit template dialog opens, saved
    # workflows) neither change what the check sees nor get changed by it. The tutorial counts as done, so the page
    # opens on the default graph and the check opens the template browser itself.
    (work / "user" / "default").mkdir(parents=True, exist_ok=True)
    (work / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = _free_port()
    log = open(work / "comfyui.log", "w")
    server = subprocess.Popen(
        [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         "--preview-method", "auto", "--extra-model-paths-config", str(work / "extra_model_paths.yaml"),
         "--output-directory", str(work / "output"), "--temp-directory", str(work / "temp"),
         "--user-directory", str(work / "user")],
        cwd=comfy, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/object_info", timeout=30).read()
            return server, url
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(1)
    server.terminate()
    raise SystemExit("ComfyUI did not start:\n" + (work / "comfyui.log").read_text()[-3000:])


APP = "(window.app ?? window.comfyAPI.app.app)"
# The app object exists before the node definitions arrive; a workflow loaded earlier shows "missing nodes".
# (a boolean: Playwright calls a function-valued answer, and a node type is a class)
READY = "!!(window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph)?.registered_node_types?.FrameCapSaveVideo"

INSPECT = """async (wf) => {
  const app = __APP__;
  await app.loadGraphData(wf, true, true, null, {showMissingModelsDialog: true});
  await new Promise(r => setTimeout(r, 1500));
  const canvas = app.canvas, ds = canvas.ds;
  const width = canvas.canvas.clientWidth, height = canvas.canvas.clientHeight;
  const onScreen = (n) => {
    const x = (n.pos[0] + ds.offset[0]) * ds.scale, y = (n.pos[1] + ds.offset[1]) * ds.scale;
    return x >= 0 && y >= 0 && x < width && y < height;
  };
  const nodes = app.graph._nodes;
  const notes = nodes.filter(n => n.type === "Note" || n.type === "MarkdownNote").map(n => ({title: n.title, pos: n.pos,
    on_screen: onScreen(n)}));
  const overlaps = [];
  for (const n of nodes) {
    const w = (n.widgets || []).find(w => w.name === "overlap");
    if (!w) continue;
    w.setValue ? w.setValue(33, {e: null, node: n, canvas}) : (w.value = 33);
    overlaps.push({node: n.type, step: w.options?.step, step2: w.options?.step2, round: w.options?.round,
                   typed_33_becomes: w.value});
  }
  const dialogs = Array.from(document.querySelectorAll(".p-dialog")).map(d => d.innerText).join("\\n");
  return {notes, overlaps, dialog: dialogs || null};
}""".replace("__APP__", APP)


TEMPLATE_TO_OPEN = "framecap_timeline_to_video"
NODE_TYPES = f"() => {APP}.graph._nodes.map(n => n.type)"


def browse_templates(page, out: Path, stem: str) -> dict:
    """What a user gets from the template browser: the sidebar's Templates button, the pack's category under
    "Custom Nodes" (named after its custom_nodes folder, here ``framecap``), one card per bundled workflow; clicking
    a card opens that workflow in a new tab."""
    page.get_by_role("button", name="Templates", exact=True).first.click(timeout=10_000)
    dialog = page.get_by_role("dialog").filter(has=page.get_by_role("option", name="framecap", exact=True))
    dialog.get_by_role("option", name="framecap", exact=True).click(timeout=10_000)
    cards = dialog.locator("[data-testid^='template-workflow-']")
    cards.first.wait_for(timeout=10_000)
    page.wait_for_timeout(2000)  # the thumbnails
    page.screenshot(path=str(out / "template_browser.png"))
    shown = [c.get_attribute("data-testid").removeprefix("template-workflow-") for c in cards.all()]
    bundled = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    dialog.locator(f"[data-testid='template-workflow-{stem}']").click(timeout=10_000)
    expected = sorted(n["type"] for n in json.loads((ROOT / "workflows" / f"{stem}.json").read_text())["nodes"])
    page.wait_for_function(f"() => {APP}.graph._nodes.some(n => n.type.startsWith('FrameCap'))", timeout=30_000)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(out / "template_browser_opened.png"))
    opened = sorted(page.evaluate(NODE_TYPES))
    return {"cards": shown, "missing_cards": [b for b in bundled if b not in shown], "opened": stem,
            "opened_nodes": opened, "opened_matches_file": opened == expected,
            "dialog_closed": not dialog.is_visible()}


def check(args) -> dict:
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="framecap_browser_"))
    server, url = start_comfyui(Path(args.comfyui).resolve(), args.python, work)
    report: dict = {"url": url, "workflows": {}}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.wait_for_function(READY, timeout=300_000)
            page.wait_for_timeout(3000)
            try:
                report["template_browser"] = browse_templates(page, out, args.run or TEMPLATE_TO_OPEN)
            except Exception as exc:  # noqa: BLE001 - recorded, the per-workflow checks still run
                page.screenshot(path=str(out / "template_browser_failed.png"))
                report["template_browser"] = f"not shown: {exc}"
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)
            for path in sorted((ROOT / "workflows").glob("*.json")):
                wf = json.loads(path.read_text())
                result = page.evaluate(INSPECT, wf)
                page.screenshot(path=str(out / f"{path.stem}_open.png"))
                thumb = urllib.request.urlopen(f"{url}/api/workflow_templates/framecap/{path.stem}.jpg", timeout=30)
                result["thumbnail_status"] = thumb.status
                result["offered_downloads"] = [m["name"] for m in wf.get("models", [])
                                               if result["dialog"] and m["name"] in result["dialog"]]
                report["workflows"][path.stem] = result
                page.keyboard.press("Escape")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / f"{path.stem}_canvas.png"))
            page.goto(f"{url}/api/workflow_templates/framecap/framecap_native_wan.jpg")
            page.screenshot(path=str(out / "thumbnail_native.png"))
            if args.run:
                page.goto(url)
                page.wait_for_function(READY, timeout=300_000)
                page.wait_for_timeout(3000)
                page.keyboard.press("Escape")
                wf = json.loads((ROOT / "workflows" / f"{args.run}.json").read_text())
                page.evaluate(f"async (wf) => {{ await {APP}.loadGraphData(wf); }}", wf)
                page.keyboard.press("Escape")
                page.evaluate(f"async () => {{ await {APP}.queuePrompt(0, 1); }}")
                page.wait_for_function("document.querySelectorAll('video').length > 0", timeout=1_800_000)
                page.wait_for_timeout(3000)
                page.keyboard.press("Escape")
                page.evaluate(f"() => {{ const app = {APP}; const n = app.graph._nodes.find(n => n.type === "
                              "'FrameCapSaveVideo'); app.canvas.centerOnNode(n); app.canvas.setDirty(true, true); }")
                page.wait_for_timeout(2000)
                page.screenshot(path=str(out / f"{args.run}_ran.png"))
                report["run"] = {"workflow": args.run, "videos": page.evaluate(
                    "Array.from(document.querySelectorAll('video')).map(v => v.currentSrc || v.src)")}
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), required=not os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", "python"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", default="browser_check")
    parser.add_argument("--run", default=None, help="a workflow to queue (its stem), e.g. framecap_timeline_to_video")
    print(json.dumps(check(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
