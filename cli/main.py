"""`content-studio`: the command line for Content Studio's HTTP API.

    content-studio create "a short story about lighthouses" --out ./story
    content-studio recommend --user u1
    content-studio like c0123... --user u1
    content-studio status
    content-studio models
    content-studio library / show ID / feed --user u1
    content-studio new-key --name ann --role user --user ann

The server is `--url` or $CONTENT_STUDIO_URL (default http://127.0.0.1:8000); the API key, when the server wants
one, is `--api-key` or $CONTENT_STUDIO_API_KEY.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.live import Live
from rich.table import Table

from cli.common import (
    DEFAULT_URL,
    STAGES,
    KeyOption,
    UrlOption,
    check,
    console,
    errors,
    fail,
    http_client,
    read_sse,
    write_content,
)
from cli.jobs import jobs_app, submit_job

app = typer.Typer(help="Make and explore content with a Content Studio server.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def _progress(state: dict[str, str], tokens: int) -> Table:
    table = Table.grid(padding=(0, 2))
    marks = {"waiting": "[dim]·[/]", "running": "[yellow]…[/]", "done": "[green]✓[/]", "failed": "[red]✗[/]"}
    for stage in STAGES:
        status = state[stage]
        detail = f"{tokens} tokens" if stage == "article" and status == "running" else status
        table.add_row(marks[status], stage, f"[dim]{detail}[/]")
    return table


class _Resend(Exception):
    """The server refused for now, or the connection went before any event: send the same request again."""

    def __init__(self, message: str, wait_s: float, reached: bool = True) -> None:
        super().__init__(message)
        self.wait_s = min(max(wait_s, 0.5), 30.0)
        self.reached = reached  # False: no answer at all (nothing listening, or the connection dropped)


RESEND_STATUSES = (409, 429, 502, 503, 504)


def _follow(client: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | None:
    """One streamed content request with live progress; its final record (None if the stream ended without)."""
    state = dict.fromkeys(STAGES, "waiting")
    state["article"] = "running"
    tokens = 0
    record: dict[str, Any] | None = None
    seen = False
    try:
        with client.stream("POST", "/v1/content", json=body, headers=headers) as response:
            if response.status_code in RESEND_STATUSES and "retry-after" in response.headers:
                response.read()
                raise _Resend(f"{response.status_code} from the server", float(response.headers["retry-after"]))
            if response.status_code >= 400:
                response.read()
                check(response)
            with Live(_progress(state, tokens), console=errors, transient=False) as live:
                for event, data in read_sse(response):
                    seen = True
                    if event == "token":
                        tokens += 1
                    elif event == "article":
                        state["article"] = "done"
                        state.update({s: "running" for s in STAGES[1:]})
                    elif event in STAGES:
                        state[event] = "done" if data.get("ok") else "failed"
                    elif event in ("complete", "failed"):
                        record = data
                        if event == "failed":
                            state["article"] = "failed" if not data.get("article") else state["article"]
                    live.update(_progress(state, tokens))
    except httpx.TransportError as exc:
        if seen:
            raise
        raise _Resend(f"connection lost ({type(exc).__name__})", 1.0, reached=False) from exc
    return record


@app.command()
def create(
    topic: Annotated[str, typer.Argument(help="What the content is about.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for article.md, image.png, audio.wav, recommendations.json.")
    ],
    user: Annotated[str | None, typer.Option("--user", help="Recommend for this user.")] = None,
    style: Annotated[str | None, typer.Option(help="e.g. playful, news.")] = None,
    length: Annotated[str, typer.Option(help="short, medium or long.")] = "short",
    seed: Annotated[int | None, typer.Option(help="Same seed, same content.")] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, max=20, help="Resends of a refusal for now.")] = 3,
    queued: Annotated[bool, typer.Option("--async", help="Queue it as a job; print the job's id.")] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Run the content pipeline with live progress and write its four files. A refusal that says when to come
    back (503, 429, 409 with Retry-After) or a connection lost before the first event is resent, up to
    ``--retries`` times, under the same Idempotency-Key: never a second content. With ``--async`` the content is
    queued as a job instead: its id is printed at once (``content-studio jobs follow ID`` follows it)."""
    body: dict[str, Any] = {"topic": topic, "length": length, "stream": True}
    body.update({k: v for k, v in {"user_id": user, "style": style, "seed": seed}.items() if v is not None})
    headers = {"Idempotency-Key": f"cli-{uuid.uuid4().hex}"}
    if queued:
        with http_client(url, api_key, 60) as client:
            job = submit_job(client, body, headers, retries)
        console.print(job["id"])
        errors.print(f"queued ({job['state']}): content-studio jobs follow {job['id']} --out {out}")
        return
    record: dict[str, Any] | None = None
    started = time.monotonic()
    with http_client(url, api_key) as client:
        for attempt in range(retries + 1):
            try:
                record = _follow(client, body, headers)
                break
            except _Resend as resend:
                if attempt == retries:
                    fail(f"{'' if resend.reached else f'cannot reach {url}: '}{resend} (after {retries} resends)")
                errors.print(f"[yellow]{resend}: resending in {resend.wait_s:.0f}s[/]")
                time.sleep(resend.wait_s)
            except httpx.HTTPError as exc:
                fail(f"cannot reach {url}: {exc}")
        if record is None:
            fail("the server ended the stream without a result")
        if record.get("status") == "failed" or not record.get("article"):
            fail(record.get("error") or "; ".join(f"{k}: {v}" for k, v in record.get("errors", {}).items()))
        write_content(client, record, out, time.monotonic() - started)


