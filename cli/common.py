"""What every `content-studio` command shares: the consoles, the server and key options, an HTTP client, and
how a failure is told."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="CONTENT_STUDIO_URL", help="Server address.")]
KeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="CONTENT_STUDIO_API_KEY", help="API key, if the server wants one.")
]
DEFAULT_URL = "http://127.0.0.1:8000"
STAGES = ("article", "image", "audio", "recommendations")  # graphs/schemas.py:STAGES (a unit test keeps them equal)


def http_client(url: str, api_key: str | None, timeout: float = 600) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def fail(message: str, code: int = 1) -> None:
    errors.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = response.text[:300]
        fail(f"{response.status_code}: {detail}")
    return response.json()


def read_sse(response: httpx.Response):
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event:
            yield event, json.loads(line[len("data: ") :])


def write_content(client: httpx.Client, record: dict[str, Any], out: Path, seconds: float) -> None:
    """A made content's four files (article.md, image.png, audio.wav, recommendations.json) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    article = record["article"]
    (out / "article.md").write_text(f"# {article['title']}\n\n{article['body']}\n")
    for kind, name in (("image_url", "image.png"), ("audio_url", "audio.wav")):
        if record.get(kind):
            asset = client.get(record[kind])
            if asset.status_code == 200:
                (out / name).write_bytes(asset.content)
    (out / "recommendations.json").write_text(json.dumps(record.get("recommendations", []), indent=2) + "\n")
    written = sorted(p.name for p in out.iterdir())
    console.print(f"[green]{record['id']}[/] in {seconds:.1f}s → {out}: {', '.join(written)}")
    if record["status"] == "partial":
        missing = ", ".join(f"{stage} ({message})" for stage, message in record["errors"].items())
        errors.print(f"[bold yellow]partial:[/] made without {missing}")
