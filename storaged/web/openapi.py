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
from storaged.analyses.work import ANALYSES, request_schema
from storaged.api.keys import CONFIG
from storaged.camera.api import BODIES as CAMERA_BODIES
from storaged.files.api import LIMIT_SCHEMA
from storaged.recording.segmenter import URL_SCHEMA
from storaged.schema import MAX_SAFE_INT, object_schema
from storaged.sessions.api import MAX_PAGE as SESSIONS_MAX_PAGE
from storaged.sessions.service import EVENT, RACE, SESSION, SPLIT_OPTIONS
from storaged.store.layout import OBJECT_ID_SCHEMA
from storaged.web import docs as docs_page
from storaged.videostreams.api import MAX_LIMIT as VS_MAX_LIMIT
from storaged.videostreams.service import RECORD_SCHEMA as VS_RECORD_SCHEMA
from storaged.videostreams.service import TIME_SCHEMA
from storaged.videostreams.service import body_schema as vs_body_schema

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_OBJ = {"type": "object"}
_PARAM_RE = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

# -- what every family documents ----------------------------------------------------------
# Each entry: "query": {name: schema}, "body": JSON schema, "body_required": bool,
# "content": {media type: schema} (non-JSON bodies), "path": {name: schema},
# "responses": {status: description}.  Only the statuses listed are documented:
# there is no catch-all "default", so a fuzzer's status_code_conformance check
# means something.  401 is added to every operation when a token is configured.

# -- schemas: the families' own definitions (the ones their checks enforce) ----------------
_POS_INT = {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INT}
_NONNEG = {"type": "number", "minimum": 0}
_OBJECT_ID = OBJECT_ID_SCHEMA
_BAD_ID = "malformed id"
_UNKNOWN = "unknown id, or no such route"

HTML = {"type": "string", "description": "an HTML page"}
BYTES = {"type": "string", "format": "binary"}
EMPTY = {"type": "string", "maxLength": 0, "description": "no body"}


