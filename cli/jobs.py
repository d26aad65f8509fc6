"""`content-studio jobs`: contents queued as jobs (`create --async`), followed from any terminal, at any time.

content-studio jobs follow j0123... --out ./story    (resumes where a dropped connection stopped)
content-studio jobs show j0123...
content-studio jobs cancel j0123...
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cli.common import DEFAULT_URL, KeyOption, UrlOption, check, console, errors, fail, http_client, write_content

jobs_app = typer.Typer(help="Content jobs: queued, made by the server, followed from anywhere.", no_args_is_help=True)
RESEND_STATUSES = (409, 429, 502, 503, 504)
JobId = Annotated[str, typer.Argument(help="The job's id (j...).")]


def submit_job(client: httpx.Client, body: dict[str, Any], headers: dict[str, str], retries: int) -> dict[str, Any]:
    """``POST /v1/jobs``; a refusal for now (with Retry-After) or a lost connection is resent under the same
    Idempotency-Key, up to ``retries`` times: never a second job."""
    for attempt in range(retries + 1):
        try:
            response = client.post("/v1/jobs", json=body, headers=headers)
        except httpx.TransportError as exc:
            if attempt == retries:
                fail(f"cannot reach {client.base_url}: {exc} (after {retries} resends)")
            time.sleep(1.0)
            continue
        wait = response.headers.get("retry-after")
        if response.status_code in RESEND_STATUSES and wait and attempt < retries:
            errors.print(f"[yellow]{response.status_code} from the server: resending in {wait}s[/]")
            time.sleep(min(max(float(wait), 0.5), 30.0))
            continue
        return check(response)
    raise AssertionError("unreachable")


def follow_events(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job's events with progress on stderr, until its end (the `job` event, returned); a dropped connection
    is resumed after the last event seen (Last-Event-ID)."""
    last: int | None = None
    tokens = 0
    while True:
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        try:
            with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                seq, event = None, ""
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        seq = int(line[4:])
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        last = seq if seq is not None else last
                        if event == "token":
                            tokens += 1
                        elif event == "job":
                            return data
                        elif event not in ("audio_chunk",):
                            errors.print(f"[dim]{event}[/] {_said(event, data, tokens)}")
        except httpx.TransportError as exc:
            errors.print(f"[yellow]connection lost ({type(exc).__name__}): resuming after event {last}[/]")
            time.sleep(1.0)


def _said(event: str, data: dict[str, Any], tokens: int) -> str:
    if event == "article":
        return f"{tokens} tokens: {data.get('title', '')}"
    if "ok" in data:
        return "done" if data["ok"] else f"failed: {data.get('error')}"
    if event == "attempt":
        return f"starting over (attempt {data.get('attempt')})"
    return data.get("error", "") if isinstance(data, dict) else ""


@jobs_app.command()
def follow(
    job_id: JobId,
    out: Annotated[Path | None, typer.Option("--out", help="Write the content's files here when it is made.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Follow a job to its end (from the start, or from wherever it is), then write its content's files."""
    started = time.monotonic()
    with http_client(url, api_key) as client:
        end = follow_events(client, job_id)
        if end["state"] in ("failed", "cancelled"):
            fail(f"job {job_id} {end['state']}: {end.get('error')}")
        record = check(client.get(f"/v1/content/{end['content_id']}"))
        if out is not None:
            write_content(client, record, out, time.monotonic() - started)
        else:
            console.print(f"[green]{end['content_id']}[/] ({end['state']})")


@jobs_app.command()
def show(job_id: JobId, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """A job's state, stage, place in the queue and content."""
    with http_client(url, api_key, 60) as client:
        console.print_json(json.dumps(check(client.get(f"/v1/jobs/{job_id}"))))


@jobs_app.command()
def cancel(job_id: JobId, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with http_client(url, api_key, 60) as client:
        job = check(client.delete(f"/v1/jobs/{job_id}"))
    console.print(f"{job['id']}: {job['state']}{' (cancel requested)' if job['cancel_requested'] else ''}")
