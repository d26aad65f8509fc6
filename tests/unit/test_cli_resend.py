"""The command line resends a content request that the server refused for now, under the same Idempotency-Key.

The server side of both answers is tested for real (tests/integration/test_edge.py: the edge's 503; the chaos test:
one content per key); here an httpx transport plays the server so the client's own behaviour is pinned down.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli import main as cli

RECORD = {
    "id": "c" + "0" * 32,
    "status": "complete",
    "article": {"title": "Tides", "body": "The sea comes and goes."},
    "recommendations": [],
    "errors": {},
}
BUSY = {"error": {"message": "text is at capacity", "type": "service_unavailable", "param": None, "code": None}}


def serve(answers: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    return httpx.MockTransport(handler)


def events(*pairs: tuple[str, dict]) -> bytes:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in pairs).encode()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(cli.time, "sleep", slept.append)
    return slept


def run(monkeypatch: pytest.MonkeyPatch, answers: list[httpx.Response], out: Path, *args: str):
    seen: list[httpx.Request] = []
    transport = serve(answers, seen)
    client = lambda url, key, timeout=600: httpx.Client(base_url=url, transport=transport)  # noqa: E731
    monkeypatch.setattr(cli, "http_client", client)
    result = CliRunner().invoke(cli.app, ["create", "tides", "--out", str(out), *args])
    return result, seen


def test_a_refusal_for_now_is_resent_with_the_same_key(monkeypatch, tmp_path: Path, waits: list[float]) -> None:
    answers = [
        httpx.Response(503, json=BUSY, headers={"Retry-After": "2"}),
        httpx.Response(409, json=BUSY, headers={"Retry-After": "1"}),
        httpx.Response(
            200,
            content=events(("article", RECORD["article"]), ("complete", RECORD)),
            headers={"content-type": "text/event-stream"},
        ),
    ]
    result, seen = run(monkeypatch, answers, tmp_path / "out")
    assert result.exit_code == 0, result.output
    keys = {request.headers["idempotency-key"] for request in seen}
    assert len(seen) == 3 and len(keys) == 1 and keys.pop().startswith("cli-")
    assert waits == [2.0, 1.0]  # as the server said
    assert (tmp_path / "out" / "article.md").read_text().startswith("# Tides")


def test_it_gives_up_after_its_retries_and_says_why(monkeypatch, tmp_path: Path, waits: list[float]) -> None:
    answers = [httpx.Response(503, json=BUSY, headers={"Retry-After": "1"}) for _ in range(3)]
    result, seen = run(monkeypatch, answers, tmp_path / "out", "--retries", "2")
    assert result.exit_code == 1 and len(seen) == 3 and len(waits) == 2
    assert "503" in result.output and "after 2 resends" in result.output


def test_a_refusal_without_retry_after_is_not_resent(monkeypatch, tmp_path: Path, waits: list[float]) -> None:
    bad = {"error": {"message": "topic: too long", "type": "invalid_request_error", "param": "topic", "code": None}}
    result, seen = run(monkeypatch, [httpx.Response(400, json=bad)], tmp_path / "out")
    assert result.exit_code == 1 and len(seen) == 1 and waits == []
    assert "topic: too long" in result.output


def test_a_server_that_never_answers_is_resent_then_reported_unreachable(monkeypatch, tmp_path, waits) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(
        cli,
        "http_client",
        lambda url, key, timeout=600: httpx.Client(base_url=url, transport=httpx.MockTransport(refuse)),
    )
    result = CliRunner().invoke(cli.app, ["create", "tides", "--out", str(tmp_path / "out"), "--retries", "1"])
    assert result.exit_code == 1 and waits == [1.0]
    assert "cannot reach http://127.0.0.1:8000" in result.output and not (tmp_path / "out").exists()
