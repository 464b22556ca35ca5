"""The OpenAI-compatible backend (Ollama, LM Studio, llama.cpp, vLLM) against a local fake chat-completions server."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import fake_http
import pytest
from fake_openai import FakeOpenAI, delayed, error, no_choices, raw, refusal, reply_json, reply_text
from llm_answers import ANNOTATION, GOOD, GOOD_TIMELINE, STORY, frames
from PIL import Image

from framecap_core.cli import main
from framecap_core.cli.prompt import _resolve_backend
from framecap_core.errors import PromptBuildError
from framecap_core.prompting import (
    DEFAULT_BASE_URL,
    DEFAULT_OPENAI_MODEL,
    GeminiOptions,
    OpenAIOptions,
    annotate_frames,
    annotation_schema,
    build_timeline,
    story_schema,
    story_system_instruction,
)
from framecap_core.prompting.templates import annotation_system_instruction, extract_json

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-local-fake-Qw7Rt2Yp9Zx4"


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """No key of any backend in the environment, and nothing but the local server is reachable."""
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    foreign = fake_http.local_only(monkeypatch)
    yield
    assert foreign == [], f"tried to reach {foreign}"


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def options(server, **kwargs):
    sleeps = kwargs.pop("sleeps", [])
    kwargs = {"model": "m", "timeout": 10, "backoff": 0.5, **kwargs}
    return OpenAIOptions(base_url=server.url, sleep=sleeps.append, **kwargs)


def timeline(server, story=STORY, **kwargs):
    opts = kwargs.pop("options", None) or options(server)
    return build_timeline(story, seconds=5, backend="openai", options=opts, **kwargs)


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    return port


# -- the request -----------------------------------------------------------------------------------------------------


def test_request_is_the_gemini_task_as_a_chat_completion_without_a_key(server):
    server.script(reply_json(GOOD))
    result = timeline(server)
    assert result.to_dict() == GOOD_TIMELINE
    assert server.calls == 1
    request = server.requests[0]
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.body == {
        "model": "m",
        "stream": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "framecap_answer", "schema": story_schema()},  # Gemini's schema
        },
        "messages": [
            {"role": "system", "content": story_system_instruction(seconds=5, fps=16, max_words=120)},
            {"role": "user", "content": f"Video length: 5 seconds.\nStory:\n{STORY}"},
        ],
    }
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers  # no OPENAI_API_KEY, no header


def test_key_from_the_environment_goes_in_the_authorization_header_only(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.script(reply_json(GOOD))
    build_timeline(STORY, seconds=5, backend="openai", base_url=server.url + "/", model="llama3.1:8b", timeout=7)
    request = server.requests[0]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.model == "llama3.1:8b"
    assert KEY not in request.raw.decode()


def test_settings_temperature_and_defaults(server):
    server.script(reply_json(GOOD))
    timeline(server, options=options(server, temperature=0.2))
    assert server.requests[0].body["temperature"] == 0.2
    default = OpenAIOptions()
    assert (default.base_url, default.model) == (DEFAULT_BASE_URL, DEFAULT_OPENAI_MODEL)
    assert DEFAULT_BASE_URL == "http://127.0.0.1:11434/v1"  # Ollama's


@pytest.mark.parametrize("url", ["127.0.0.1:11434/v1", "ftp://host/v1", "http:///v1"])
def test_bad_base_url(url):
    with pytest.raises(PromptBuildError, match="base_url must be"):
        OpenAIOptions(base_url=url)
    assert OpenAIOptions(base_url="").base_url == DEFAULT_BASE_URL  # an emptied widget means the default


def test_options_must_match_the_backend(server):
    with pytest.raises(PromptBuildError, match="takes OpenAIOptions, got GeminiOptions"):
        build_timeline(STORY, seconds=5, backend="openai", options=GeminiOptions())
    assert server.calls == 0


def test_loopback_servers_bypass_the_environment_proxy(server, monkeypatch):
    # A proxy that does not exist: a request routed through it would fail to connect.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    server.script(reply_json(GOOD))
    assert timeline(server).to_dict() == GOOD_TIMELINE
    assert server.requests[0].path == "/v1/chat/completions"  # reached directly, not as a proxy request


# -- answers that ignore response_format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Here are the scenes:\n```json\n{json}\n```\nEnjoy your video!",
        "```\n{json}\n```",
        "Sure! {json} Let me know if you want changes.",
        "<think>The story has two events {{maybe}}.</think>\n{json}",
    ],
    ids=["fenced-json", "fenced", "prose", "thinking"],
)
def test_prose_and_fenced_answers_are_extracted(server, text):
    server.script(reply_text(text.replace("{json}", json.dumps(GOOD))))
    assert timeline(server).to_dict() == GOOD_TIMELINE
    assert server.calls == 1  # no correction round needed


def test_prose_without_json_twice_names_the_model(server):
    server.script(reply_text("A boat floats, then a child takes it."), reply_text("Scene 1: a boat. Scene 2: a child."))
    with pytest.raises(PromptBuildError, match="invalid twice") as info:
        timeline(server, options=options(server, model="tiny-chat"))
    message = str(info.value)
    assert "'tiny-chat'" in message and server.url in message and "not valid JSON" in message
    assert server.calls == 2
    second = server.requests[1]
    assert second.roles() == ["system", "user", "assistant", "user"]
    assert second.texts()[2] == "A boat floats, then a child takes it."
    assert second.texts()[3].startswith("Your answer was invalid: the answer is not valid JSON")


def test_extract_json_cases():
    obj = '{"scenes": [{"start": 0}]}'
    assert extract_json(obj) == obj
    assert extract_json(f"  {obj}\n") == obj
    assert extract_json(f"Answer:\n```JSON\n{obj}\n```") == obj
    assert extract_json(f"First a bad fence ```json\n{{oops\n``` then {obj} done") == obj
    assert extract_json("no json here") == "no json here"
    assert extract_json('{"a": 1} and {"b": 2}') == '{"a": 1}'


# -- the same validation, correction round, retries and timeouts as Gemini -------------------------------------------


def test_invalid_answer_is_sent_back_with_the_error_then_valid(server):
    gap = {
        "scenes": [
            {"start": 0, "end": 2, "caption": "A paper boat floats."},
            {"start": 3, "end": 5, "caption": "A child picks up the boat."},
        ]
    }
    server.script(reply_json(gap), reply_json(GOOD))
    assert timeline(server).to_dict() == GOOD_TIMELINE
    assert server.calls == 2
    first, second = server.requests
    assert second.messages()[:2] == first.messages()
    assert second.roles() == ["system", "user", "assistant", "user"]
    assert json.loads(second.texts()[2]) == gap  # the model's own answer
    assert "scene 2 starts at 3 s but scene 1 ends at 2 s" in second.texts()[3]
    assert second.body["response_format"] == first.body["response_format"]


def test_rate_limit_then_success_backs_off_honouring_retry_after(server):
    server.script(error(429), error(429, retry_after=3), reply_json(GOOD))
    sleeps: list[float] = []
    assert timeline(server, options=options(server, sleeps=sleeps)).to_dict() == GOOD_TIMELINE
    assert server.calls == 3
    assert sleeps == [0.5, 3.0]  # 0.5 s, then max(1.0 s doubled, the 3 s the server asked for)


def test_server_errors_exhaust_retries(server):
    server.script(error(500, "CUDA out of memory"), error(503), error(500, "CUDA out of memory"))
    sleeps: list[float] = []
    with pytest.raises(PromptBuildError) as info:
        timeline(server, options=options(server, retries=2, sleeps=sleeps))
    assert server.calls == 3 and sleeps == [0.5, 1.0]
    message = str(info.value)
    assert message.startswith(f"The model 'm' at {server.url} failed 3 time(s) in a row; last: HTTP 500: CUDA out")
    assert "offline" in message


def test_non_json_bodies_are_retried(server):
    server.script(raw("<html>bad gateway</html>", 502), raw('{"choices": ['), reply_json(GOOD))
    sleeps: list[float] = []
    assert timeline(server, options=options(server, sleeps=sleeps)).to_dict() == GOOD_TIMELINE
    assert server.calls == 3 and sleeps == [0.5, 1.0]


def test_connection_refused_says_to_start_the_server_or_pick_another_backend():
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{closed_port()}/v1"
    start = time.monotonic()
    with pytest.raises(PromptBuildError) as info:
        build_timeline(STORY, seconds=5, backend="openai",
                       options=OpenAIOptions(base_url=url, model="m", sleep=sleeps.append, timeout=5))
    assert time.monotonic() - start < 5
    assert sleeps == []  # not retried: nothing listens
    message = str(info.value)
    assert f"Cannot reach the LLM server at {url} (connection refused" in message
    assert "Start the server" in message and "ollama serve" in message and "another backend" in message


def test_slow_server_past_the_timeout_is_retried_then_reported(server):
    server.script(delayed(5, reply_json(GOOD)), delayed(5, reply_json(GOOD)))
    sleeps: list[float] = []
    opts = options(server, timeout=0.3, retries=1, sleeps=sleeps)
    start = time.monotonic()
    with pytest.raises(PromptBuildError, match=r"no answer within the 0.3 s timeout") as info:
        timeline(server, options=opts)
    assert time.monotonic() - start < 4  # did not wait for the 5 s answers
    assert server.calls == 2 and sleeps == [0.5]
    assert "2 time(s)" in str(info.value)


def test_unknown_model_names_it_and_how_to_get_it(server):
    server.script(error(404, 'model "qwen9:1b" not found, try pulling it first'))
    with pytest.raises(PromptBuildError) as info:
        timeline(server, options=options(server, model="qwen9:1b"))
    assert server.calls == 1
    message = str(info.value)
    assert "'qwen9:1b'" in message and "ollama pull qwen9:1b" in message and "/v1" in message


def test_bad_request_is_not_retried(server):
    server.script(error(400, "response_format json_schema is not supported"))
    with pytest.raises(PromptBuildError, match="rejected the request for model 'm' .HTTP 400: response_format"):
        timeline(server)
    assert server.calls == 1


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (refusal("I can't help with that."), "refused to answer .I can't help with that"),
        (reply_text("", finish_reason="content_filter"), "refused to answer .finish reason content_filter"),
        (no_choices(), "no answer .no choices"),
        (reply_text("   ", finish_reason="length"), "empty answer .finish reason length"),
    ],
)
def test_refusal_and_empty_answers(server, step, message):
    server.script(step)
    with pytest.raises(PromptBuildError, match=message):
        timeline(server)
    assert server.calls == 1


def test_key_never_reaches_output_logs_or_timeline(server, monkeypatch, caplog, capsys, tmp_path):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    # A server that (wrongly) echoes the key must not make us print it.
    server.script(error(429, f"slow down {KEY}"), error(500, f"boom {KEY}"), reply_json({"scenes": []}),
                  reply_text(f"```json\n{json.dumps(GOOD)}\n```"))
    out = tmp_path / "t.json"
    assert main(["prompt", STORY, "--seconds", "5", "--backend", "openai", "--base-url", server.url, "--model", "m",
                 "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == GOOD_TIMELINE
    server.script(error(401, f"invalid api key {KEY}"))
    with pytest.raises(PromptBuildError, match="OPENAI_API_KEY") as info:
        timeline(server)
    assert "[redacted]" in str(info.value)
    captured = capsys.readouterr()
    assert "HTTP 429: slow down [redacted]" in caplog.text  # retries are logged ...
    for text in (caplog.text, captured.out, captured.err, str(info.value), out.read_text()):
        assert KEY not in text  # ... without the key
    assert all(request.headers["authorization"] == f"Bearer {KEY}" for request in server.requests)


# -- CLI and backend choice -------------------------------------------------------------------------------------------


def test_cli_done_when_command_in_a_fresh_process(server, tmp_path):
    """`framecap prompt ... --backend openai --base-url ... --model m -o t.json` writes a valid timeline."""
    answer = {"scenes": [{"start": 0, "end": 4, "caption": GOOD["scenes"][0]["caption"]},
                         {"start": 4, "end": 10, "caption": GOOD["scenes"][1]["caption"]}]}
    server.script(reply_json(answer))
    out = tmp_path / "t.json"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "framecap_core", "prompt", STORY, "--seconds", "10", "--backend", "openai",
         "--base-url", server.url, "--model", "m", "-o", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert data["num_frames"] == 161 and [s["caption"] for s in data["scenes"]] == [
        s["caption"] for s in answer["scenes"]]
    assert [(s["start"], s["end"]) for s in data["scenes"]] == [(0, 65), (65, 161)]  # 4 s -> latent 17 -> frame 65
    assert "paper boat" in run.stdout and server.requests[0].model == "m"


def test_cli_connection_refused_is_one_line(capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    assert main(["prompt", STORY, "--backend", "openai", "--base-url", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("framecap: error: Cannot reach the LLM server") and "\n" not in err
    assert "Traceback" not in err


def test_auto_never_picks_a_local_server(server, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert _resolve_backend("auto") == "offline"
    assert main(["prompt", STORY, "--seconds", "5", "--base-url", server.url, "--json"]) == 0
    assert server.calls == 0
    assert "--backend openai" in capsys.readouterr().err
    monkeypatch.setenv("GEMINI_API_KEY", "g-key-123456")
    assert _resolve_backend("auto") == "gemini"


# -- annotation with a vision model -------------------------------------------------------------------------------


def test_annotate_frames_sends_images_as_data_urls(server):
    server.script(reply_text(f"```json\n{json.dumps(ANNOTATION)}\n```"))
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(png, format="PNG")
    images = [*frames(2), png.getvalue()]
    result = annotate_frames(images, options=options(server, model="qwen2.5vl:7b"), timestamps=[0.0, 0.5, 1.0])
    assert result.captions == [ANNOTATION["segments"][0]["caption"]] * 2 + [ANNOTATION["segments"][1]["caption"]]
    assert result.video_caption == ANNOTATION["video_caption"]
    request = server.requests[0]
    assert request.path == "/v1/chat/completions" and request.model == "qwen2.5vl:7b"
    assert request.schema() == annotation_schema(3)
    assert request.messages()[0] == {"role": "system", "content": annotation_system_instruction(120)}
    content = request.messages()[1]["content"]
    assert [part["type"] for part in content] == ["text", "text", "image_url", "text", "image_url", "text",
                                                  "image_url"]
    texts = request.texts()
    assert "3 sampled frames" in texts[1] and "2: 1.00" in texts[1]
    assert texts[2:] == ["Frame 0:", "Frame 1:", "Frame 2:"]
    sent = request.images()
    assert [mime for mime, _ in sent] == ["image/jpeg", "image/jpeg", "image/png"]
    assert Image.open(io.BytesIO(sent[0][1])).size == (64, 48)
    assert sent[2][1] == png.getvalue()
