"""Content jobs: take one (202 at once), read it, follow its events (resumable), cancel it; the dead letters.

A job is a content request that outlives its connection: it waits on the broker, a consumer replica makes it, and
its events (the same as a streamed content's) are kept in the jobs table, so any ingress replica can replay them
from where a client's ``Last-Event-ID`` says it stopped. Every database and broker call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from deployments.errors import Conflict
from edge.dependencies import CallerDep, IngressDep, UserHeader, error_responses, require_admin
from edge.openai.streaming import SSE_HEADERS
from edge.routes.content import IdempotencyKey, stage_variants
from graphs.jobs import JobAccepted, JobState, JobView
from graphs.jobs.board import JobBoard
from graphs.schemas import ContentRequest

router = APIRouter(tags=["Jobs"])
JobIdParam = Annotated[str, Path(pattern=r"^j[0-9a-f]{32}$", description="A job id (`j` + 32 hex).")]
POLL_S = 0.25  # how often a follower looks for new events of a running job
KEEPALIVE_S = 15.0


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    operation_id="createJob",
    responses={
        202: {
            "description": "The job, queued.",
            "links": {
                "GetJob": {
                    "operationId": "getJob",
                    "parameters": {"job_id": "$response.body#/id"},
                    "description": "The job just queued.",
                }
            },
        },
        **error_responses(400, 404, 503),
    },
)
async def create_job(
    body: ContentRequest,
    ingress: IngressDep,
    caller: CallerDep,
    response: Response,
    user: UserHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    """Queue a content (the body of `POST /v1/content`; `stream` is ignored): 202 with the job and its URLs at
    once. The same `Idempotency-Key` (from the same caller) answers the same job."""
    board = ingress.job_board()
    body = body.model_copy(update={"user_id": caller.user(body.user_id or user), "stream": False})
    key = f"{caller.counter}:{idempotency_key}" if idempotency_key else None
    job = await asyncio.to_thread(board.submit, body, stage_variants(ingress, body.user_id), key)
    response.headers["Location"] = job.urls.job
    return job


@router.get("/v1/jobs", response_model=list[JobView], responses=error_responses(403, 404, 503))
async def list_jobs(
    ingress: IngressDep,
    caller: CallerDep,
    state: Annotated[JobState, Query(description="`failed` (the default): the dead letters.")] = "failed",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[JobView]:
    """Jobs in one state, newest first; by default the dead letters: jobs that failed every attempt, with their
    errors (admin keys only)."""
    require_admin(caller)
    board = ingress.job_board()
    return [board.view(job) for job in await asyncio.to_thread(board.store.listing, state, limit)]


@router.get("/v1/jobs/{job_id}", response_model=JobView, operation_id="getJob", responses=error_responses(404, 503))
async def get_job(job_id: JobIdParam, ingress: IngressDep) -> JobView:
    """State (`queued` with its place in the queue, `running` with the stage reached, then `complete`,
    `partial`, `failed` or `cancelled`), timings, and the content's URL once made."""
    return await asyncio.to_thread(ingress.job_board().get, job_id)


@router.delete("/v1/jobs/{job_id}", response_model=JobView, responses=error_responses(404, 503))
async def cancel_job(job_id: JobIdParam, ingress: IngressDep) -> JobView:
    """Cancel: a queued job at once; a running one at its next step (every stage stops in the replicas)."""
    return await asyncio.to_thread(ingress.job_board().cancel, job_id)


@router.post("/v1/jobs/{job_id}/requeue", response_model=JobView, responses=error_responses(403, 404, 503))
async def requeue_job(job_id: JobIdParam, ingress: IngressDep, caller: CallerDep) -> JobView:
    """Queue a dead-lettered job again, with fresh attempts (admin keys only)."""
    require_admin(caller)
    return await asyncio.to_thread(ingress.job_board().requeue, job_id)


@router.post("/v1/jobs/{job_id}/drop", status_code=204, responses=error_responses(403, 404, 409, 503))
async def drop_job(job_id: JobIdParam, ingress: IngressDep, caller: CallerDep) -> Response:
    """Delete a dead-lettered job and its events (admin keys only)."""
    require_admin(caller)
    board = ingress.job_board()
    if not await asyncio.to_thread(board.store.drop, job_id):
        await asyncio.to_thread(board.get, job_id)  # 404 for an unknown job
        raise Conflict("only a failed job can be dropped: cancel a queued or running one", "job_id")
    return Response(status_code=204)


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}, "description": "The job's events."}, **error_responses(404)},
)
async def job_events(
    job_id: JobIdParam,
    ingress: IngressDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=100,
            description="Resume after this event (an `id` this stream sent; anything else starts from the first).",
        ),
    ] = None,
) -> StreamingResponse:
    """The job's events as server-sent events, each with its `id`: the streamed content's (`started`, `token`,
    `audio_chunk`, `article`, the stages, `complete` or `failed`), `attempt` when a run starts over, and `job` last
    (its end state). Sent again with `Last-Event-ID`, it goes on after that event; nothing is lost."""
    board = ingress.job_board()
    await asyncio.to_thread(board.get, job_id)  # 404 before the stream starts
    # The id of an event this stream sent; anything else (as SSE allows any string) replays from the first.
    after = int(last_event_id) if last_event_id is not None and last_event_id.isdigit() else -1
    return StreamingResponse(_follow(board, job_id, after), media_type="text/event-stream", headers=SSE_HEADERS)


async def _follow(board: JobBoard, job_id: str, after: int) -> AsyncIterator[str]:
    quiet = 0.0
    while True:
        events = await asyncio.to_thread(board.store.events, job_id, after)
        for seq, event, data in events:
            yield f"id: {seq}\nevent: {event}\ndata: {json.dumps(data)}\n\n"
            after = seq
            if event == "job":
                return
        if events:
            quiet = 0.0
            continue
        await asyncio.sleep(POLL_S)
        quiet += POLL_S
        if quiet >= KEEPALIVE_S:  # a comment line keeps proxies from closing a quiet stream
            quiet = 0.0
            yield ": waiting\n\n"
