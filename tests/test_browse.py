"""GET /data/…: listings, JSON, player pages, Range, and refusal of every way out of the data root."""

from __future__ import annotations

import os

import pytest

from tests.helpers import sha256_file


@pytest.fixture
async def stored(client, data_dir):
    resp = await client.post("/upload", params={"name": "race <1>.mp4"}, data=b"\x00video" * 1000)
    return (await resp.json())["file_id"]


async def test_root_listing_html_and_json(client, stored):
    resp = await client.get("/data/")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert f'href="{stored[:2]}/"' in html and "tmp/" in html
    resp = await client.get("/data/", headers={"Accept": "application/json"})
    body = await resp.json()
    names = {e["name"]: e for e in body["entries"]}
    assert names[stored[:2]]["type"] == "dir"


async def test_object_dir_lists_escaped_names_with_player_link(client, stored):
    resp = await client.get(f"/data/{stored[:2]}/{stored[2:]}/")
    html = await resp.text()
    assert resp.status == 200
    assert "race_1.mp4" in html and "?play" in html and "meta.json" in html
    assert "<1>" not in html
    play = await client.get(f"/data/{stored[:2]}/{stored[2:]}/race_1.mp4?play")
    assert "<video" in await play.text()


async def test_names_are_escaped_in_listings(client, data_dir):
    (data_dir / "notes").mkdir()
    (data_dir / "notes" / "<img src=x onerror=alert(1)>.txt").write_text("x")
    html = await (await client.get("/data/notes/")).text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.txt" in html


async def test_files_are_served_with_range_and_symlinks_inside_are_followed(client, stored, data_dir):
    obj = f"/data/{stored[:2]}/{stored[2:]}"
    full = await client.get(f"{obj}/the_file")
    body = await full.read()
    assert full.status == 200 and len(body) == 6000
    part = await client.get(f"{obj}/race_1.mp4", headers={"Range": "bytes=1-5"})
    assert part.status == 206 and await part.read() == b"video"


async def test_directory_without_slash_redirects(client, stored):
    resp = await client.get(f"/data/{stored[:2]}", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"].endswith(f"/data/{stored[:2]}/")
    assert (await client.get("/data", allow_redirects=False)).status == 301


TRAVERSALS = [
    "/data/../setup.cfg", "/data/..%2fsetup.cfg", "/data/%2e%2e/setup.cfg", "/data/%2e%2e%2fsetup.cfg",
    "/data/..%5csetup.cfg", "/data/....//setup.cfg", "/data/%252e%252e/setup.cfg", "/data/./../setup.cfg",
    "/data//etc/passwd", "/data/%2fetc%2fpasswd", "/data/tmp/../../x", "/data/a%00b", "/data/%00",
    "/data/..", "/data/.%2e/", "/data/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/data/outside-link/passwd",
    "/data/outside-link", "/data/abs-link", "/data/loop", "/data/..;/x", "/data/\\..\\x",
    "/download/../setup.cfg", "/download/%2e%2e%2fsetup.cfg", "/download/..%2f..%2fetc%2fpasswd",
    "/download/" + "0" * 64 + "/..%2f..%2fsetup.cfg", "/download/%00", "/download/" + "a" * 63 + "%2f",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_traversal_attempts_are_refused(client, data_dir, tmp_path, path):
    secret = tmp_path / "outside"
    secret.mkdir(exist_ok=True)
    (secret / "passwd").write_text("SECRET")
    (tmp_path / "setup.cfg").write_text("SECRET")
    if not (data_dir / "outside-link").is_symlink():
        os.symlink(secret, data_dir / "outside-link")
        os.symlink("/etc/passwd", data_dir / "abs-link")
        os.symlink("loop", data_dir / "loop")
    resp = await client.get(path, allow_redirects=False)
    text = await resp.text()
    if resp.url.path == "/":  # the client itself resolved the dots: this asked for the landing page
        assert resp.status == 200 and "<h1>storaged</h1>" in text
        return
    assert resp.status in (400, 404), (path, resp.status)
    assert "SECRET" not in text and "root:" not in text
    assert "error_message" in await resp.json()


async def test_download_path_names_are_cosmetic_but_ids_are_checked(client, stored, data_dir):
    resp = await client.get(f"/download/{stored}/anything.mp4")
    assert resp.status == 200
    obj = data_dir / stored[:2] / stored[2:]
    assert sha256_file(obj / "race_1.mp4") == stored


async def test_parent_links_stay_inside_the_mount(client):
    """`../` appears below a mount's root only, so it never leads out of /data/ or /shared/ (it was a 404)."""
    for root in ("/data/", "/shared/"):
        assert 'href="../"' not in await (await client.get(root)).text()
    inner = await client.get("/shared/captures/")
    assert 'href="../"' in await inner.text()
    assert (await client.get("/shared/captures/../")).status == 200


async def test_landing_links_a_stream_timeline_when_the_app_has_one(aiohttp_client, config):
    """The landing page links /streams/<id>/timeline as soon as a family adds such a route."""
    from aiohttp import web

    from storaged.app import create_app

    async def timeline(request):
        return web.Response(text="timeline")

    app = create_app(config)
    app.router.add_get("/streams/{id}/timeline", timeline)
    client = await aiohttp_client(app)
    sid = (await (await client.post("/streams/create", json={"url": "udp://127.0.0.1:9"})).json())["stream_id"]
    html = await (await client.get("/")).text()
    assert f'href="/streams/{sid}/timeline">timeline</a>' in html


async def test_recent_uploads_follow_every_upload_and_delete(client):
    """The landing page's recent list (cached per fan-out directory) sees each new and each deleted file."""
    ids = []
    for i in range(3):
        resp = await client.post("/upload", params={"name": f"take {i}.mp4"}, data=f"bytes {i}".encode())
        ids.append((await resp.json())["file_id"])
        html = await (await client.get("/")).text()
        positions = [html.index(f"take {j}.mp4") for j in range(i + 1)]
        assert positions == sorted(positions, reverse=True), "newest first"
    assert (await client.delete(f"/upload/{ids[1]}")).status == 200
    html = await (await client.get("/")).text()
    assert "take 1.mp4" not in html and "take 0.mp4" in html and "take 2.mp4" in html
