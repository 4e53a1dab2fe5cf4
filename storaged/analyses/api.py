"""Analyses (specs/upload-and-analyse.md): POST /analyse, GET/DELETE /results, GET /analyses."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from aiohttp import web

from storaged.api.bodies import json_object
from storaged.analyses.provider import AnalysesProvider
from storaged.api.keys import ENSURE_LOCAL, JOBS, LAYOUT, OBJECTS, Deps
from storaged.api.sendfile import send_file
from storaged.errors import BadRequest, NotFound, missing_or_mistyped
from storaged.analyses import work as analyses
from storaged.jobs.state import CONFIG, PIDFILE, PROGRESS, RESULTS, WORKER_LOG, JobState
from storaged.store.atomic import async_lock
from storaged.store.layout import check_object_id

routes = web.RouteTableDef()
STATUS_HEADER = "X-Job-Status"
PROGRESS_HEADER = "X-Job-Progress"
PRIVATE_FILES = {CONFIG, PIDFILE, PROGRESS, RESULTS, WORKER_LOG}
RESULTS_BODY = "analyses.results"  # JobState.memo key: the encoded 200 body
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}  # as web.json_response says it


def job_dir(request: web.Request, file_id: str, analysis_id: str) -> Path:
    return request.app[LAYOUT].object_dir(file_id) / "analysis" / analysis_id


def job_key(request: web.Request, file_id: str, analysis_id: str) -> str:
    """The job directory as a string, for the hot status-poll path (ids already validated)."""
    return f"{request.app[LAYOUT].root}/{file_id[:2]}/{file_id[2:]}/analysis/{analysis_id}"


def state_response(file_id: str, analysis_id: str, state: JobState) -> web.Response:
    """200 with the results; 500 failed; 202 with an empty body while pending (the contract's
    "HTTP 202 and empty content"), status and progress in the ``X-Job-*`` headers."""
    if state.status == "done":
        body = state.memo.get(RESULTS_BODY)
        if body is None:  # encoded once per finished state: polls of a done job repeat it many times
            results = {k: v for k, v in (state.results or {}).items() if k != "status"}
            body = state.memo[RESULTS_BODY] = json.dumps(results).encode()
        return web.Response(body=body, headers=JSON_HEADERS)
    if state.status in ("failed", "cancelled"):
        return web.json_response({"error_message": state.error or state.status, "status": "failed",
                                  "stderr": state.stderr, "file_id": file_id, "analysis_id": analysis_id},
                                 status=500)
    headers = {STATUS_HEADER: state.status, "Retry-After": "1"}
    if state.progress is not None:
        headers[PROGRESS_HEADER] = f"{state.progress:.4f}"
    return web.Response(status=202, headers=headers)


@routes.post("/analyse")
async def analyse(request: web.Request) -> web.Response:
    """Start (or find) an analysis of a stored file."""
    body = await json_object(request)
    file_id = body.get("file_id")
    if not isinstance(file_id, str):
        raise missing_or_mistyped("file_id", file_id, "a string, the 64-hex-digit id answered by POST /upload")
    check_object_id(file_id)
    analysis, args = analyses.resolve(body.get("analysis"), body.get("args"))
    retry = body.get("retry", False)
    if not isinstance(retry, bool):
        raise BadRequest("retry must be true or false")
    layout = request.app[LAYOUT]
    aid = analyses.analysis_id(file_id, analysis.name, args)
    # Under the object's lock, so a concurrent DELETE /upload cannot leave a job in a vanished object.
    async with async_lock(layout.object_lock(file_id)):
        meta = await request.app[OBJECTS].meta(file_id)
        for hook in request.app[ENSURE_LOCAL]:  # evicted bytes come back from the storage tier first
            await hook(file_id, meta)
        state = await request.app[JOBS].submit(
            job_dir(request, file_id, aid), analyses.KIND, args, retry=retry, inputs=[file_id],
            meta={"file_id": file_id, "analysis": analysis.name, "analysis_id": aid,
                  "input": os.path.relpath(request.app[OBJECTS].data_path(file_id, meta), layout.root)})
    return web.json_response({"file_id": file_id, "analysis_id": aid, "status": state.status})


@routes.get("/analyses")
async def list_analyses(request: web.Request) -> web.Response:
    """The analyses, their arguments and result shapes."""
    return web.json_response({"analyses": [a.describe() for a in analyses.ANALYSES.values()]})


@routes.get("/results/{file_id}")
async def list_results(request: web.Request) -> web.Response:
    """A stored file's analyses and their states."""
    file_id = check_object_id(request.match_info["file_id"])
    await request.app[OBJECTS].meta(file_id)
    root = request.app[LAYOUT].object_dir(file_id) / "analysis"
    names = await asyncio.to_thread(lambda: sorted(os.listdir(root)) if root.is_dir() else [])
    out = []
    for aid in names:
        if not analyses.ANALYSIS_ID_RE.match(aid):
            continue
        try:
            state = await request.app[JOBS].state(root / aid)
        except NotFound:
            continue
        out.append({"analysis_id": aid, "analysis": state.config.get("analysis"), "args": state.config.get("args"),
                    "status": state.status, "progress": state.progress,
                    "requested": state.config.get("requested")})
    return web.json_response({"file_id": file_id, "analyses": out})


def _ids(request: web.Request) -> tuple[str, str]:
    return (check_object_id(request.match_info["file_id"]),
            analyses.check_analysis_id(request.match_info["analysis_id"]))


@routes.get("/results/{file_id}/{analysis_id}")
async def results(request: web.Request) -> web.Response:
    """202 while queued/running, 200 with results, 500 when failed."""
    file_id, aid = _ids(request)
    try:
        state = await request.app[JOBS].state(job_key(request, file_id, aid))
    except NotFound:
        raise NotFound("analysis not found") from None
    return state_response(file_id, aid, state)


@routes.delete("/results/{file_id}/{analysis_id}")
async def delete_results(request: web.Request) -> web.Response:
    """Cancel and remove an analysis."""
    file_id, aid = _ids(request)
    try:
        await request.app[JOBS].cancel(job_dir(request, file_id, aid), remove=True)
    except NotFound:
        raise NotFound("analysis not found") from None
    return web.json_response({"file_id": file_id, "analysis_id": aid, "deleted": True})


@routes.get("/download/{file_id}/analysis/{analysis_id}/{name}")
async def download_output(request: web.Request) -> web.StreamResponse:
    """A file an analysis produced (Range)."""
    file_id, aid = _ids(request)
    name = request.match_info["name"]
    if "/" in name or "\x00" in name or name.startswith(".") or name in PRIVATE_FILES or len(name) > 255:
        raise NotFound("no such output")
    try:
        return await send_file(request, job_dir(request, file_id, aid) / name,
                                headers={"Cache-Control": "public, max-age=86400"})
    except NotFound:
        raise NotFound("no such output") from None


async def cancel_all_for(app: web.Application, file_id: str) -> None:
    root = app[LAYOUT].object_dir(file_id) / "analysis"
    names = await asyncio.to_thread(lambda: os.listdir(root) if root.is_dir() else [])
    for aid in names:
        try:
            await app[JOBS].cancel(root / aid, remove=True)
        except NotFound:
            continue


PROVIDER = AnalysesProvider


def setup(app: web.Application, deps: Deps) -> None:
    """Add this family's routes; register its provider and the hook that cancels jobs of a deleted object."""
    app.add_routes(routes)
    deps.providers.append(PROVIDER(deps.layout, deps.config))

    async def before_delete(file_id: str) -> None:
        await cancel_all_for(app, file_id)

    deps.before_delete.append(before_delete)
