"""``framecap prompt``: turn a story into a timeline of frame-level captions (Gemini, a local LLM server, or the
offline splitter)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

from framecap_core.errors import PromptBuildError
from framecap_core.limits import MAX_STORY_CHARS
from framecap_core.prompting.offline import check_story

DESCRIPTION = """\
Turn a short or detailed story into frame-level captions: a timeline of scenes, each a span of frames with one
self-contained caption (main subjects, actions, environment, shot size, camera angle). Prints the timeline as a
table and, with -o, writes the canonical timeline JSON that `framecap generate --timeline` reads.

Backends:
  gemini   Gemini (default model gemini-2.5-pro) with a JSON schema; the API key is read from the environment
           variable GEMINI_API_KEY or GOOGLE_API_KEY (never from the command line).
  openai   an OpenAI-compatible server you run: Ollama (the default --base-url, http://127.0.0.1:11434/v1),
           LM Studio, llama.cpp's llama-server, vLLM; --model names the model as the server does (default
           qwen2.5:7b). Same instruction, schema and checks as gemini. A key only if the server wants one, read
           from the environment variable OPENAI_API_KEY.
  offline  a deterministic splitter: sentences and event boundaries (then, finally, the camera pans, ...),
           durations in proportion to the text, no key and no network.
  auto     gemini when a key is set, otherwise offline (the default; never a local server unless asked).
"""

EPILOG = """\
examples:
  framecap prompt "A red fox trots through snow. Then it leaps onto a frozen pond." --seconds 10 --backend offline
  framecap prompt story.txt --seconds 30 -o timeline.json
  framecap prompt story.txt --seconds 30 --backend openai --model qwen2.5:14b -o timeline.json
  framecap prompt story.txt --backend openai --base-url http://127.0.0.1:1234/v1 --model qwen2.5-7b-instruct
  cat story.txt | framecap prompt - --seconds 30 --json > timeline.json
  framecap generate --timeline timeline.json ...
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prompt",
        help="story -> frame-level caption timeline (Gemini, a local LLM server, or offline)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "story",
        metavar="STORY",
        help="the story text, a path to a UTF-8 text file holding it, or - to read it from standard input",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="video length in seconds (default: 5)")
    parser.add_argument("--fps", type=int, default=16, help="frames per second (default: 16, Wan's rate)")
    parser.add_argument(
        "--backend",
        choices=("auto", "gemini", "openai", "offline"),
        default="auto",
        help="auto (default): gemini if GEMINI_API_KEY / GOOGLE_API_KEY is set, else offline; openai: a local "
        "OpenAI-compatible server (Ollama, LM Studio, llama.cpp, vLLM)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model name (default: gemini-2.5-pro for gemini, qwen2.5:7b for openai; as the server names it)",
    )
    parser.add_argument("--negative", default="", help="negative prompt stored in the timeline")
    parser.add_argument(
        "--max-caption-tokens",
        type=int,
        default=120,
        metavar="N",
        help="longest caption in words; longer captions are cut at a clause end (default: 120)",
    )
    parser.add_argument(
        "--min-scene-seconds", type=float, default=1.0, metavar="S", help="shortest scene (default: 1.0)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="LLM request timeout in seconds (default: 120)"
    )
    parser.add_argument(
        "--retries", type=int, default=3, metavar="N", help="LLM retries on rate limits / server errors (default: 3)"
    )
    parser.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="openai: the server's URL up to /v1 (default: Ollama's http://127.0.0.1:11434/v1); gemini: another "
        "endpoint (a proxy)",
    )
    parser.add_argument("-o", "--output", default=None, metavar="PATH", help="write the timeline JSON here")
    parser.add_argument("--json", action="store_true", help="print the timeline JSON on stdout instead of the table")
    parser.set_defaults(func=run)


# "stroy.txt", "notes/story", "C:\\story.md": one word that names a file rather than tells a story.
_FILE_NAME_RE = re.compile(r"^\S*(?:[/\\]\S*|\.[A-Za-z][A-Za-z0-9]{0,4})$")