@app.command()
def recommend(
    user: Annotated[str, typer.Option("--user", help="Who to recommend for.")],
    k: Annotated[int, typer.Option(help="How many items.")] = 10,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Items recommended for a user, with why."""
    with http_client(url, api_key, 60) as client:
        items = check(client.get("/v1/recommendations", params={"user_id": user, "k": k}))["items"]
    table = Table("item", "score", "why")
    for item in items:
        table.add_row(item["item_id"], f"{item['score']:.3f}", item["reason"])
    console.print(table)


@app.command()
def like(
    item: Annotated[str, typer.Argument(help="The item (or content id) to like.")],
    user: Annotated[str, typer.Option("--user", help="Who likes it.")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Record that a user likes an item."""
    with http_client(url, api_key, 60) as client:
        check(client.post("/v1/interactions", json={"user_id": user, "item_id": item, "event": "like"}))
    console.print(f"[green]♥[/] {user} likes {item}")


@app.command()
def status(url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Each service's health, model, device and placement."""
    with http_client(url, api_key, 60) as client:
        response = client.get("/v1/health")
        if response.status_code not in (200, 503):
            check(response)
        body = response.json()
    table = Table("service", "status", "model", "device", "GPU ids", "replica", "node")
    for name, info in body["services"].items():
        color = "green" if info.get("status") == "ok" else "red"
        table.add_row(
            name,
            f"[{color}]{info.get('status')}[/]",
            str(info.get("model", "-")),
            str(info.get("device", "-")),
            ",".join(info.get("gpu_ids") or []) or "-",
            str(info.get("replica", "-")),
            str(info.get("node_id", "-"))[:12],
        )
    console.print(table)
    if body["status"] != "ok":
        raise typer.Exit(1)


@app.command()
def models(url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """The models the server offers."""
    with http_client(url, api_key, 60) as client:
        data = check(client.get("/v1/models"))["data"]
    table = Table("model", "service")
    for model in data:
        table.add_row(model["id"], model["service"])
    console.print(table)


REASONS = {
    "als": "because of what you liked",
    "content": "like what you read",
    "popular": "popular",
    "fresh": "new",
    "similar": "similar",
}


@app.command()
def library(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many, newest first.")] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Content made so far, newest first."""
    with http_client(url, api_key, 60) as client:
        page = check(client.get("/v1/content", params={"limit": limit, "offset": offset}))
    table = Table("id", "title", "status", "audio", "made")
    for record in page["items"]:
        title = (record.get("article") or {}).get("title") or record["topic"]
        audio = f"{record['audio_duration_s']:.1f} s" if record.get("audio_duration_s") else "-"
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["created_at"]))
        table.add_row(record["id"], title, record["status"], audio, made)
    console.print(table)
    console.print(f"{offset + len(page['items'])} of {page['total']}")


@app.command()
def show(
    content_id: Annotated[str, typer.Argument(help="A content id (from `library`).")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """One piece of content: its article, assets and related items."""
    with http_client(url, api_key, 60) as client:
        record = check(client.get(f"/v1/content/{content_id}"))
        related = check(client.get(f"/v1/items/{content_id}/similar", params={"k": 5}))["items"]
    article = record.get("article") or {}
    console.print(f"[bold]{article.get('title') or record['topic']}[/]  ({record['status']})")
    console.print(article.get("body", ""))
    for kind in ("image_url", "audio_url"):
        if record.get(kind):
            console.print(f"{kind.split('_')[0]}: {url.rstrip('/')}{record[kind]}")
    for name, error in (record.get("errors") or {}).items():
        console.print(f"[yellow]{name} missing:[/] {error}")
    if related:
        console.print("related: " + "; ".join(i.get("title") or i["item_id"] for i in related))


@app.command()
def feed(
    user: Annotated[str, typer.Option("--user", help="Whose feed.")],
    k: Annotated[int, typer.Option("--k", min=1, max=100)] = 10,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """What the recommender picks for a user, with titles and why."""
    with http_client(url, api_key, 60) as client:
        recs = check(client.get("/v1/recommendations", params={"user_id": user, "k": k}))
    table = Table("item", "title", "why")
    for item in recs["items"]:
        table.add_row(item["item_id"], item.get("title") or "-", REASONS.get(item["reason"], item["reason"]))
    console.print(table)
    console.print(f"model version {recs.get('model_version') or '-'}")


@app.command("new-key")
def new_key(
    name: Annotated[str, typer.Option("--name", help="The key's name (in logs and metrics).")],
    role: Annotated[str, typer.Option("--role", help="user, service or admin.")] = "user",
    user: Annotated[str | None, typer.Option("--user", help="The user a `user` key acts as.")] = None,
) -> None:
    """Make an API key: prints the key once (give it to its owner) and the entry to add to the keys Secret
    (its SHA-256, never the key)."""
    import secrets

    from pydantic import ValidationError

    from edge.access import ApiKeyEntry, hash_key

    key = "cs-" + secrets.token_urlsafe(32)
    try:
        entry = ApiKeyEntry(name=name, role=role, user_id=user, sha256=hash_key(key))
    except ValidationError as exc:
        fail(str(exc.errors()[0]["msg"]))
    console.print(f"key (shown once): [bold]{key}[/]")
    console.print("entry for the keys file / $CONTENT_STUDIO_API_KEYS:")
    print(json.dumps(entry.model_dump(exclude_none=True)))


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":
    sys.exit(main())