def answer(description: str, schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    """A documented response with a body: ``schema`` under ``media``."""
    return {"description": description, "content": {media: {"schema": schema}}}


def answers_in(description: str, by_media: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A documented response that comes in several media types (content negotiation, files)."""
    return {"description": description, "content": {m: {"schema": s} for m, s in by_media.items()}}


def empty(description: str) -> dict[str, Any]:
    """A success answer whose body is empty (its news is in the status and headers)."""
    return answer(description, EMPTY, "text/plain")


def obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    """An answer object: the listed properties (all present unless ``required`` says otherwise); more may come."""
    return object_schema(props, required or tuple(props), closed=False)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answers(ok: Any, *errors: tuple[str, str], ok_status: str = "200") -> dict[str, Any]:
    return {ok_status: ok, **dict(errors)}


_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_POSIX = {"type": "number", "minimum": 0, "description": "POSIX seconds"}
_STR_OR_NULL = {"type": ["string", "null"]}
_NUM_OR_NULL = {"type": ["number", "null"]}
_ANY_OBJ = {"type": "object"}

_400 = ("400", "malformed id, body or parameter (the message names it)")
_404 = ("404", _UNKNOWN)
_409 = ("409", "conflict with the current state")
_413 = ("413", "larger than the upload limit")
_507 = ("507", "the data filesystem is full")
_416 = ("416", "the Range cannot be satisfied")

_BYTES_OK = answers_in("the bytes", {"application/octet-stream": BYTES})
_RANGE_OK = answers_in("a Range of the bytes (one part, or multipart/byteranges)",
                       {"application/octet-stream": BYTES, "multipart/byteranges": BYTES})
_DOWNLOAD = {"200": _BYTES_OK, "206": _RANGE_OK, "304": "not modified (If-None-Match)",
             "400": _BAD_ID, "404": _UNKNOWN, "416": "the Range cannot be satisfied"}
_LISTING = obj(path=_STR, entries={"type": "array", "items": obj(
    name=_STR, type={"type": "string", "enum": ["dir", "file"]}, symlink=_BOOL,
    size={"type": ["integer", "null"]}, mtime=_STR)})
_TREE = {"200": answers_in("a directory (HTML, or JSON with Accept: application/json), a player page (?play, "
                           "?view) or a file", {"text/html": HTML, "application/json": _LISTING,
                                                "application/octet-stream": BYTES}),
         "206": _RANGE_OK, "301": "a directory without its trailing slash",
         "304": "not modified", "400": "a path with `..`, NUL or a backslash",
         "404": "no such path inside the root", "416": "the Range cannot be satisfied"}

_META = obj(("file_id", "name", "stored_name", "size", "content_type", "created"),
            file_id=_OBJECT_ID, name=_STR, stored_name=_STR, size={"type": "integer", "minimum": 0},
            content_type=_STR, created=_STR)
_STORED = obj(("file_id", "size", "name", "content_type", "deduplicated", "download"),
              file_id=_OBJECT_ID, size={"type": "integer", "minimum": 0}, name=_STR, content_type=_STR,
              deduplicated=_BOOL, download=_STR, repaired=_BOOL)
_DELETED_ID = obj(id=_POS_INT, deleted={"const": True})
_CREATED_ID = obj(id=_POS_INT)

_PAGING = {"limit": {"type": "integer", "minimum": 1, "maximum": SESSIONS_MAX_PAGE,
                      "description": "records per page (default: all); more pages are announced in Link/X-Next-Cursor"},
           "cursor": {**_POS_INT, "description": "X-Next-Cursor of the previous page"}}
_EVENT_QUERY = {"race": _POS_INT, "type": {"type": "string"}, "from": _NONNEG, "to": _NONNEG, **_PAGING}
_SPLIT_STATUS = obj(("status", "job_id"), status={"type": "string", "enum": ["queued", "running", "done", "failed"]},
                    progress=_NUM_OR_NULL, job_id=_STR, accurate=_BOOL, races={"type": "array", "items": _ANY_OBJ},
                    error_message=_STR, stderr={"type": "array", "items": _STR})

_STREAM_PARAMS = {"url": URL_SCHEMA, "description": {"type": "string"}}
_STREAM_FORM = {"type": "object", "properties": _STREAM_PARAMS}
_STREAM_STATUS = obj(("id", "url", "description", "create_date", "start_date", "stop_date", "recording", "state"),
                     id=_POS_INT, url=_STR, description=_STR, create_date=_NUM, start_date=_NUM_OR_NULL,
                     stop_date=_NUM_OR_NULL, recording=_BOOL,
                     state={"type": "string", "enum": ["recording", "reconnecting", "stopped"]},
                     segments=_INT, bytes=_INT, gaps={"type": "array", "items": _ANY_OBJ})
_STREAM_OK = obj(result={"const": "ok"})
_CLIP = obj(("status",), status={"type": "string", "enum": ["pending", "processing", "done"]},
            clips={"type": "array", "items": _ANY_OBJ}, covered={"type": "array", "items": _ANY_OBJ},
            missing={"type": "array", "items": _ANY_OBJ})

_VS_RECORD = _ref("Videostream")
_VS_PAGE = obj(("results", "offset", "limit", "total"),
               results={"type": "array", "items": {"anyOf": [_VS_RECORD, {
                   "type": "object", "description": "with `format=key1,key2`: only those keys of the record"}]}},
               offset={"type": "integer", "minimum": 0}, limit={"type": "integer", "minimum": 1},
               total={"type": "integer", "minimum": 0}, next_cursor=_STR_OR_NULL)

_CAMERA_ERRORS = (("400", "malformed body, value or date, start after end, no images in the range"),
                  ("404", "unknown camera or process"))
_CONVERT_OK = obj(id=_STR, url=_STR, frameLimitMet=_BOOL)
_PROCESS_OBJ = obj(("id", "running"), id=_STR, link=_STR, type=_STR, requested=_STR, camera=_INT, start=_STR,
                   end=_STR, running=_BOOL)

OPERATIONS: dict[str, dict[str, Any]] = {
    # health, documents
    "GET /healthz": {"responses": {
        "200": answer("the daemon can take writes", obj(("ok",), ok={"const": True}, version=_STR, data_dir=_STR,
                                                         free_bytes=_INT)),
        "503": answer("the data root is not writable or below `health_min_free`",
                      obj(("ok",), ok={"const": False}, problems={"type": "array", "items": _STR}))}},
    "GET /openapi.json": {"responses": {"200": answer("this document", _ANY_OBJ)}},
    "GET /docs": {"responses": {"200": answer("every route with its parameters, bodies and answers", HTML,
                                              "text/html")}},
    "GET /metrics": {"responses": {"200": answer("Prometheus text format", _STR, "text/plain")}},
    # files
    "POST /upload": {
        "query": {"name": {"type": "string", "description": "the file's name (else Content-Disposition)"}},
        "content": {"application/octet-stream": BYTES,
                    "multipart/form-data": {"type": "object", "required": ["file"], "properties": {"file": BYTES}}},
        "responses": _answers(answer("stored (`repaired` when these bytes replaced a damaged stored copy)", _STORED),
                              ("400", "multipart without a `file` field"), _413, _507)},
    "PUT /upload": {
        "query": {"name": {"type": "string", "description": "the file's name (else Content-Disposition)"}},
        "content": {"application/octet-stream": BYTES},
        "responses": _answers(answer("the same as `POST /upload` (curl -T, rclone- and S3-style clients PUT)",
                                     _STORED), ("400", "malformed body"), _413, _507)},
    "PUT /upload/{name}": {
        "path": {"name": {"type": "string", "description": "the file's name"}},
        "content": {"application/octet-stream": BYTES},
        "responses": _answers(answer("the same as `POST /upload`, named by the path", _STORED),
                              ("400", "malformed body"), _413, _507)},
    "GET /upload": {"query": {"limit": LIMIT_SCHEMA,
                              "cursor": {"type": "string", "description": "the previous page's next_cursor"}},
                    "responses": _answers(answer("a page of files in id order",
                                                 obj(files={"type": "array", "items": _META},
                                                     next_cursor=_STR_OR_NULL)), _400)},
    "GET /upload/{file_id}": {"path": {"file_id": _OBJECT_ID},
                              "responses": _answers(answer("the file's meta, `pinned` and `download`",
                                                           {**_META, "properties": {**_META["properties"],
                                                                                    "pinned": _BOOL,
                                                                                    "download": _STR}}),
                                                    _400, _404)},
    "PUT /upload/{file_id}/pin": {"path": {"file_id": _OBJECT_ID},
                                  "responses": _answers(answer("the pin", obj(file_id=_OBJECT_ID, pinned=_BOOL)),
                                                        _400, _404)},
    "DELETE /upload/{file_id}/pin": {"path": {"file_id": _OBJECT_ID},
                                     "responses": _answers(answer("the pin", obj(file_id=_OBJECT_ID, pinned=_BOOL)),
                                                           _400, _404)},
    "DELETE /upload/{file_id}": {"path": {"file_id": _OBJECT_ID},
                                 "responses": _answers(answer("deleted", obj(file_id=_OBJECT_ID,
                                                                             deleted={"const": True})),
                                                       _400, _404)},
    "GET /download/{file_id}": {"path": {"file_id": _OBJECT_ID}, "query": {"dl": {"type": "string"}},
                                "responses": _DOWNLOAD},
    "GET /download/{file_id}/{name}": {"path": {"file_id": _OBJECT_ID}, "query": {"dl": {"type": "string"}},
                                       "responses": _DOWNLOAD},
    # pages
    "GET /": {"responses": {"200": answer("the landing page", HTML, "text/html")}},
    "GET /library/": {"query": {"page": {"type": "integer", "minimum": 1}},
                      "responses": {"200": answer("every stored file by name, newest first", HTML, "text/html")}},
    "GET /library": {"responses": {"301": "redirect to /library/"}},
    # browsing
    "GET /data": {"responses": {"301": "redirect to /data/"}},
    "GET /data/{path}": {"query": {"play": {"type": "string"}}, "responses": _TREE},
    # analyses
    "POST /analyse": {
        "body": request_schema(), "body_required": True,
        "responses": _answers(answer("the analysis (asked before, or queued now)",
                                     obj(file_id=_OBJECT_ID, analysis_id=_STR,
                                         status={"type": "string",
                                                 "enum": ["queued", "running", "done", "failed", "cancelled"]})),
                              ("400", "malformed file id, unknown analysis, bad argument (named)"),
                              ("404", "unknown file"), _507)},
    "GET /analyses": {"responses": {"200": answer("the analyses with their arguments and result shapes",
                                                  obj(analyses={"type": "array", "items": obj(
                                                      name=_STR, help=_STR, args={"type": "array", "items": _ANY_OBJ},
                                                      result=_ANY_OBJ)}))}},
    "GET /results/{file_id}": {"path": {"file_id": _OBJECT_ID},
                               "responses": _answers(answer("the file's analyses", obj(
                                   file_id=_OBJECT_ID, analyses={"type": "array", "items": _ANY_OBJ})), _400, _404)},
    "GET /results/{file_id}/{analysis_id}": {
        "path": {"file_id": _OBJECT_ID},
        "responses": {"200": answer("the results (shape per analysis: GET /analyses)", _ANY_OBJ),
                      "202": empty("pending: empty body; X-Job-Status, X-Job-Progress headers"),
                      "400": _BAD_ID, "404": "unknown analysis",
                      "500": answer("the analysis failed", obj(("error_message", "status"), error_message=_STR,
                                                               status={"const": "failed"},
                                                               stderr={"type": "array", "items": _STR}))}},
    "DELETE /results/{file_id}/{analysis_id}": {
        "path": {"file_id": _OBJECT_ID},
        "responses": _answers(answer("cancelled and removed", obj(file_id=_OBJECT_ID, analysis_id=_STR,
                                                                 deleted={"const": True})), _400,
                              ("404", "unknown analysis"))},
    "GET /download/{file_id}/analysis/{analysis_id}/{name}": {
        "path": {"file_id": _OBJECT_ID},
        "responses": {"200": _BYTES_OK, "206": _RANGE_OK, "304": "not modified",
                      "400": _BAD_ID, "404": "no such output", "416": "the Range cannot be satisfied"}},
    # sessions, races, events
    "GET /sessions": {"query": _PAGING, "responses": {"200": answer("every session in id order",
                                                                    {"type": "array", "items": _ref("Session")}),
                                                      "400": _400[1]}},
    "POST /sessions": {"body": SESSION.body_schema(partial=False),
                       "responses": _answers(answer("created; Location: /sessions/<id>", _CREATED_ID), _400, _507,
                                             ok_status="201")},
    "GET /sessions/{session_id}": {"path": {"session_id": _POS_INT},
                                   "responses": _answers(answer("the session", _ref("Session")), _400, _404)},
    "PUT /sessions/{session_id}": {"path": {"session_id": _POS_INT}, "body": SESSION.body_schema(partial=True),
                                   "responses": _answers(answer("the updated session", _ref("Session")),
                                                         _400, _404, _507)},
    "DELETE /sessions/{session_id}": {"path": {"session_id": _POS_INT},
                                      "responses": _answers(answer("deleted", _DELETED_ID), _400, _404)},
    "GET /sessions/{session_id}/races": {"path": {"session_id": _POS_INT}, "query": _PAGING,
                                         "responses": _answers(answer("the session's races in id order",
                                                                      {"type": "array", "items": _ref("Race")}),
                                                               _400, _404)},
    "POST /sessions/{session_id}/races": {
        "path": {"session_id": _POS_INT}, "body": RACE.body_schema(partial=False), "body_required": True,
        "responses": _answers(answer("created; Location: /races/<id>", _CREATED_ID), _400, _404, _507,
                              ok_status="201")},
    "GET /races/{race_id}": {"path": {"race_id": _POS_INT},
                             "responses": _answers(answer("the race", _ref("Race")), _400, _404)},
    "PUT /races/{race_id}": {"path": {"race_id": _POS_INT}, "body": RACE.body_schema(partial=True),
                             "responses": _answers(answer("the updated race", _ref("Race")), _400, _404, _507)},
    "DELETE /races/{race_id}": {"path": {"race_id": _POS_INT},
                                "responses": _answers(answer("deleted", _DELETED_ID), _400, _404)},
    "POST /sessions/{session_id}/split_races": {
        "path": {"session_id": _POS_INT}, "body": SPLIT_OPTIONS,
        "responses": _answers(answer("the split job; Location: its status", {
            **_SPLIT_STATUS, "required": ["status", "status_url", "job_id"],
            "properties": {**_SPLIT_STATUS["properties"], "status_url": _STR}}),
            ("400", "no video_url, no races, an unusable video_url, a bad option"), _404, _507, ok_status="202")},
    "GET /sessions/{session_id}/split_races": {
        "path": {"session_id": _POS_INT},
        "responses": _answers(answer("the split job's status and races", _SPLIT_STATUS), _400,
                              ("404", "unknown session, or no split requested"))},
    "GET /sessions/{session_id}/events": {"path": {"session_id": _POS_INT}, "query": _EVENT_QUERY,
                                          "responses": _answers(answer("the session's events in id order", {
                                              "type": "array", "items": _ref("Event")}), _400, _404)},
    "POST /sessions/{session_id}/events": {
        "path": {"session_id": _POS_INT}, "body": EVENT.body_schema(partial=False), "body_required": True,
        "responses": _answers(answer("created; Location: /events/<id>", _CREATED_ID), _400, _404, _507,
                              ok_status="201")},
    "GET /events": {"query": {"session": _POS_INT, **_EVENT_QUERY},
                    "responses": _answers(answer("matching events in id order",
                                                 {"type": "array", "items": _ref("Event")}), _400)},
    "GET /events/{event_id}": {"path": {"event_id": _POS_INT},
                               "responses": _answers(answer("the event", _ref("Event")), _400, _404)},
    "PUT /events/{event_id}": {"path": {"event_id": _POS_INT}, "body": EVENT.body_schema(partial=True),
                               "responses": _answers(answer("the updated event", _ref("Event")), _400, _404, _507)},
    "DELETE /events/{event_id}": {"path": {"event_id": _POS_INT},
                                  "responses": _answers(answer("deleted", _DELETED_ID), _400, _404)},
    # stream recording: the contract answers its own errors with 500
    "GET /streams": {"responses": {"200": answer("every stream's status", obj(result={"type": "array",
                                                                                      "items": _STREAM_STATUS}))}},
    "GET /streams/": {"responses": {"200": answer("every stream's status", obj(result={"type": "array",
                                                                                       "items": _STREAM_STATUS}))}},
    "GET /streams/create": {"query": _STREAM_PARAMS,
                            "responses": {"200": answer("created", obj(stream_id=_POS_INT)),
                                          "400": "a URL ffmpeg cannot record from",
                                          "500": "`URL cannot be empty`", "507": _507[1]}},
    "POST /streams/create": {"query": _STREAM_PARAMS,
                             "content": {"application/json": _STREAM_FORM,
                                         "application/x-www-form-urlencoded": _STREAM_FORM},
                             "responses": {"200": answer("created", obj(stream_id=_POS_INT)),
                                           "400": "a URL ffmpeg cannot record from, or a body that is not JSON",
                                           "500": "`URL cannot be empty`", "507": _507[1]}},
    "GET /streams/{id}/start": {"responses": {"200": answer("recording", _STREAM_OK), "404": "`Stream not found`",
                                              "500": "`Stream already started`, `Cannot start stream`"}},
    "POST /streams/{id}/start": {"responses": {"200": answer("recording", _STREAM_OK), "404": "`Stream not found`",
                                               "500": "`Stream already started`, `Cannot start stream`"}},
    "GET /streams/{id}/stop": {"responses": {"200": answer("stopped", _STREAM_OK), "404": "`Stream not found`",
                                             "500": "`Stream not started`, `Cannot stop stream`"}},
    "POST /streams/{id}/stop": {"responses": {"200": answer("stopped", _STREAM_OK), "404": "`Stream not found`",
                                              "500": "`Stream not started`, `Cannot stop stream`"}},
    "GET /streams/{id}/status": {"responses": {"200": answer("the status", _STREAM_STATUS),
                                               "404": "`Stream not found`", "500": "`Cannot get stream status`"}},
    "GET /streams/{id}/get_clip": {
        "query": {"start": {"type": "number", "minimum": 0, "description": "POSIX seconds"},
                  "stop": {"type": "number", "minimum": 0, "description": "POSIX seconds"},
                  "mode": {"type": "string", "enum": ["copy", "accurate"],
                           "description": "copy: from the keyframe at or before start; accurate: re-encoded "
                                          "from start"}},
        "responses": {"200": answer("the clip's state; `done` with its clips, covered and missing spans", _CLIP),
                      "400": "missing or malformed start/stop, stop <= start, unknown mode",
                      "404": "`Stream not found`",
                      "500": "`Stream not started`, or the cut failed (`Cannot cut clip: ...`)", "507": _507[1]}},
    # playback
    "GET /streams/{id}/recordings": {
        "query": {"start": _POSIX, "end": _POSIX},
        "responses": {"200": answer("recorded spans and gaps in the range", obj(
            start=_NUM_OR_NULL, end=_NUM_OR_NULL, recorded=_NUM,
            spans={"type": "array", "items": obj(start=_NUM, end=_NUM, duration=_NUM, segments=_INT)},
            gaps={"type": "array", "items": obj(start=_NUM, end=_NUM, duration=_NUM)})),
            "400": "malformed start/end, end <= start", "404": "`Stream not found`"}},
    "GET /streams/{id}/playlist.m3u8": {
        "query": {"start": _POSIX, "end": _POSIX},
        "responses": {"200": answer("HLS media playlist: VOD for a range, live without one", _STR,
                                    "application/vnd.apple.mpegurl"),
                      "400": "malformed start/end, end <= start", "404": "`Stream not found`"}},
    "GET /streams/{id}/segments/{run}/{name}": {
        "responses": {"200": answers_in("the segment (MPEG-TS)", {"video/mp2t": BYTES}),
                      "206": answers_in("a Range of it", {"video/mp2t": BYTES}),
                      "404": "`Stream not found`, or no such segment", "416": "the Range cannot be satisfied"}},
    "GET /streams/{id}/play.mp4": {
        "query": {"start": _POSIX, "end": _POSIX},
        "responses": {"200": answers_in("fragmented MP4, streamed as it is remuxed", {"video/mp4": BYTES}),
                      "400": "start missing or malformed, end <= start",
                      "404": "`Stream not found`, or nothing recorded in the range"}},
    "GET /play/{file_id}": {
        "path": {"file_id": _OBJECT_ID},
        "query": {"start": {"type": "number", "minimum": 0, "description": "seconds into the video"},
                  "end": {"type": "number", "minimum": 0, "description": "seconds into the video"}},
        "responses": {"200": answers_in("fragmented MP4, streamed as it is remuxed", {"video/mp4": BYTES}),
                      "400": "malformed start/end", "404": _UNKNOWN}},
    "GET /streams/{id}/timeline": {
        "query": {"day": {"type": "string", "format": "date"}},
        "responses": {"200": answer("the day's recording on a scale, click to play", HTML, "text/html"),
                      "400": "malformed day", "404": "`Stream not found`"}},
    # videostreams
    "GET /api/v1/videostreams": {
        "query": {"timespan[start]": TIME_SCHEMA, "timespan[end]": TIME_SCHEMA,
                  "capturesource": _POS_INT, "offset": {"type": "integer", "minimum": 0},
                  "limit": {"type": "integer", "minimum": 1, "maximum": VS_MAX_LIMIT},
                  "cursor": {"type": "string", "description": "X-Next-Cursor of the previous page"},
                  "format": {"type": "string", "description": "keys to keep, e.g. `id,stream_url`"}},
        "responses": _answers(answer("the videostreams overlapping the span (OpenFish's envelope); "
                                     "X-Next-Cursor/Link when more", _VS_PAGE),
                              ("400", "malformed parameter (`field` names it)"))},
    "POST /api/v1/videostreams": {
        "body": vs_body_schema(required=("stream_url", "startTime")), "body_required": True,
        "responses": _answers(answer("the stored record", _VS_RECORD), ("400", "invalid body (`field` names it)"),
                              _507)},
    "POST /api/v1/videostreams/live": {
        "body": vs_body_schema(("stream_url", "capturesource", "startTime"), required=("stream_url",)),
        "body_required": True,
        "responses": _answers(answer("the record, endTime null", _VS_RECORD),
                              ("400", "invalid body (`field` names it)"), _507)},
    "PATCH /api/v1/videostreams/{id}/live": {
        "path": {"id": _POS_INT}, "body": vs_body_schema(("endTime",)),
        "responses": _answers(answer("the ended record", _VS_RECORD), _400, _404,
                              ("409", "it has already ended"), _507)},
    "GET /api/v1/videostreams/{id}": {"path": {"id": _POS_INT},
                                      "query": {"format": {"type": "string", "description": "keys to keep"}},
                                      "responses": _answers(answer("the record (or the keys asked with format)",
                                                                   _ANY_OBJ), _400, _404)},
    "PATCH /api/v1/videostreams/{id}": {"path": {"id": _POS_INT}, "body": vs_body_schema(), "body_required": True,
                                        "responses": _answers(answer("the updated record", _VS_RECORD),
                                                              _400, _404, _507)},
    "DELETE /api/v1/videostreams/{id}": {"path": {"id": _POS_INT},
                                         "responses": _answers(answer("deleted", _DELETED_ID), _400, _404)},
    # camera storage
    "GET /motion/status": {"responses": {"200": answer("every camera's capture", obj(cameras={
        "type": "array", "items": obj(("camera", "running"), camera=_INT, running=_BOOL)}))}},
    "POST /convert/createVideo": {
        "body": CAMERA_BODIES["createVideo"], "body_required": True,
        "responses": _answers(answer("the process", _CONVERT_OK), *_CAMERA_ERRORS, _507)},
    "POST /convert/createZip": {
        "body": CAMERA_BODIES["createZip"], "body_required": True,
        "responses": _answers(answer("the process", _CONVERT_OK), *_CAMERA_ERRORS, _507)},
    "POST /convert/listFramesVideo": {
        "body": CAMERA_BODIES["listFramesVideo"], "body_required": True,
        "responses": _answers(answer("links to the images", obj(list={"type": "array", "items": _STR})),
                              *_CAMERA_ERRORS)},
    "POST /convert/statusProcess": {"body": CAMERA_BODIES["process"], "body_required": True,
                                    "responses": _answers(answer("the process' status", obj(
                                        ("running", "id"), running=_BOOL, id=_STR, status=_STR,
                                        progress=_NUM_OR_NULL, link=_STR)), *_CAMERA_ERRORS)},
    "POST /convert/cancelProcess": {"body": CAMERA_BODIES["process"], "body_required": True,
                                    "responses": _answers(answer("stopped and removed", obj(cancelled=_BOOL, id=_STR)),
                                                          *_CAMERA_ERRORS)},
    "POST /convert/listProcess": {"body": {"type": "object"},
                                  "responses": _answers(answer("every process", obj(list={
                                      "type": "array", "items": _PROCESS_OBJ})), _400)},
    "POST /convert/deleteProcess": {"body": CAMERA_BODIES["process"], "body_required": True,
                                    "responses": _answers(answer("deleted", obj(deleted=_BOOL, id=_STR)),
                                                          *_CAMERA_ERRORS)},
    "POST /file/pathSize": {"body": CAMERA_BODIES["camera"], "body_required": True,
                            "responses": _answers(answer("the camera folder's size", obj(size=_STR, bytes=_INT)),
                                                  *_CAMERA_ERRORS)},
    "POST /file/pathFileCount": {"body": CAMERA_BODIES["camera"], "body_required": True,
                                 "responses": _answers(answer("its file count", obj(count=_INT)), *_CAMERA_ERRORS)},
    "POST /file/pathDelete": {"body": CAMERA_BODIES["camera"], "body_required": True,
                              "responses": _answers(answer("deleted", obj(deleted=_BOOL, count=_INT)),
                                                    *_CAMERA_ERRORS)},
    "POST /file/pathClean": {
        "body": CAMERA_BODIES["pathClean"], "body_required": True,
        "responses": _answers(answer("old images deleted", obj(deleted=_BOOL, confidence=_NUM, count=_INT)),
                              *_CAMERA_ERRORS)},
    "GET /shared": {"responses": {"301": "redirect to /shared/"}},
    "GET /shared/{path}": {"query": {"play": {"type": "string"}}, "responses": _TREE},
}

COMPONENTS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error_message"], "properties": {"error_message": {"type": "string"}}},
    "Session": SESSION.record_schema(),
    "Race": RACE.record_schema(),
    "Event": EVENT.record_schema(),
    "Videostream": VS_RECORD_SCHEMA,
    **{f"AnalysisArgs.{name}": analysis.args_schema() for name, analysis in sorted(ANALYSES.items())},
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


def _response(status: str, spec: str | dict[str, Any]) -> dict[str, Any]:
    """A response object: built ones (``answer``, ``empty``…) as they are; a bare description gets the
    error shape for 4xx/5xx and no body otherwise (redirects, 304, 204)."""
    if isinstance(spec, dict):
        return spec
    if int(status) >= 400:
        return {"description": spec, "content": {"application/json": {"schema": ERROR}}}
    return {"description": spec}


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
            "responses": {str(status): _response(status, spec) for status, spec in sorted(answers.items())},
        }
        if description.strip():
            op["description"] = description.strip()
        content = dict(facts.get("content", {}))
        if "body" in facts:
            content["application/json"] = facts["body"]
        if content:
            op["requestBody"] = {"required": bool(facts.get("body_required")),
                                 "content": {media: {"schema": schema} for media, schema in content.items()}}
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
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}},
        },
    }


SPEC_KEY = web.AppKey("openapi", dict)
routes = web.RouteTableDef()

DOCS_KEY = web.AppKey("docs_page", str)


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    return web.json_response(request.app[SPEC_KEY])


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    """Every route with its parameters, bodies and answers, rendered from the OpenAPI document (HTML)."""
    return web.Response(text=request.app[DOCS_KEY], content_type="text/html")


def setup(app: web.Application, deps: object = None) -> None:
    """Call last in create_app: the document is built from the routes present then."""
    app.add_routes(routes)
    app[SPEC_KEY] = build(app)
    app[DOCS_KEY] = docs_page.render(app[SPEC_KEY])
