"""The OpenAPI document describes every route, and every route says what it does."""

from __future__ import annotations

from storaged.api import openapi


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
