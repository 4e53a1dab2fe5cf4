"""The OpenAPI document describes every route, and every route says what it does."""

from __future__ import annotations

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


async def test_docs_page(client):
    resp = await client.get("/docs")
    assert resp.status == 200 and "/openapi.json" in await resp.text()


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
