"""GET /openapi.json and /docs: the API described from the routes themselves.

The document is built from the app's router at start-up, so a route can
never be missing from it: each operation's summary and description come
from its handler's docstring, path parameters from the route template, and
request bodies, query parameters and responses from ``OPERATIONS`` below
(keyed by "METHOD /template").  ``tests/test_openapi.py`` fails when a route
has no docstring, or when ``OPERATIONS`` names a route that does not exist.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from aiohttp import web

from storaged import __version__
from storaged.api.keys import CONFIG

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_OBJ = {"type": "object"}
_PARAM_RE = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

# -- what every family documents ----------------------------------------------------------
# Each entry: "query": {name: schema}, "body": JSON schema, "body_required": bool,
# "content": {media type: schema} (non-JSON bodies), "path": {name: schema},
# "responses": {status: description}.  Only the statuses listed are documented:
# there is no catch-all "default", so a fuzzer's status_code_conformance check
# means something.  401 is added to every operation when a token is configured.

_POS_INT = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
_NONNEG = {"type": "number", "minimum": 0}
_OBJECT_ID = {"type": "string", "description": "file id: 64 lowercase hex characters (SHA-256)"}
_BAD_ID = "malformed id"
_UNKNOWN = "unknown id, or no such route"


def _answers(ok: str, *errors: tuple[str, str], ok_status: str = "200") -> dict[str, str]:
    return {ok_status: ok, **dict(errors)}


_400 = ("400", "malformed id, body or parameter (the message names it)")
_404 = ("404", _UNKNOWN)
_409 = ("409", "conflict with the current state")
_413 = ("413", "larger than the upload limit")
_507 = ("507", "the data filesystem is full")
_416 = ("416", "the Range cannot be satisfied")

_DOWNLOAD = {"200": "the bytes", "206": "a Range of the bytes", "304": "not modified (If-None-Match)",
             "400": _BAD_ID, "404": _UNKNOWN, "416": "the Range cannot be satisfied"}
_TREE = {"200": "a directory (HTML, or JSON with Accept: application/json) or a file",
         "206": "a Range of a file", "301": "a directory without its trailing slash",
         "304": "not modified", "400": "a path with `..`, NUL or a backslash",
         "404": "no such path inside the root", "416": "the Range cannot be satisfied"}

_SESSION_BODY = {"type": "object", "additionalProperties": False,
                 "properties": {"video_url": {"type": ["string", "null"], "maxLength": 8192}}}
_RACE_BODY = {"type": "object", "additionalProperties": False,
              "properties": {"start_time": _NONNEG, "duration": _NONNEG,
                             "video_url": {"type": ["string", "null"], "maxLength": 8192}}}
_EVENT_BODY = {"type": "object", "additionalProperties": False,
               "properties": {"time": _NONNEG, "type": {"type": "string", "minLength": 1, "maxLength": 200},
                              "duration": {"type": ["number", "null"], "minimum": 0},
                              "race_id": {"type": ["integer", "null"], "minimum": 1},
                              "data": {"type": "object"}}}
_EVENT_QUERY = {"race": _POS_INT, "type": {"type": "string"}, "from": _NONNEG, "to": _NONNEG}

_STREAM_PARAMS = {"url": {"type": "string", "description": "a URL ffmpeg can read"},
                  "description": {"type": "string"}}
_STREAM_FORM = {"type": "object", "properties": _STREAM_PARAMS}
_STREAM_500 = "the contract's error: `{\"error_message\"}` with its fixed text"

_RFC3339 = {"type": "string", "description": "RFC 3339 date-time with an offset"}
_VS_BODY = {"type": "object", "additionalProperties": False,
            "properties": {"stream_url": {"type": "string", "minLength": 1},
                           "startTime": _RFC3339, "endTime": {"type": ["string", "null"]},
                           "capturesource": {"type": ["integer", "null"], "minimum": 1}}}

_CAMERA = {"type": "integer", "minimum": 1}
_WHEN = {"type": "string", "description": "YYYYMMDD-HHMMSS, an ISO date or date-time"}
_CONVERT = {"camera": _CAMERA, "start": _WHEN, "end": _WHEN, "skip": {"type": "integer", "minimum": 0},
            "save": {"type": "boolean"}}
_PROCESS = {"type": "object", "required": ["id"],
            "properties": {"id": {"type": "string", "description": "<8 letters/digits>-<YYYYMMDD-HHMMSS>"}}}
_CAMERA_BODY = {"type": "object", "required": ["camera"], "properties": {"camera": _CAMERA}}
_CAMERA_ERRORS = (("400", "malformed body, value or date, start after end, no images in the range"),
                  ("404", "unknown camera or process"))

OPERATIONS: dict[str, dict[str, Any]] = {
    # health, documents
    "GET /healthz": {"responses": {"200": "`{\"ok\": true, \"version\", \"data_dir\", \"free_bytes\"}`",
                                   "503": "`{\"ok\": false, ..., \"problems\": [why]}`: the data root is not "
                                          "writable or below `health_min_free`"}},
    "GET /openapi.json": {"responses": {"200": "this document"}},
    "GET /docs": {"responses": {"200": "an HTML page listing the routes"}},
    "GET /metrics": {"responses": {"200": "Prometheus text format"}},
    # files
    "POST /upload": {
        "query": {"name": {"type": "string", "description": "the file's name (else Content-Disposition)"}},
        "content": {"application/octet-stream": {"type": "string", "format": "binary"},
                    "multipart/form-data": {"type": "object", "required": ["file"],
                                            "properties": {"file": {"type": "string", "format": "binary"}}}},
        "responses": _answers("`{\"file_id\", \"size\", \"name\", \"content_type\", \"deduplicated\", \"download\"}`, "
                              "plus `\"repaired\"` when these bytes replaced a damaged stored copy",
                              ("400", "multipart without a `file` field"), _413, _507)},
    "PUT /upload": {
        "query": {"name": {"type": "string", "description": "the file's name (else Content-Disposition)"}},
        "content": {"application/octet-stream": {"type": "string", "format": "binary"}},
        "responses": _answers("the same as `POST /upload` (curl -T, rclone- and S3-style clients PUT)",
                              ("400", "malformed body"), _413, _507)},
    "PUT /upload/{name}": {
        "path": {"name": {"type": "string", "description": "the file's name"}},
        "content": {"application/octet-stream": {"type": "string", "format": "binary"}},
        "responses": _answers("the same as `POST /upload`, named by the path", ("400", "malformed body"),
                              _413, _507)},
    "GET /upload": {"query": {"limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                              "cursor": {"type": "string", "description": "the previous page's next_cursor"}},
                    "responses": _answers("`{\"files\": [meta], \"next_cursor\"}`", _400)},
    "GET /upload/{file_id}": {"path": {"file_id": _OBJECT_ID},
                              "responses": _answers("the file's meta, `pinned` and `download`", _400, _404)},
    "DELETE /upload/{file_id}": {"path": {"file_id": _OBJECT_ID},
                                 "responses": _answers("`{\"file_id\", \"deleted\": true}`", _400, _404)},
    "PUT /upload/{file_id}/pin": {"path": {"file_id": _OBJECT_ID},
                                  "responses": _answers("`{\"file_id\", \"pinned\": true}`", _400, _404)},
    "DELETE /upload/{file_id}/pin": {"path": {"file_id": _OBJECT_ID},
                                     "responses": _answers("`{\"file_id\", \"pinned\": false}`", _400, _404)},
    "GET /download/{file_id}": {"path": {"file_id": _OBJECT_ID}, "query": {"dl": {"type": "string"}},
                                "responses": _DOWNLOAD},
    "GET /download/{file_id}/{name}": {"path": {"file_id": _OBJECT_ID}, "query": {"dl": {"type": "string"}},
                                       "responses": _DOWNLOAD},
    # pages
    "GET /": {"responses": {"200": "the landing page (HTML)"}},
    "GET /library/": {"query": {"page": {"type": "integer", "minimum": 1}},
                    "responses": {"200": "every stored file by name, newest first (HTML)"}},
    "GET /library": {"responses": {"301": "redirect to /library/"}},
    # browsing
    "GET /data": {"responses": {"301": "redirect to /data/"}},
    "GET /data/{path}": {"query": {"play": {"type": "string"}}, "responses": _TREE},
    # analyses
    "POST /analyse": {
        "body": {"type": "object", "required": ["file_id", "analysis"],
                 "properties": {"file_id": _OBJECT_ID, "analysis": {"type": "string"},
                                "args": {"type": "object"}, "retry": {"type": "boolean"}}},
        "body_required": True,
        "responses": _answers("`{\"file_id\", \"analysis_id\", \"status\"}`",
                              ("400", "malformed file id, unknown analysis, bad argument (named)"),
                              ("404", "unknown file"), _507)},
    "GET /analyses": {"responses": {"200": "`{\"analyses\": [{name, help, args, result}]}`"}},
    "GET /results/{file_id}": {"path": {"file_id": _OBJECT_ID},
                               "responses": _answers("`{\"file_id\", \"analyses\": [...]}`", _400, _404)},
    "GET /results/{file_id}/{analysis_id}": {
        "path": {"file_id": _OBJECT_ID},
        "responses": {"200": "the results", "202": "pending: empty body; X-Job-Status, X-Job-Progress headers",
                      "400": _BAD_ID, "404": "unknown analysis",
                      "500": "the analysis failed: `{\"error_message\", \"status\": \"failed\", \"stderr\"}`"}},
    "DELETE /results/{file_id}/{analysis_id}": {
        "path": {"file_id": _OBJECT_ID},
        "responses": _answers("`{\"file_id\", \"analysis_id\", \"deleted\": true}`", _400,
                              ("404", "unknown analysis"))},
    "GET /download/{file_id}/analysis/{analysis_id}/{name}": {
        "path": {"file_id": _OBJECT_ID},
        "responses": {"200": "the output file", "206": "a Range of it", "304": "not modified",
                      "400": _BAD_ID, "404": "no such output", "416": "the Range cannot be satisfied"}},
    # sessions, races, events
    "GET /sessions": {"responses": {"200": "a JSON list of sessions in id order"}},
    "POST /sessions": {"body": _SESSION_BODY,
                       "responses": _answers("`{\"id\"}`; Location: /sessions/<id>", _400, _507,
                                             ok_status="201")},
    "GET /sessions/{session_id}": {"path": {"session_id": _POS_INT},
                                   "responses": _answers("the session", _400, _404)},
    "PUT /sessions/{session_id}": {"path": {"session_id": _POS_INT}, "body": _SESSION_BODY,
                                   "responses": _answers("the updated session", _400, _404, _507)},
    "DELETE /sessions/{session_id}": {"path": {"session_id": _POS_INT},
                                      "responses": _answers("`{\"id\", \"deleted\": true}`", _400, _404)},
    "GET /sessions/{session_id}/races": {"path": {"session_id": _POS_INT},
                                         "responses": _answers("a JSON list of races", _400, _404)},
    "POST /sessions/{session_id}/races": {
        "path": {"session_id": _POS_INT}, "body": {**_RACE_BODY, "required": ["start_time", "duration"]},
        "body_required": True,
        "responses": _answers("`{\"id\"}`; Location: /races/<id>", _400, _404, _507, ok_status="201")},
    "GET /races/{race_id}": {"path": {"race_id": _POS_INT}, "responses": _answers("the race", _400, _404)},
    "PUT /races/{race_id}": {"path": {"race_id": _POS_INT}, "body": _RACE_BODY,
                             "responses": _answers("the updated race", _400, _404, _507)},
    "DELETE /races/{race_id}": {"path": {"race_id": _POS_INT},
                                "responses": _answers("`{\"id\", \"deleted\": true}`", _400, _404)},
    "POST /sessions/{session_id}/split_races": {
        "path": {"session_id": _POS_INT},
        "body": {"type": "object", "additionalProperties": False, "properties": {"accurate": {"type": "boolean"}}},
        "responses": _answers("`{\"status\", \"status_url\", \"job_id\", ...}`",
                              ("400", "no video_url, no races, an unusable video_url, a bad option"),
                              _404, _507, ok_status="202")},
    "GET /sessions/{session_id}/split_races": {
        "path": {"session_id": _POS_INT},
        "responses": _answers("the split job's status and races", _400,
                              ("404", "unknown session, or no split requested"))},
    "GET /sessions/{session_id}/events": {"path": {"session_id": _POS_INT}, "query": _EVENT_QUERY,
                                          "responses": _answers("a JSON list of events", _400, _404)},
    "POST /sessions/{session_id}/events": {
        "path": {"session_id": _POS_INT}, "body": {**_EVENT_BODY, "required": ["time", "type"]},
        "body_required": True,
        "responses": _answers("`{\"id\"}`; Location: /events/<id>", _400, _404, _507, ok_status="201")},
    "GET /events": {"query": {"session": _POS_INT, **_EVENT_QUERY},
                    "responses": _answers("a JSON list of events", _400)},
    "GET /events/{event_id}": {"path": {"event_id": _POS_INT}, "responses": _answers("the event", _400, _404)},
    "PUT /events/{event_id}": {"path": {"event_id": _POS_INT}, "body": _EVENT_BODY,
                               "responses": _answers("the updated event", _400, _404, _507)},
    "DELETE /events/{event_id}": {"path": {"event_id": _POS_INT},
                                  "responses": _answers("`{\"id\", \"deleted\": true}`", _400, _404)},
    # stream recording: the contract answers its own errors with 500
    "GET /streams": {"responses": {"200": "`{\"result\": [status]}`"}},
    "GET /streams/": {"responses": {"200": "`{\"result\": [status]}`"}},
    "GET /streams/create": {"query": _STREAM_PARAMS,
                            "responses": {"200": "`{\"stream_id\"}`", "400": "a URL ffmpeg cannot record from",
                                          "500": "`URL cannot be empty`", "507": _507[1]}},
    "POST /streams/create": {"query": _STREAM_PARAMS,
                             "content": {"application/json": _STREAM_FORM,
                                         "application/x-www-form-urlencoded": _STREAM_FORM},
                             "responses": {"200": "`{\"stream_id\"}`",
                                           "400": "a URL ffmpeg cannot record from, or a body that is not JSON",
                                           "500": "`URL cannot be empty`", "507": _507[1]}},
    "GET /streams/{id}/start": {"responses": {"200": "`{\"result\": \"ok\"}`", "404": "`Stream not found`",
                                              "500": "`Stream already started`, `Cannot start stream`"}},
    "POST /streams/{id}/start": {"responses": {"200": "`{\"result\": \"ok\"}`", "404": "`Stream not found`",
                                               "500": "`Stream already started`, `Cannot start stream`"}},
    "GET /streams/{id}/stop": {"responses": {"200": "`{\"result\": \"ok\"}`", "404": "`Stream not found`",
                                             "500": "`Stream not started`, `Cannot stop stream`"}},
    "POST /streams/{id}/stop": {"responses": {"200": "`{\"result\": \"ok\"}`", "404": "`Stream not found`",
                                              "500": "`Stream not started`, `Cannot stop stream`"}},
    "GET /streams/{id}/status": {"responses": {"200": "the status", "404": "`Stream not found`",
                                               "500": "`Cannot get stream status`"}},
    "GET /streams/{id}/get_clip": {
        "query": {"start": {"type": "number", "minimum": 0, "description": "POSIX seconds"},
                  "stop": {"type": "number", "minimum": 0, "description": "POSIX seconds"}},
        "responses": {"200": "`{\"status\": pending|processing|done|failed, ...}`",
                      "400": "missing or malformed start/stop, stop <= start", "404": "`Stream not found`",
                      "500": "`Stream not started`", "507": _507[1]}},
    # videostreams
    "GET /api/v1/videostreams": {
        "query": {"timespan[start]": _RFC3339, "timespan[end]": _RFC3339, "capturesource": _POS_INT,
                  "offset": {"type": "integer", "minimum": 0},
                  "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                  "cursor": {"type": "string", "description": "X-Next-Cursor of the previous page"},
                  "format": {"type": "string", "description": "keys to keep, e.g. `id,stream_url`"}},
        "responses": _answers("`{results: [videostreams overlapping the span], offset, limit, total, next_cursor}`; "
                              "X-Next-Cursor/Link when more",
                              ("400", "malformed parameter (`field` names it)"))},
    "POST /api/v1/videostreams": {
        "body": {**_VS_BODY, "required": ["stream_url", "startTime"]}, "body_required": True,
        "responses": _answers("the stored record", ("400", "invalid body (`field` names it)"), _507)},
    "POST /api/v1/videostreams/live": {
        "body": {"type": "object", "additionalProperties": False, "required": ["stream_url"],
                 "properties": {k: _VS_BODY["properties"][k] for k in ("stream_url", "capturesource", "startTime")}},
        "body_required": True,
        "responses": _answers("the record, endTime null", ("400", "invalid body (`field` names it)"), _507)},
    "PATCH /api/v1/videostreams/{id}/live": {
        "path": {"id": _POS_INT},
        "body": {"type": "object", "additionalProperties": False, "properties": {"endTime": _RFC3339}},
        "responses": _answers("the ended record", _400, _404, ("409", "it has already ended"), _507)},
    "GET /api/v1/videostreams/{id}": {"path": {"id": _POS_INT},
                                      "query": {"format": {"type": "string", "description": "keys to keep"}},
                                      "responses": _answers("the record", _400, _404)},
    "PATCH /api/v1/videostreams/{id}": {"path": {"id": _POS_INT}, "body": _VS_BODY, "body_required": True,
                                        "responses": _answers("the updated record", _400, _404, _507)},
    "DELETE /api/v1/videostreams/{id}": {"path": {"id": _POS_INT},
                                         "responses": _answers("`{\"id\", \"deleted\": true}`", _400, _404)},
    # camera storage
    "GET /motion/status": {"responses": {"200": "`{\"cameras\": [...]}`"}},
    "POST /convert/createVideo": {
        "body": {"type": "object", "required": ["camera", "fps", "start", "end"],
                 "properties": {**_CONVERT, "fps": {"type": "number", "exclusiveMinimum": 0, "maximum": 240}}},
        "body_required": True,
        "responses": _answers("`{\"id\", \"url\", \"frameLimitMet\"}`", *_CAMERA_ERRORS, _507)},
    "POST /convert/createZip": {
        "body": {"type": "object", "required": ["camera", "start", "end"], "properties": _CONVERT},
        "body_required": True,
        "responses": _answers("`{\"id\", \"url\", \"frameLimitMet\"}`", *_CAMERA_ERRORS, _507)},
    "POST /convert/listFramesVideo": {
        "body": {"type": "object", "required": ["camera", "start", "end", "frames"],
                 "properties": {"camera": _CAMERA, "start": _WHEN, "end": _WHEN,
                                "frames": {"type": "integer", "minimum": 1}}},
        "body_required": True, "responses": _answers("`{\"list\": [links]}`", *_CAMERA_ERRORS)},
    "POST /convert/statusProcess": {"body": _PROCESS, "body_required": True,
                                    "responses": _answers("the process' status", *_CAMERA_ERRORS)},
    "POST /convert/cancelProcess": {"body": _PROCESS, "body_required": True,
                                    "responses": _answers("`{\"cancelled\", \"id\"}`", *_CAMERA_ERRORS)},
    "POST /convert/listProcess": {"body": {"type": "object"},
                                  "responses": _answers("`{\"list\": [ProcessObj]}`", _400)},
    "POST /convert/deleteProcess": {"body": _PROCESS, "body_required": True,
                                    "responses": _answers("`{\"deleted\", \"id\"}`", *_CAMERA_ERRORS)},
    "POST /file/pathSize": {"body": _CAMERA_BODY, "body_required": True,
                            "responses": _answers("`{\"size\", \"bytes\"}`", *_CAMERA_ERRORS)},
    "POST /file/pathFileCount": {"body": _CAMERA_BODY, "body_required": True,
                                 "responses": _answers("`{\"count\"}`", *_CAMERA_ERRORS)},
    "POST /file/pathDelete": {"body": _CAMERA_BODY, "body_required": True,
                              "responses": _answers("`{\"deleted\", \"count\"}`", *_CAMERA_ERRORS)},
    "POST /file/pathClean": {
        "body": {"type": "object", "required": ["camera", "days"],
                 "properties": {"camera": _CAMERA, "days": _NONNEG}},
        "body_required": True,
        "responses": _answers("`{\"deleted\", \"confidence\", \"count\"}`", *_CAMERA_ERRORS)},
    "GET /shared": {"responses": {"301": "redirect to /shared/"}},
    "GET /shared/{path}": {"query": {"play": {"type": "string"}}, "responses": _TREE},
}


def describe(key: str, **facts: Any) -> None:
    """Families may call this from their setup(app) to add or refine the facts of an operation."""
    OPERATIONS.setdefault(key, {}).update(facts)


def _path_params(template: str, schemas: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    # A documented schema says what a valid id looks like; the route still takes any string
    # (and answers 400/404 for the rest), which a fuzzer's negative mode exercises.
    schemas = schemas or {}
    return [{"name": name, "in": "path", "required": True, "schema": schemas.get(name, {"type": "string"})}
            for name in _PARAM_RE.findall(template)]


def openapi_path(template: str) -> str:
    return _PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", template)


def operations(app: web.Application):
    """(method, template, handler) for every route; a "*" route (GET and POST alike) counts as both."""
    for resource in app.router.resources():
        template = resource.canonical
        for route in resource:
            methods = ("GET", "POST") if route.method == "*" else (route.method,)
            for method in methods:
                if method not in ("HEAD", "OPTIONS"):
                    yield method, template, route.handler


def route_keys(app: web.Application) -> set[str]:
    return {f"{method} {template}" for method, template, _ in operations(app)}


def build(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    token = bool(getattr(app.get(CONFIG), "token", None))
    for method, template, handler in operations(app):
        doc = inspect.getdoc(handler) or ""
        summary, _, description = doc.partition("\n")
        facts = OPERATIONS.get(f"{method} {template}", {})
        answers = dict(facts.get("responses", {"200": "OK"}))
        if token and template != "/healthz":
            answers.setdefault("401", "no or wrong token")
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            # Any write can meet a disk fault; one middleware maps them (storaged.api.middleware).
            answers.setdefault("503", "the data filesystem is read-only or failing (`cause`: EROFS, EIO)")
            answers.setdefault("507", _507[1] + " (`cause`: ENOSPC, EDQUOT)")
        op: dict[str, Any] = {
            "summary": summary.strip(),
            "operationId": method.lower() + "_" + re.sub(r"[^a-z0-9]+", "_", template.lower()).strip("_"),
            "tags": [template.strip("/").split("/")[0] or "root"],
            "parameters": _path_params(template, facts.get("path")) + [
                {"name": name, "in": "query", "required": False, "schema": schema}
                for name, schema in facts.get("query", {}).items()],
            "responses": {
                str(status): ({"description": text, "content": {"application/json": {"schema": ERROR}}}
                              if int(status) >= 400 else {"description": text})
                for status, text in sorted(answers.items())},
        }
        if description.strip():
            op["description"] = description.strip()
        content = dict(facts.get("content", {}))
        if "body" in facts:
            content["application/json"] = facts["body"]
        if content:
            op["requestBody"] = {"required": bool(facts.get("body_required")), "content": content}
        while op["operationId"] in seen_ids:  # "/streams" and "/streams/" are both routes
            op["operationId"] += "_"
        seen_ids.add(op["operationId"])
        paths.setdefault(openapi_path(template), {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "storaged", "version": __version__,
                 "description": "Storage daemon of a video capture box. See the README for behaviour."},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error_message"],
                                  "properties": {"error_message": {"type": "string"}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}},
        },
    }


SPEC_KEY = web.AppKey("openapi", dict)
routes = web.RouteTableDef()

DOCS_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>storaged API</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}code{background:#eee;padding:0 3px}
h2{margin-top:1.5em}li{margin:.3em 0}</style></head><body><h1>storaged API</h1>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p><div id="ops"></div>
<script>
fetch('/openapi.json').then(r => r.json()).then(spec => {
  const byTag = {};
  for (const [path, ops] of Object.entries(spec.paths))
    for (const [method, op] of Object.entries(ops))
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method.toUpperCase(), path, op]);
  const root = document.getElementById('ops');
  for (const [tag, ops] of Object.entries(byTag)) {
    const h = document.createElement('h2'); h.textContent = '/' + tag; root.appendChild(h);
    const ul = document.createElement('ul'); root.appendChild(ul);
    for (const [method, path, op] of ops) {
      const li = document.createElement('li');
      const code = document.createElement('code'); code.textContent = method + ' ' + path;
      li.appendChild(code); li.appendChild(document.createTextNode(' ' + (op.summary || '')));
      ul.appendChild(li);
    }
  }
});
</script></body></html>"""


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    return web.json_response(request.app[SPEC_KEY])


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    """A small page listing every route, read from /openapi.json."""
    return web.Response(text=DOCS_PAGE, content_type="text/html")


def setup(app: web.Application) -> None:
    """Call last in create_app: the document is built from the routes present then."""
    app.add_routes(routes)
    app[SPEC_KEY] = build(app)
