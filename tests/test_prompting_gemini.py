"""The Gemini backend, run with the real ``google-genai`` client against a local fake Gemini server."""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import fake_http
import numpy as np
import pytest
from fake_gemini import (
    FakeGemini,
    auto_annotation,
    blocked,
    delayed,
    empty,
    error,
    raw,
    refusal,
    reply_json,
    reply_text,
)
from llm_answers import ANNOTATION, GOOD, GOOD_TIMELINE, STORY, frames
from PIL import Image

from framecap_core.cli import main
from framecap_core.errors import PromptBuildError
from framecap_core.prompting import (
    GeminiOptions,
    annotate_frames,
    annotation_schema,
    build_timeline,
    parse_story_answer,
    story_schema,
    story_system_instruction,
)
from framecap_core.prompting.templates import annotation_system_instruction

KEY = "fake-key-Zq81x7Lm3Vb9"


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Key in the environment, and any name lookup other than the local server fails (and is recorded)."""
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    foreign = fake_http.local_only(monkeypatch)
    yield
    assert foreign == [], f"tried to reach {foreign}"


@pytest.fixture
def server():
    with FakeGemini() as fake:
        yield fake


def options(server, **kwargs):
    sleeps = kwargs.pop("sleeps", [])
    return GeminiOptions(base_url=server.base_url, backoff=0.5, timeout=10, sleep=sleeps.append, **kwargs)


def timeline(server, story=STORY, **kwargs):
    opts = kwargs.pop("options", None) or options(server)
    return build_timeline(story, seconds=5, backend="gemini", options=opts, **kwargs)


# -- the request -----------------------------------------------------------------------------------------------------


def test_request_carries_model_schema_instruction_story_and_key(server):
    server.script(reply_json(GOOD))
    result = timeline(server)
    assert result.to_dict() == GOOD_TIMELINE
    assert server.calls == 1
    request = server.requests[0]
    assert request.method == "POST"
    assert request.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert request.headers["x-goog-api-key"] == KEY
    assert request.system_instruction() == story_system_instruction(seconds=5, fps=16, max_words=120)
    config = request.generation_config()
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == story_schema()
    assert request.roles() == ["user"]
    assert request.texts() == [f"Video length: 5 seconds.\nStory:\n{STORY}"]
    assert KEY not in request.raw.decode()  # the key travels in the header only


def test_model_name_and_google_api_key_fallback(server, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", "other-key-123456")
    server.script(reply_json(GOOD))
    timeline(server, options=options(server, model="gemini-2.5-flash"))
    assert server.requests[0].model == "gemini-2.5-flash"
    assert server.requests[0].headers["x-goog-api-key"] == "other-key-123456"


def test_build_timeline_settings_reach_the_server(server):
    server.script(reply_json(GOOD))
    build_timeline(STORY, seconds=5, backend="gemini", base_url=server.base_url, model="gemini-x", timeout=7)
    request = server.requests[0]
    assert request.model == "gemini-x"
    assert request.headers["x-server-timeout"] == "7"


# -- failures ----------------------------------------------------------------------------------------------------------


def test_no_key_names_both_variables_and_the_offline_backend(server, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(PromptBuildError) as info:
        timeline(server)
    message = str(info.value)
    assert "GEMINI_API_KEY" in message and "GOOGLE_API_KEY" in message and "offline" in message
    assert server.calls == 0


def test_connection_refused_fails_at_once():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    sleeps: list[float] = []
    opts = GeminiOptions(base_url=f"http://127.0.0.1:{port}", sleep=sleeps.append, timeout=5)
    start = time.monotonic()
    with pytest.raises(PromptBuildError, match="Cannot reach Gemini") as info:
        build_timeline(STORY, seconds=5, backend="gemini", options=opts)
    assert time.monotonic() - start < 5
    assert sleeps == []
    assert "offline" in str(info.value) and KEY not in str(info.value)


def test_timeout_is_retried_then_reported(server):
    server.script(delayed(5, reply_json(GOOD)), delayed(5, reply_json(GOOD)))
    sleeps: list[float] = []
    opts = GeminiOptions(base_url=server.base_url, timeout=0.3, retries=1, backoff=0.25, sleep=sleeps.append)
    start = time.monotonic()
    with pytest.raises(PromptBuildError, match="timeout") as info:
        build_timeline(STORY, seconds=5, backend="gemini", options=opts)
    assert time.monotonic() - start < 4  # did not wait for the 5 s answers
    assert server.calls == 2 and sleeps == [0.25]
    assert "2 time(s)" in str(info.value)


def test_rate_limit_then_success_backs_off(server):
    server.script(error(429), error(429, retry_delay=3), reply_json(GOOD))
    sleeps: list[float] = []
    result = timeline(server, options=options(server, sleeps=sleeps))
    assert result.to_dict() == GOOD_TIMELINE
    assert server.calls == 3
    # 0.5 s, then max(1.0 s doubled, the 3 s the server asked for).
    assert sleeps == [0.5, 3.0]


def test_server_errors_exhaust_retries(server):
    server.script(error(500), error(503), error(500))
    sleeps: list[float] = []
    with pytest.raises(PromptBuildError) as info:
        timeline(server, options=options(server, retries=2, sleeps=sleeps))
    assert server.calls == 3 and sleeps == [0.5, 1.0]
    message = str(info.value)
    assert "3 time(s)" in message and "HTTP 500" in message and "offline" in message


def test_non_json_http_bodies_are_retried(server):
    server.script(raw("<html>proxy error</html>"), raw("<html>bad gateway</html>", 502), raw('{"candidates": ['))
    sleeps: list[float] = []
    with pytest.raises(PromptBuildError, match="not JSON"):
        timeline(server, options=options(server, retries=2, sleeps=sleeps))
    assert server.calls == 3 and sleeps == [0.5, 1.0]
    server.script(raw("<html>proxy error</html>"), reply_json(GOOD))
    assert timeline(server).to_dict() == GOOD_TIMELINE


def test_backoff_is_capped(server):
    server.script(*[error(503)] * 4, reply_json(GOOD))
    sleeps: list[float] = []
    timeline(server, options=options(server, retries=4, sleeps=sleeps, max_backoff=1.5))
    assert sleeps == [0.5, 1.0, 1.5, 1.5]


def test_rejected_key_is_not_retried_and_not_echoed(server):
    # A server that (wrongly) echoes the key must not make us print it.
    server.script(error(400, f"API key not valid: {KEY}. Please pass a valid API key.", status="INVALID_ARGUMENT"))
    with pytest.raises(PromptBuildError, match="rejected the API key") as info:
        timeline(server)
    assert server.calls == 1
    assert KEY not in str(info.value) and "[redacted]" in str(info.value)


def test_unknown_model(server):
    server.script(error(404, "models/gemini-nope is not found"))
    with pytest.raises(PromptBuildError, match="gemini-nope"):
        timeline(server, options=options(server, model="gemini-nope"))
    assert server.calls == 1


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (refusal("SAFETY"), "refused.*SAFETY"),
        (refusal("PROHIBITED_CONTENT"), "refused.*PROHIBITED_CONTENT"),
        (blocked("SAFETY"), "blocked.*SAFETY"),
        (empty(), "no answer"),
        (reply_text(""), "empty answer"),
    ],
)
def test_refusal_blocked_and_empty_answers(server, step, message):
    server.script(step)
    with pytest.raises(PromptBuildError, match=message):
        timeline(server)
    assert server.calls == 1


def test_invalid_answer_is_sent_back_with_the_error(server):
    gap = {
        "scenes": [
            {"start": 0, "end": 2, "caption": "A paper boat floats."},
            {"start": 3, "end": 5, "caption": "A child picks up the boat."},
        ]
    }
    server.script(reply_json(gap), reply_json(GOOD))
    result = timeline(server)
    assert result.to_dict() == GOOD_TIMELINE
    assert server.calls == 2
    second = server.requests[1]
    assert second.roles() == ["user", "model", "user"]
    texts = second.texts()
    assert texts[0] == server.requests[0].texts()[0]
    assert json.loads(texts[1]) == gap  # the model's own answer
    assert "scene 2 starts at 3 s but scene 1 ends at 2 s" in texts[2]
    assert texts[2].startswith("Your answer was invalid")
    assert second.system_instruction() == server.requests[0].system_instruction()


def test_not_json_then_corrected(server):
    server.script(reply_text("Sure! Here are your scenes: ..."), reply_json(GOOD))
    assert timeline(server).to_dict() == GOOD_TIMELINE
    assert "not valid JSON" in server.requests[1].texts()[-1]


def test_invalid_twice_is_an_error(server):
    short = {"scenes": [{"start": 0, "end": 3, "caption": "A boat."}]}
    server.script(reply_json(short), reply_json({"scenes": []}))
    with pytest.raises(PromptBuildError, match="invalid twice") as info:
        timeline(server)
    assert server.calls == 2
    assert "last scene ends at 3 s" in str(info.value) and "non-empty" in str(info.value)


def test_key_never_reaches_logs_or_output(server, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx's included
    server.script(error(429), error(500, f"boom {KEY}"), reply_json({"scenes": []}), reply_json(GOOD))
    timeline(server)
    server.script(error(503), error(503), error(503), error(503, f"down {KEY}"))
    with pytest.raises(PromptBuildError) as info:
        timeline(server)
    assert "[redacted]" in str(info.value)  # the 503 message was kept, without the key
    captured = capsys.readouterr()
    assert "Gemini: HTTP 429" in caplog.text  # retries are logged ...
    for text in (caplog.text, captured.out, captured.err, str(info.value)):
        assert KEY not in text  # ... without the key


def test_cli_gemini_backend(server, tmp_path, capsys):
    out = tmp_path / "t.json"
    server.script(reply_json(GOOD))
    rc = main(["prompt", STORY, "--seconds", "5", "--backend", "gemini", "--base-url", server.base_url, "-o", str(out)])
    assert rc == 0
    assert json.loads(out.read_text()) == GOOD_TIMELINE
    captured = capsys.readouterr()
    assert "paper boat" in captured.out and KEY not in captured.out + captured.err


def test_cli_reports_exhausted_retries(server, capsys, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr("framecap_core.prompting.gemini._sleep", sleeps.append)
    server.script(error(500), error(500))
    rc = main(
        ["prompt", STORY, "--backend", "gemini", "--base-url", server.base_url, "--retries", "1", "--timeout", "5"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "framecap: error: Gemini failed 2 time(s)" in err and KEY not in err
    assert sleeps == [2.0]  # the default backoff


# -- answer validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenes", "message"),
    [
        ([{"start": 0.5, "end": 5, "caption": "a"}], "starts at 0.5 s but the video starts at 0 s"),
        ([{"start": 0, "end": 3, "caption": "a"}, {"start": 2, "end": 5, "caption": "b"}], "contiguous"),
        ([{"start": 0, "end": 4.8, "caption": "a"}, {"start": 4.8, "end": 5, "caption": "b"}], "lasts only 0.2 s"),
        ([{"start": 0, "end": 9, "caption": "a"}], "ends at 9 s"),
        ([{"start": 0, "end": 5, "caption": ""}], "empty caption"),
        ([{"start": 0, "end": "5", "caption": "a"}], "must be a number"),
        ([{"start": 3, "end": 1, "caption": "a"}], "not after its start"),
    ],
)
def test_parse_story_answer_rejects(scenes, message):
    with pytest.raises(PromptBuildError, match=message):
        parse_story_answer({"scenes": scenes}, seconds=5)


def test_parse_story_answer_snaps_truncates_and_accepts_small_drift():
    words = " ".join(f"w{i}," for i in range(60))
    answer = {
        "scenes": [
            {"start": 0, "end": 1.1, "caption": "A dog sits."},
            {"start": 1.1, "end": 3.05, "caption": words},
            {"start": 3.1, "end": 5.06, "caption": "A dog sleeps."},
        ]
    }
    result = parse_story_answer(json.dumps(answer), seconds=5, max_caption_tokens=20, negative="blurry")
    # 1.1 s = frame 17.6 -> latent round(5.15) = 5 -> frame 17; 3.1 s = frame 49.6 -> latent 13 -> frame 49.
    assert [(s.start, s.end) for s in result.scenes] == [(0, 17), (17, 49), (49, 81)]
    assert len(result.scenes[1].caption.split()) == 20 and result.scenes[1].caption.endswith(".")
    assert result.negative == "blurry"


# -- annotation -------------------------------------------------------------------------------------------------------


def test_annotate_frames_sends_images_and_expands_shared_captions(server):
    server.script(reply_json(ANNOTATION))
    result = annotate_frames(frames(3), options=options(server), timestamps=[0.0, 0.5, 1.0])
    assert result.captions == [ANNOTATION["segments"][0]["caption"]] * 2 + [ANNOTATION["segments"][1]["caption"]]
    assert result.video_caption == ANNOTATION["video_caption"]
    request = server.requests[0]
    assert request.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert request.schema() == annotation_schema(3)
    assert request.system_instruction() == annotation_system_instruction(120)
    images = request.images()
    assert [mime for mime, _ in images] == ["image/jpeg"] * 3
    assert Image.open(io.BytesIO(images[0][1])).size == (64, 48)
    texts = request.texts()
    assert "3 sampled frames" in texts[0] and "2: 1.00" in texts[0]
    assert texts[1:] == ["Frame 0:", "Frame 1:", "Frame 2:"]


def test_annotate_frames_accepts_pil_and_bytes_and_downsizes(server):
    server.script(reply_json({**ANNOTATION, "segments": [{**ANNOTATION["segments"][0], "last_frame": 2}]}))
    big = Image.new("RGB", (2000, 1000), "red")
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    result = annotate_frames([big, png.getvalue(), frames(1)[0]], options=options(server), model="gemini-2.5-flash")
    assert len(result.captions) == 3
    request = server.requests[0]
    assert request.model == "gemini-2.5-flash"
    images = request.images()
    assert images[1] == ("image/png", png.getvalue())
    assert max(Image.open(io.BytesIO(images[0][1])).size) == 768


def test_annotate_frames_corrects_a_gap_then_fails_twice(server):
    gap = {**ANNOTATION, "segments": [ANNOTATION["segments"][1]]}  # starts at frame 2
    server.script(reply_json(gap), reply_json(ANNOTATION))
    assert annotate_frames(frames(3), options=options(server)).captions[0].startswith("A grey cat sleeps")
    assert "segment 1 starts at frame 2" in server.requests[1].texts()[-1]
    server.script(reply_json(gap), reply_text("not json"))
    with pytest.raises(PromptBuildError, match="invalid twice"):
        annotate_frames(frames(3), options=options(server))


def test_annotate_frames_rejects_bad_frames(server):
    with pytest.raises(PromptBuildError, match="uint8"):
        annotate_frames([np.zeros((4, 4), dtype=np.float32)], options=options(server))
    with pytest.raises(PromptBuildError, match="at least one"):
        annotate_frames([], options=options(server))
    assert server.calls == 0


def test_auto_annotation_answers_any_number_of_frames():
    with FakeGemini(default=auto_annotation(shared=2)) as fake:
        for n in (1, 5):
            result = annotate_frames(frames(n), options=options(fake))
            assert len(result.captions) == n
            assert result.captions[0].endswith("frames 0-1.") if n > 1 else result.captions[0].endswith("frames 0-0.")
            assert result.captions[-1].endswith(f"frames {n - 1}-{n - 1}.")
            assert result.video_caption.endswith(f"{n} frames.")
        assert fake.calls == 2
