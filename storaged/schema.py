"""JSON Schema facts that travel with the checks that enforce them.

A validator is decorated with the schema of what it accepts, built from the
same constants it checks against, so the OpenAPI document (storaged.web.openapi)
reads its request schemas off the validators and no limit has a second copy:

    @documents({"type": "string", "minLength": 1, "maxLength": MAX_TYPE_CHARS})
    def _type(name, value): ...

``schema_of(check)`` answers the schema; ``object_schema`` assembles a body.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
MAX_SAFE_INT = 2**53 - 1


def documents(schema: dict[str, Any]) -> Callable[[F], F]:
    """Attach ``schema`` (what the decorated check accepts) to it."""
    def attach(check: F) -> F:
        check.json_schema = schema  # type: ignore[attr-defined]
        return check
    return attach


def schema_of(check: Callable[..., Any]) -> dict[str, Any]:
    try:
        return check.json_schema  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(f"{check.__qualname__} has no documented schema (decorate it with @documents)") from None


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema, also accepting null."""
    kind = schema.get("type")
    types = [kind] if isinstance(kind, str) else list(kind or [])
    return {**schema, "type": [*types, "null"]} if "null" not in types else schema


def object_schema(properties: Mapping[str, dict[str, Any]], required: Iterable[str] = (), *,
                  closed: bool = True, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if required := sorted(required):
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


def array_of(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}
