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

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_OBJ = {"type": "object"}
_PARAM_RE = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

# Extra facts per operation: "query": {name: schema}, "body": schema, "responses": {status: description}.
OPERATIONS: dict[str, dict[str, Any]] = {}


def describe(key: str, **facts: Any) -> None:
    """Families call this from their setup(app) to document bodies, queries and responses."""
    OPERATIONS[key] = facts


def _path_params(template: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
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
    for method, template, handler in operations(app):
        doc = inspect.getdoc(handler) or ""
        summary, _, description = doc.partition("\n")
        facts = OPERATIONS.get(f"{method} {template}", {})
        op: dict[str, Any] = {
            "summary": summary.strip(),
            "operationId": method.lower() + "_" + re.sub(r"[^a-z0-9]+", "_", template.lower()).strip("_"),
            "tags": [template.strip("/").split("/")[0] or "root"],
            "parameters": _path_params(template) + [
                {"name": name, "in": "query", "required": False, "schema": schema}
                for name, schema in facts.get("query", {}).items()],
            "responses": {
                str(status): ({"description": text, "content": {"application/json": {"schema": ERROR}}}
                              if int(status) >= 400 else {"description": text})
                for status, text in facts.get("responses", {"200": "OK"}).items()},
        }
        op["responses"].setdefault("default", {"description": "error",
                                               "content": {"application/json": {"schema": ERROR}}})
        if description.strip():
            op["description"] = description.strip()
        if "body" in facts:
            op["requestBody"] = {"content": {"application/json": {"schema": facts["body"]}}}
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