def _decode_story(data: bytes, source: str) -> str:
    """UTF-8 text of at most MAX_STORY_CHARS characters (a byte-order mark is dropped), else a one-line error."""
    if len(data) > 4 * MAX_STORY_CHARS:  # UTF-8 takes at most 4 bytes a character
        raise PromptBuildError(
            f"{source} is more than {4 * MAX_STORY_CHARS:,} bytes, far more than a story of at most "
            f"{MAX_STORY_CHARS:,} characters; shorten it."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptBuildError(
            f"{source} is not UTF-8 text (byte 0x{data[exc.start]:02x} at position {exc.start}); save or convert it as "
            f"UTF-8, e.g. iconv -t UTF-8."
        ) from None


def _read_story(value: str) -> str:
    if value == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text stream without bytes underneath (tests, embedding)
            text = sys.stdin.read(MAX_STORY_CHARS + 1)
        else:
            text = _decode_story(stream.read(4 * MAX_STORY_CHARS + 1), "Standard input")
    else:
        text = value
        if value.strip() and "\n" not in value and len(value) < 4096:
            path = Path(value.strip()).expanduser()
            try:
                is_file, exists = path.is_file(), path.exists()
            except OSError:
                is_file = exists = False
            if is_file:
                try:
                    with path.open("rb") as handle:
                        data = handle.read(4 * MAX_STORY_CHARS + 1)
                except OSError as exc:
                    raise PromptBuildError(f"Cannot read the story file {value!r} ({exc.strerror or exc}).") from None
                text = _decode_story(data, f"The story file {value!r}")
            elif exists:
                raise PromptBuildError(f"The story file {value!r} is a folder, not a text file; give the file inside it.")
            elif _FILE_NAME_RE.match(value.strip()):
                raise PromptBuildError(
                    f"The story file {value!r} does not exist (a single word that looks like a file name was taken "
                    f"as one); check the name, or write the story as a sentence."
                )
    if not text.strip():
        raise PromptBuildError("The story is empty; pass the text, a file, or - with the story on standard input.")
    return check_story(text)


def _resolve_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    from framecap_core.prompting import API_KEY_ENV_VARS

    if any(os.environ.get(name, "").strip() for name in API_KEY_ENV_VARS):
        return "gemini"
    print(
        "framecap: no GEMINI_API_KEY / GOOGLE_API_KEY set; using the offline splitter (--backend openai asks a local "
        "LLM server).",
        file=sys.stderr,
    )
    return "offline"


def format_table(timeline, width: int | None = None) -> str:
    """The timeline as a readable table: scene, time span, frames, latents, wrapped caption."""
    width = width or shutil.get_terminal_size((110, 24)).columns
    width = max(60, width)
    header = f"{'#':>3}  {'time (s)':<13}  {'frames':<11}  {'latents':<9}  caption"
    indent = len(header) - len("caption")
    lines = [
        f"{timeline.num_frames} frames = {timeline.duration_seconds:.2f} s at {timeline.fps} fps, "
        f"{timeline.num_latents} latents, {len(timeline.scenes)} scenes",
        header,
        "-" * min(width, 120),
    ]
    wrap = max(30, width - indent)
    for number, (scene, (first, last)) in enumerate(zip(timeline.scenes, timeline.scene_latent_spans()), 1):
        span = f"{scene.start / timeline.fps:.2f}-{scene.end / timeline.fps:.2f}"
        frames = f"{scene.start}-{scene.end - 1}"
        latents = f"{first}-{last}"
        wrapped = textwrap.wrap(scene.caption, wrap) or [""]
        lines.append(f"{number:>3}  {span:<13}  {frames:<11}  {latents:<9}  {wrapped[0]}")
        lines.extend(" " * indent + more for more in wrapped[1:])
    if timeline.negative:
        lines.append(f"negative: {timeline.negative}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from framecap_core.fileio import atomic_write_text, check_output_path
    from framecap_core.prompting import build_timeline

    if args.output:
        check_output_path(args.output, "-o")  # before asking Gemini: a bad path should not cost a request
    story = _read_story(args.story)
    backend = _resolve_backend(args.backend)
    timeline = build_timeline(
        story,
        seconds=args.seconds,
        fps=args.fps,
        backend=backend,
        model=args.model,
        negative=args.negative,
        max_caption_tokens=args.max_caption_tokens,
        min_scene_seconds=args.min_scene_seconds,
        timeout=args.timeout,
        retries=args.retries,
        base_url=args.base_url,
    )
    if args.json:
        print(timeline.to_json())
    else:
        print(format_table(timeline))
    if args.output:
        path = atomic_write_text(args.output, timeline.to_json() + "\n")
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
