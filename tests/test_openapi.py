"""The OpenAPI document describes every route, and every route says what it does."""

from __future__ import annotations

import html

import jsonschema
import pytest
from openapi_spec_validator import validate

from storaged.web import openapi


async def test_document_matches_the_routes(client):
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    documented = {f"{m.upper()} {path}" for path, ops in spec["paths"].items() for m in ops}
    routes = {f"{k.split(' ', 1)[0]} {openapi.openapi_path(k.split(' ', 1)[1])}" for k in openapi.route_keys(client.app)}
    assert documented == routes
    undocumented = sorted(f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m, op in ops.items()
                          if not op["summary"])
    assert not undocumented, f"handlers without a docstring: {undocumented}"
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


async def test_described_operations_exist(client):
    keys = openapi.route_keys(client.app)
    stale = sorted(set(openapi.OPERATIONS) - keys)
    assert not stale, f"OPERATIONS describes routes that do not exist: {stale}"


async def test_the_document_validates_as_openapi_3_1(client):
    """openapi-spec-validator, the validator client generators and gateways use, accepts the document."""
    spec = await (await client.get("/openapi.json")).json()
    validate(spec)  # raises with every problem found
    assert spec["openapi"] == "3.1.0"


async def test_docs_page_renders_every_route_on_the_server(client):
    """/docs is complete without JavaScript: every operation with its parameters, body and answers."""
    spec = await (await client.get("/openapi.json")).json()
    resp = await client.get("/docs")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html" and "<script" not in text
    for path, ops in spec["paths"].items():
        for method in ops:
            assert f'{method.upper()}</span><code>{html.escape(path)}</code>' in text, (method, path)
    # a query parameter, a body's property with its limit, an answer with its schema, a shared schema
    assert "<code>timespan[start]</code>" in text
    assert "<code>type</code> <span class=req>required</span>: <code>string, length ≥ 1, length ≤ 200" in text
    assert "<dt>201 — created; Location: /sessions/&lt;id&gt;</dt>" in text
    assert 'id="schema-AnalysisArgs.thumbnails"' in text and "`" not in text.split("<h2", 1)[1]


async def test_every_body_and_every_success_answer_has_a_schema(client):
    spec = await (await client.get("/openapi.json")).json()
    missing = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for media, item in op.get("requestBody", {}).get("content", {}).items():
                if "schema" not in item:
                    missing.append(f"{method.upper()} {path} request {media}")
            for status, resp in op["responses"].items():
                if status.startswith("2") and status != "204":
                    content = resp.get("content") or {}
                    if not content or any("schema" not in item for item in content.values()):
                        missing.append(f"{method.upper()} {path} {status}")
    assert not missing, f"without a schema: {missing}"


def test_request_schemas_are_the_ones_the_checks_enforce():
    """One source of truth: the document's limits are the validators' own (change one, the other follows)."""
    from storaged.analyses import work
    from storaged.camera import api as camera
    from storaged.sessions import service as sessions
    from storaged.videostreams import service as videostreams
    ops = openapi.OPERATIONS
    assert ops["POST /sessions/{session_id}/events"]["body"] == sessions.EVENT.body_schema(partial=False)
    assert ops["POST /sessions/{session_id}/events"]["body"]["properties"]["type"]["maxLength"] == \
        sessions.MAX_TYPE_CHARS
    assert ops["POST /api/v1/videostreams"]["body"]["properties"]["stream_url"]["maxLength"] == \
        videostreams.MAX_URL_LENGTH
    assert ops["POST /convert/createVideo"]["body"]["properties"]["fps"]["maximum"] == camera.MAX_FPS
    assert ops["POST /analyse"]["body"] == work.request_schema()
    spec_args = openapi.COMPONENTS["AnalysisArgs.thumbnails"]["properties"]["width"]
    width = next(a for a in work.ANALYSES["thumbnails"].args if a.name == "width")
    assert (spec_args["minimum"], spec_args["maximum"]) == (width.minimum, width.maximum)


@pytest.mark.parametrize("body, ok", [
    ({"time": 1, "type": "lap"}, True),
    ({"time": -1, "type": "lap"}, False),
    ({"time": 1, "type": "x" * 201}, False),
    ({"time": 1, "type": "   "}, False),
    ({"time": 1, "type": "lap", "colour": "red"}, False),
    ({"type": "lap"}, False),
    ({"time": 1, "type": "lap", "race_id": None, "duration": None, "data": {"a": 1}}, True),
    ({"time": 1e307, "type": "lap", "duration": 1e308}, False),  # was a 500 that stored the event anyway
])
async def test_the_event_schema_and_the_handler_agree(client, body, ok):
    """What the document's schema accepts, the handler accepts, and what it refuses is a 400."""
    spec = await (await client.get("/openapi.json")).json()
    schema = spec["paths"]["/sessions/{session_id}/events"]["post"]["requestBody"]["content"]["application/json"]
    valid = jsonschema.Draft202012Validator(schema["schema"]).is_valid(body)
    sid = (await (await client.post("/sessions", json={})).json())["id"]
    resp = await client.post(f"/sessions/{sid}/events", json=body)
    assert (valid, resp.status) == (ok, 201 if ok else 400)
    stored = await (await client.get(f"/sessions/{sid}/events")).json()
    assert len(stored) == (1 if ok else 0)


async def test_a_huge_time_range_in_a_query_is_answered(client):
    resp = await client.get("/events", params={"from": "0", "to": "2.378570430614774e+307"})
    assert resp.status == 200 and await resp.json() == []


# Writes whose input is all in the path (or the query string).
BODILESS = {"PUT /upload/{file_id}/pin", "POST /streams/{id}/start", "POST /streams/{id}/stop"}


async def test_every_operation_lists_its_answers_and_bodies(client):
    """Fuzzing needs the facts: documented statuses (no catch-all), request bodies and query parameters."""
    keys = openapi.route_keys(client.app)
    undescribed = sorted(keys - set(openapi.OPERATIONS))
    assert not undescribed, f"routes without facts in OPERATIONS: {undescribed}"
    spec = await (await client.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "default" not in op["responses"], f"{method} {path}: a catch-all response documents nothing"
            assert all(code.isdigit() for code in op["responses"]), (method, path)
            key = f"{method.upper()} {path}"
            if method in ("post", "put", "patch") and key not in BODILESS:
                assert "requestBody" in op, \
                    f"{method.upper()} {path}: no request body documented"


async def test_a_token_adds_401_everywhere_but_healthz(make_client):
    client = await make_client(token="s3cret")
    resp = await client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"})
    spec = await resp.json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert ("401" in op["responses"]) == (path != "/healthz"), (method, path)


def test_describe_refines_an_operation():
    before = dict(openapi.OPERATIONS["GET /metrics"])
    try:
        openapi.describe("GET /metrics", responses={"200": "Prometheus text format", "503": "not ready"})
        assert openapi.OPERATIONS["GET /metrics"]["responses"]["503"] == "not ready"
    finally:
        openapi.OPERATIONS["GET /metrics"] = before
