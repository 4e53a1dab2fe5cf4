"""tus with the clients people use, against a real daemon, over a bad network.

tuspy (Python) and tus-js-client (under Node, installed by ./manage.sh from
tests/js/package-lock.json) upload an ffmpeg-made video through a proxy that
cuts connections at random offsets, through a daemon that is SIGKILLed and
restarted mid-upload, and through a router that corrupts a chunk.  Each time
the upload must end as the stored file whose id is the SHA-256 of the source.
Headless Chromium runs tus-js-client's browser build on a page of another
origin, so CORS (preflight without the token, exposed headers) is proven too.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import aiohttp
import pytest
from tusclient import client as tus
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from tests.helpers import ffmpeg, sha256_file, wait_until
from tests.tcp_proxy import FlakyProxy

JS = Path(__file__).parent / "js"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """About 8 MiB of H.264 (lossless, so it is big) + AAC."""
    path = tmp_path_factory.mktemp("tus") / "race.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=960x540:rate=25:duration=6", "-f", "lavfi", "-i",
           "sine=frequency=440:duration=6", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
           "-c:a", "aac", str(path))
    assert path.stat().st_size > 4 * MiB
    return path


def tuspy_upload(endpoint: str, path: Path, *, chunk_size: int, retry_delay: int = 0,
                 checksum: bool = False) -> str:
    """Upload as a tuspy user would (its own retries), starting it again if it gives up; answers File-Id."""
    with open(path, "rb") as stream:  # given a path, tuspy opens it once per request and never closes it
        uploader = tus.TusClient(endpoint).uploader(file_stream=stream, chunk_size=chunk_size, retries=30,
                                                    retry_delay=retry_delay, upload_checksum=checksum,
                                                    metadata={"filename": path.name, "filetype": "video/mp4"})
        for _attempt in range(50):
            try:
                uploader.upload()
                break
            except (TusCommunicationError, TusUploadFailed):
                continue
        else:
            raise AssertionError("tuspy gave up 50 times")
    headers = uploader.request.response_headers if uploader.request is not None else {}
    return headers.get("file-id") or ""


async def node_upload(endpoint: str, path: Path, chunk_size: int | None = None) -> dict:
    args = ["node", str(JS / "upload.js"), endpoint, str(path)] + ([str(chunk_size)] if chunk_size else [])
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, cwd=JS)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=240)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


async def stored(daemon_url: str, file_id: str, source: Path) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon_url}/upload/{file_id}") as resp:
            assert resp.status == 200, await resp.text()
            meta = await resp.json()
    assert meta["size"] == source.stat().st_size and meta["name"] == source.name
    return meta


async def file_id_of(daemon_url: str, upload_url: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.head(daemon_url + re.sub(r"^https?://[^/]+", "", upload_url),
                             headers={"Tus-Resumable": "1.0.0"}) as resp:
            return resp.headers.get("File-Id", "")


def test_node_and_the_js_client_are_installed():
    assert shutil.which("node"), "node is installed by ./manage.sh (Debian nodejs)"
    assert (JS / "node_modules" / "tus-js-client" / "package.json").is_file(), "./manage.sh runs npm ci in tests/js"


async def test_tuspy_resumes_through_random_cuts(daemon, video):
    d = daemon()
    proxy = await FlakyProxy(d.port, cut=(32 * 1024, MiB), seed=7).start()
    try:
        file_id = await asyncio.to_thread(tuspy_upload, f"{proxy.url}/files/", video, chunk_size=MiB)
    finally:
        await proxy.close()
    assert proxy.cuts >= 5, f"only {proxy.cuts} cuts: the test did not test resuming"
    assert file_id == sha256_file(video)
    await stored(d.url, file_id, video)
    assert len(list((d.data_dir / "uploads").iterdir())) == 1  # resumed, never started over


async def test_tus_js_client_resumes_through_random_cuts(daemon, video):
    d = daemon()
    proxy = await FlakyProxy(d.port, cut=(32 * 1024, MiB), seed=11).start()
    try:
        # One PATCH for the whole file (the client's default): every cut keeps what arrived.
        result = await node_upload(f"{proxy.url}/files/", video)
    finally:
        await proxy.close()
    assert proxy.cuts >= 5, f"only {proxy.cuts} cuts: the test did not test resuming"
    assert result["file_id"] == sha256_file(video)
    await stored(d.url, result["file_id"], video)
    assert await file_id_of(d.url, result["url"]) == result["file_id"]
    assert len(list((d.data_dir / "uploads").iterdir())) == 1  # resumed, never started over


@pytest.mark.parametrize("client", ["tuspy", "tus-js-client"])
async def test_client_resumes_after_the_daemon_is_killed_mid_upload(daemon, video, client):
    d = daemon()
    proxy = await FlakyProxy(d.port, rate=2 * MiB).start()  # slow enough to be caught mid-upload
    size = video.stat().st_size

    def progress() -> list[tuple[int, int]]:
        found = []
        for info_path in (d.data_dir / "uploads").glob("*/info.json"):
            info = json.loads(info_path.read_text())
            data = info_path.parent / "data"
            found.append((info["offset"], data.stat().st_size if data.exists() else info["offset"]))
        return found

    try:
        if client == "tuspy":
            upload = asyncio.create_task(asyncio.to_thread(tuspy_upload, f"{proxy.url}/files/", video,
                                                           chunk_size=MiB, retry_delay=1))
        else:
            upload = asyncio.create_task(node_upload(f"{proxy.url}/files/", video, chunk_size=MiB))

        async def under_way():
            if upload.done():
                raise AssertionError(f"the client ended before the kill: {upload.result()!r} {progress()}")
            p = progress()
            return len(p) == 1 and 0 < p[0][0] < size
        await wait_until(under_way, timeout=60, what="the upload under way")
        await asyncio.to_thread(d.kill)  # SIGKILL
        # What the daemon answered is on disk: the committed offset's bytes are all in `data`.
        (offset, on_disk), = progress()
        assert on_disk >= offset > 0
        await asyncio.to_thread(d.start)
        result = await upload
    finally:
        await proxy.close()
    file_id = result if client == "tuspy" else result["file_id"]
    assert file_id == sha256_file(video)
    await stored(d.url, file_id, video)
    assert len(progress()) == 1  # the client resumed its upload after the restart


async def test_a_corrupted_chunk_gets_460_and_the_upload_still_completes(daemon, video):
    d = daemon()
    body = video.read_bytes()
    at = len(body) // 3
    while body.count(body[at:at + 24]) != 1:  # bytes that occur once, a third into the file
        at += 997
    marker = body[at:at + 24]
    proxy = await FlakyProxy(d.port, corrupt=marker).start()
    try:
        file_id = await asyncio.to_thread(tuspy_upload, f"{proxy.url}/files/", video, chunk_size=256 * 1024,
                                          checksum=True)
    finally:
        await proxy.close()
    assert proxy.corrupted == 1
    assert file_id == sha256_file(video)
    await stored(d.url, file_id, video)
    async with aiohttp.ClientSession() as http:
        metrics = await (await http.get(f"{d.url}/metrics")).text()
    refused = [line for line in metrics.splitlines()
               if line.startswith("storaged_http_requests_total") and 'status="460"' in line]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) == 1.0, refused


PAGE = """<!doctype html><meta charset="utf-8"><title>upload</title><script src="/tus.min.js"></script>
<script>
async function upload(endpoint, token) {
  const blob = await (await fetch('/race.mp4')).blob()
  return await new Promise((resolve, reject) => {
    const up = new tus.Upload(blob, {
      endpoint, chunkSize: 1024 * 1024, retryDelays: [0, 500, 1000],
      headers: { Authorization: 'Bearer ' + token },
      metadata: { filename: 'race.mp4', filetype: blob.type || 'video/mp4' },
      onSuccess: ({ lastResponse }) => resolve({ url: up.url, file_id: lastResponse.getHeader('File-Id') }),
      onError: (err) => reject(String(err)),
    })
    up.start()
  })
}
</script>"""


async def test_a_browser_uploads_from_another_origin_with_tus_js_client(daemon, video):
    """Chromium on a page of another origin: CORS preflights (without the token), exposed headers."""
    from aiohttp import web

    from tests.browser import Browser

    d = daemon("--token", "s3cret")
    async def index(_request):
        return web.Response(text=PAGE, content_type="text/html")

    async def client_js(_request):
        return web.FileResponse(JS / "node_modules" / "tus-js-client" / "dist" / "tus.min.js")

    async def source(_request):
        return web.FileResponse(video)

    page_app = web.Application()
    page_app.router.add_get("/", index)
    page_app.router.add_get("/tus.min.js", client_js)
    page_app.router.add_get("/race.mp4", source)
    runner = web.AppRunner(page_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    page_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"
    try:
        async with Browser() as browser:
            page = await browser.new_page()
            await page.goto(page_url)
            result = await page.evaluate(f"upload({json.dumps(d.url + '/files/')}, 's3cret')", timeout=120)
    finally:
        await runner.cleanup()
    assert result["file_id"] == sha256_file(video)  # read from a header the daemon exposes to the page
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as http:
        async with http.get(f"{d.url}/upload/{result['file_id']}") as resp:
            assert resp.status == 200 and (await resp.json())["name"] == "race.mp4"
