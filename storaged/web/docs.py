"""GET /docs: the OpenAPI document rendered as one HTML page on the server (no JavaScript).

Routes are grouped by their first path segment; each shows its summary and
description, its parameters, its request body per media type and every
documented answer, with schemas written out as nested property lists (a
``$ref`` links to the schema's own entry at the end of the page).  Every
string from the document is escaped.
"""

from __future__ import annotations

import json
import re
from typing import Any

from storaged.web.page import esc, page

MAX_DEPTH = 4
_CONSTRAINTS = (("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"),
                ("exclusiveMaximum", "< {}"), ("minLength", "length ≥ {}"), ("maxLength", "length ≤ {}"),
                ("minItems", "≥ {} items"), ("maxItems", "≤ {} items"), ("pattern", "matches {}"),
                ("format", "{}"), ("default", "default {}"))
DOCS_STYLE = """
.op{border-top:1px solid #ddd;padding:.4em 0 .8em}.op h3{margin:.4em 0;font-size:1.05em}
.verb{display:inline-block;min-width:4.2em;font-weight:700;color:#fff;background:#555;border-radius:3px;
 padding:0 .4em;margin-right:.4em;text-align:center}
.verb.get{background:#2a7a2a}.verb.post{background:#1f5fa8}.verb.put{background:#8a5a00}
.verb.patch{background:#6a3d9a}.verb.delete{background:#a32a2a}
ul.schema{margin:.2em 0;padding-left:1.2em}ul.schema li{margin:.1em 0}.req{color:#a32a2a}
dl.answers dt{font-weight:600}dl.answers dd{margin:0 0 .4em 1.2em}
.toc{columns:14em}
"""


def prose(text: object) -> str:
    """Text from the document, escaped, with `backtick spans` shown as code."""
    parts = esc(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick stays a backtick
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def _type_text(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind:
        return str(kind)
    if "const" in schema:
        return "constant"
    return "any"


def _facts(schema: dict[str, Any]) -> str:
    parts = [_type_text(schema)]
    if "const" in schema:
        parts.append(f"= {json.dumps(schema['const'])}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(json.dumps(v) for v in schema["enum"]))
    for key, text in _CONSTRAINTS:
        if key in schema:
            value = schema[key]
            parts.append(text.format(json.dumps(value) if key == "default" else value))
    out = f"<code>{esc(', '.join(parts))}</code>"
    if schema.get("description"):
        out += f" — {prose(schema['description'])}"
    return out


def render_schema(schema: Any, depth: int = 0) -> str:
    """A schema as HTML: its type and limits, then its properties (or items) as a nested list."""
    if not isinstance(schema, dict):
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#{esc(_anchor(name))}"><code>{esc(name)}</code></a>'
    head = _facts(schema)
    if depth >= MAX_DEPTH:
        return head
    props = schema.get("properties") or {}
    if props:
        required = set(schema.get("required", []))
        items = "".join(
            f'<li><code>{esc(name)}</code>{" <span class=req>required</span>" if name in required else ""}: '
            f'{render_schema(sub, depth + 1)}</li>' for name, sub in props.items())
        extra = "" if schema.get("additionalProperties") is False else "<li><em>other properties may appear</em></li>" \
            if depth else ""
        return f'{head}<ul class="schema">{items}{extra}</ul>'
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return f'{head} of {render_schema(schema["items"], depth + 1)}'
    return head


def _parameters(op: dict[str, Any]) -> str:
    params = op.get("parameters") or []
    if not params:
        return ""
    rows = "".join(
        f'<li><code>{esc(p["name"])}</code> <span class="muted">({esc(p["in"])})</span>'
        f'{" <span class=req>required</span>" if p.get("required") else ""}: {render_schema(p.get("schema", {}), 1)}</li>'
        for p in params)
    return f'<p><strong>Parameters</strong></p><ul class="schema">{rows}</ul>'


def _content(content: dict[str, Any]) -> str:
    return "".join(f'<div><span class="muted">{esc(media)}</span>: {render_schema(item.get("schema", {}))}</div>'
                   for media, item in content.items())


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    anchor = esc(op.get("operationId", ""))
    out = [f'<div class="op" id="{anchor}"><h3><span class="verb {esc(method)}">{esc(method.upper())}</span>'
           f'<code>{esc(path)}</code></h3><p>{prose(op.get("summary", ""))}</p>']
    if op.get("description"):
        out.append(f'<p class="muted">{prose(op["description"])}</p>')
    out.append(_parameters(op))
    body = op.get("requestBody")
    if body:
        out.append(f'<p><strong>Body</strong>{" (required)" if body.get("required") else " (optional)"}</p>'
                   + _content(body.get("content", {})))
    answers = "".join(f'<dt>{esc(status)} — {prose(resp.get("description", ""))}</dt>'
                      f'<dd>{_content(resp.get("content", {}))}</dd>'
                      for status, resp in op.get("responses", {}).items())
    out.append(f'<p><strong>Answers</strong></p><dl class="answers">{answers}</dl></div>')
    return "".join(out)


def render(spec: dict[str, Any]) -> str:
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((method, path, op))
    toc = "".join(f'<li><a href="#tag-{esc(tag)}">/{esc(tag if tag != "root" else "")}</a> '
                  f'<span class="muted">({len(ops)})</span></li>' for tag, ops in by_tag.items())
    sections = [f'<h2 id="tag-{esc(tag)}">/{esc(tag if tag != "root" else "")}</h2>'
                + "".join(_operation(m, p, op) for m, p, op in ops) for tag, ops in by_tag.items()]
    schemas = spec.get("components", {}).get("schemas", {})
    defs = "".join(f'<div class="op" id="{esc(_anchor(name))}"><h3><code>{esc(name)}</code></h3>'
                   f'{render_schema(schema)}</div>' for name, schema in schemas.items())
    info = spec.get("info", {})
    body = (f'<style>{DOCS_STYLE}</style>'
            f'<p>{prose(info.get("description", ""))} Version {esc(info.get("version", ""))}. '
            f'Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI {esc(spec.get("openapi", ""))}).</p>'
            f'<ul class="toc">{toc}<li><a href="#schemas">schemas</a></li></ul>'
            + "".join(sections) + f'<h2 id="schemas">Schemas</h2>{defs}')
    return page("storaged API", body)
