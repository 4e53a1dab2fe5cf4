"""One corpus of hostile names and ids, thrown at every route that takes a path, an id or a name.

Every route template of the app is enumerated from the router (so a new
route is covered without editing this file); each of its parameters in turn
gets every value of the corpus (the others a valid value), sent as a raw
HTTP request line so nothing normalises it on the way.  Ids that travel in
bodies (analyses, camera processes and cameras, event race ids) and upload
names get the same corpus.  Every answer must be 400/404 (or the family's
contract error — the stream contract's 500 ``Stream not started`` —, and for
a query filter an ordinary answer that matches nothing; never another 5xx), no answer may carry the bytes of a file outside
the data root (one sits next to it, and symlinks inside point at it), and
the data tree must be exactly as before — nothing written, nothing deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from storaged.web import openapi
from storaged.store.objects import safe_filename

SECRET = b"TOPSECRET-outside-the-data-root"
CORPUS = [
    "..", "../..", "%2e%2e", "%2E%2E%2F%2E%2E", ".%2e", "..%2f..%2fsecret.txt", "%2f", "%2fetc%2fpasswd",
    "%2F..%2F..%2Fsecret.txt", "..%5c..%5csecret.txt", "%5c", "\\..\\", "%00", "a%00b", "1%00",
    "/etc/passwd", "//etc/passwd", "%0d%0aX-Injected:%201", "%0a", "a" * 5000, "%E2%80%AE%E2%80%8Bu",
    "%C3%BC%C3%B1%C3%AE", "%F0%9F%92%A9", "%ff%fe", "escape", "escape_dir", "escape_dir/secret.txt",
    "-1", "0", "00", "1e3", "1.0", "0x10", "%201", "+1", "99999999999999999999999999", "null", "%25",
    "~root", "*", ";rm", "${IFS}",
]
# Raw values for bodies and query strings (decoded forms of the above, plus types JSON allows).
BODY_VALUES = ["..", "../../secret.txt", "/etc/passwd", "\\..\\x", "\x00", "a\x00b", "\r\nX: 1", "a" * 5000,
               "\u202e\u200b", "ü", "escape", "-1", "0", "", " ", "1e308", "-1e308", 1.5, -1, 0, 2**64, True, [], {},
               None]  # null: "no id" where a field allows it, else 400


def tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns if not p.is_dir() else 0)
    return out


async def raw_request(host: str, port: int, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode("latin-1") + b"\r\n" + (body or b""))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.fixture
async def seeded(client, data_dir, tmp_path):
    (tmp_path / "secret.txt").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.txt", data_dir / "escape")
    os.symlink(tmp_path, data_dir / "escape_dir")
    (data_dir / "shared").mkdir(exist_ok=True)
    os.symlink(tmp_path / "secret.txt", data_dir / "shared" / "escape")
    os.symlink(tmp_path, data_dir / "shared" / "escape_dir")
    resp = await client.post("/upload", params={"name": "seed.mp4"}, data=b"seed bytes" * 100)
    file_id = (await resp.json())["file_id"]
    sid = (await (await client.post("/sessions", json={})).json())["id"]
    await client.post(f"/sessions/{sid}/races", json={"start_time": 1, "duration": 1})
    await client.post(f"/sessions/{sid}/events", json={"time": 1, "type": "x"})
    await client.post("/streams/create", data={"url": "udp://127.0.0.1:9"})
    return {"file_id": file_id}


def valid_value(param: str, seeded: dict) -> str:
    return {"file_id": seeded["file_id"], "analysis_id": "0" * 40, "name": "x.mp4", "path": ""}.get(param, "1")


async def test_every_route_refuses_hostile_path_parameters(client, seeded, data_dir, tmp_path):
    before = tree(data_dir)
    host, port = client.server.host, client.server.port
    failures = []
    checked = 0
    for method, template, _ in openapi.operations(client.app):
        if (method, template) == ("PUT", "/upload/{name}"):
            continue  # an upload's name is data, stored sanitised: see test_hostile_upload_names_...
        params = re.findall(r"\{([^}:]+)(?::[^}]*)?\}", template)
        for param in params:
            for value in CORPUS:
                target = template
                for other in params:
                    replacement = value if other == param else valid_value(other, seeded)
                    target = re.sub(r"\{" + other + r"(?::[^}]*)?\}", lambda _m: replacement, target)
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                status, data = await raw_request(host, port, method, target, body)
                checked += 1
                where = f"{method} {target[:120]}"
                if SECRET in data:
                    failures.append(f"{where}: leaked the file outside the data root")
                cosmetic = template.startswith("/download/{file_id}/{name}") and param == "name"
                # A lone encoded slash names the root itself (`/data//`): a listing inside the root.
                cosmetic |= param == "path" and value == "%2f"
                if status >= 500:
                    failures.append(f"{where}: {status} {data[-200:]!r}")
                elif status not in (400, 404) and not (cosmetic and status == 200):
                    failures.append(f"{where}: answered {status}, expected 400 or 404")
    assert checked > 500
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:60])
    assert tree(data_dir) == before, "a hostile request changed the data tree"


BODY_ROUTES = [
    ("POST", "/analyse", lambda v, s: {"file_id": v, "analysis": "dummy"}),
    ("POST", "/analyse", lambda v, s: {"file_id": s["file_id"], "analysis": v}),
    ("POST", "/convert/statusProcess", lambda v, s: {"id": v}),
    ("POST", "/convert/cancelProcess", lambda v, s: {"id": v}),
    ("POST", "/convert/deleteProcess", lambda v, s: {"id": v}),
    ("POST", "/file/pathSize", lambda v, s: {"camera": v}),
    ("POST", "/file/pathDelete", lambda v, s: {"camera": v}),
    ("POST", "/convert/listFramesVideo", lambda v, s: {"camera": v, "start": "20240101-000000",
                                                       "end": "20240101-010000", "frames": 1}),
    ("POST", "/sessions/1/events", lambda v, s: {"time": 1, "type": "x", "race_id": v}),
    ("GET", "/streams/1/get_clip?start={q}", None),
    ("GET", "/events?session={q}", None),
    ("GET", "/events?session=1&to={q}", None),
    ("GET", "/events?from={q}", None),
    ("GET", "/api/v1/videostreams?capturesource={q}", None),
    ("GET", "/upload?cursor={q}", None),
]


async def test_ids_in_bodies_and_queries_are_refused(client, seeded, data_dir):
    from urllib.parse import quote

    before = tree(data_dir)
    failures = []
    for method, path, make in BODY_ROUTES:
        for value in BODY_VALUES:
            if value is None and path.endswith("/events"):
                continue  # race_id null is a valid event without a race: it would be created
            if make is None:
                if not isinstance(value, str):
                    continue
                resp = await client.request(method, path.format(q=quote(value, safe="")))
            else:
                resp = await client.request(method, path, data=json.dumps(make(value, seeded)),
                                            headers={"Content-Type": "application/json"})
            data = await resp.read()
            if SECRET in data:
                failures.append(f"{method} {path} {value!r}: leaked")
            contract = path.startswith("/streams/") and resp.status == 500 and b"Stream" in data
            if resp.status >= 500 and not contract:
                failures.append(f"{method} {path} {value!r}: {resp.status} {data[:200]!r}")
            elif make is not None and resp.status not in (400, 404) and value is not None:
                failures.append(f"{method} {path} {value!r}: answered {resp.status}, expected 400 or 404")
    assert not failures, "\n".join(failures[:60])
    assert tree(data_dir) == before, "a hostile request changed the data tree"


async def test_hostile_upload_names_are_stored_under_a_safe_name(client, data_dir, tmp_path):
    names = ["../../evil.sh", "/etc/passwd", "..\\..\\win.ini", "a\x00b.mp4", "x\r\nSet-Cookie: a=b.mp4",
             "a" * 5000 + ".mp4", "\u202eexe.mp4", "ü/../..", "meta.json", "the_file", ".hidden", "..",
             "analysis", "%2e%2e%2fx"]
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    for i, (name, put) in enumerate((n, put) for n in names for put in (False, True)):
        body = f"hostile {i}".encode()
        # PUT /upload/<name>: the name in the path (clients resolve "..", "/" splits it: those go as ?name=).
        if put and "/" not in name and "\x00" not in name and name not in (".", ".."):
            resp = await client.put(f"/upload/{quote(name, safe='')}", data=body)
        else:
            resp = await client.post("/upload", params={"name": name}, data=body)
        assert resp.status == 200, (name, await resp.text())
        meta = await resp.json()
        obj = data_dir / meta["file_id"][:2] / meta["file_id"][2:]
        stored = json.loads((obj / "meta.json").read_text())["stored_name"]
        assert stored == safe_filename(name) and "/" not in stored and "\\" not in stored
        assert not stored.startswith(".") and stored not in ("meta.json", "the_file", "analysis")
        assert (obj / stored).read_bytes() == body and (obj / stored).resolve().parent == obj.resolve()
        # The original name comes back as data (JSON), never as a header line of its own.
        dl = await client.get(meta["download"])
        assert dl.status == 200 and await dl.read() == body
        assert "Set-Cookie" not in dl.headers
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before, "an upload wrote outside the data root"


# JSON documents built to hurt a decoder, each with the words its refusal must name (so a 400 from
# the decoder's limit is told apart from a route's own validation).
JSON_BOMBS = {
    "array nesting bomb": (b"[" * 100_000 + b"]" * 100_000, "items"),
    "object nesting bomb": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "items"),
    "deep but small": (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper"),
    "overflowing float": (b'{"a": 1e999999}', "out of range"),
    "negative overflow": (b'{"a": -1e999999}', "out of range"),
    "10,000-digit integer": (b'{"a": 1' + b"0" * 10_000 + b"}", "number longer"),
    "duplicate keys": (b'{"a": 1, "a": 2}', "duplicate key"),
    "lone high surrogate": (b'{"a": "\\ud800"}', "surrogate"),
    "lone low surrogate key": (b'{"\\udc00": 1}', "surrogate"),
    "surrogate as raw bytes": (b'{"a": "\xed\xa0\x80"}', "surrogate"),
    "huge string": (b'{"a": "' + b"x" * 200_000 + b'"}', "string longer"),
    "body past the size limit": (b'{"a": "' + b"x" * 3_000_000 + b'"}', "larger than"),
    "many items": (b"[" + b"1," * 200_000 + b"1]", "items"),
    "many strings": (b"[" + b'"",' * 200_000 + b'""]', "items"),
}


async def _json_routes(client, seeded) -> list[tuple[str, str]]:
    """Every operation whose documented body is JSON, read off /openapi.json (built from the router)."""
    spec = await (await client.get("/openapi.json")).json()
    out = []
    for template, ops in spec["paths"].items():
        for method, op in ops.items():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                path = re.sub(r"\{([^}]+)\}", lambda m: valid_value(m.group(1), seeded), template)
                out.append((method.upper(), path))
    return out


async def test_every_json_route_refuses_json_bombs(client, seeded, data_dir):
    routes = await _json_routes(client, seeded)
    assert len(routes) >= 20, routes  # sessions, races, events, analyses, videostreams, camera, streams
    before = tree(data_dir)
    host, port = client.server.host, client.server.port
    failures = []
    for method, path in routes:
        for name, (body, words) in JSON_BOMBS.items():
            status, data = await raw_request(host, port, method, path, body)
            answer = data.partition(b"\r\n\r\n")[2]
            try:
                message = json.loads(answer)["error_message"]
            except (ValueError, KeyError, TypeError):
                message = None
            if status != 400 or message is None or words not in message:
                failures.append(f"{method} {path} {name}: {status} {answer[:160]!r}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:60])
    assert tree(data_dir) == before, "a JSON bomb changed the data tree"
    assert (await client.get("/healthz")).status == 200
