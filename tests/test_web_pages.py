"""The pages a person sees, against a real daemon holding one of everything (tests/showcase.py):
the landing page's content, names before hashes in the tree, escaping, a crawl of every link with a
real HTTP client, and Chromium at phone width."""

from __future__ import annotations

import asyncio
import json
import re
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp
import jsonschema
import pytest

from tests.browser import Browser
from tests.helpers import Daemon
from tests.showcase import HOSTILE_NAME, Showcase, populate, unpopulate

PHONE = {"width": 390, "height": 844, "mobile": True}


@pytest.fixture(scope="module")
def showcase(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("showcase")
    daemon = Daemon(tmp / "data", "--stream-segment-time", "2")
    daemon.data_dir.mkdir()
    daemon.start()
    show = Showcase()
    try:
        asyncio.run(populate(daemon.url, daemon.data_dir, tmp / "media", show))
        yield daemon, show
    finally:
        asyncio.run(unpopulate(daemon.url, show))
        daemon.stop()


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            return resp.status, await resp.text()


async def test_landing_page_shows_uploads_streams_sessions_cameras_and_jobs(showcase):
    daemon, show = showcase
    status, html = await get_text(daemon.url + "/")
    assert status == 200
    # uploads by name, newest first, with size, duration, a thumbnail, play and download links
    assert html.index("finish line.jpg") < html.index("Morning ride.mp4")
    assert "0:08" in html
    assert re.search(rf'<img class="thumb"[^>]* src="/download/{show.video_id}/analysis/[0-9a-f]{{40}}/thumb_\d+\.jpg"',
                     html)
    assert f'href="/data/{show.video_id[:2]}/{show.video_id[2:]}/Morning_ride.mp4?play"' in html
    assert f'href="/download/{show.video_id}/Morning%20ride.mp4?dl"' in html
    # streams with their recordings by day, sessions, cameras with today's image, the job's progress bar
    assert "Gate &lt;north&gt;" in html and re.search(r"<td data-label=\"day\">\d{4}-\d\d-\d\d</td>", html)
    assert f'href="/sessions/{show.session_id}/races">1 race<' in html
    assert f'src="{show.camera_image}"' in html and "1 image today" in html
    assert re.search(r'<progress max="1" value="0\.\d+">', html) and ">dummy<" in html
    assert re.search(r'>finish line\.jpg</a></td><td data-label="status">running<', html)


async def test_user_supplied_text_is_escaped_everywhere(showcase):
    daemon, show = showcase
    for path in ("/", "/library/", f"/data/{show.hostile_id[:2]}/{show.hostile_id[2:]}/",
                 f"/data/{show.hostile_id[:2]}/"):
        status, html = await get_text(daemon.url + path)
        assert status == 200, path
        assert HOSTILE_NAME not in html and "<b " not in html and "<north>" not in html, path
    _, html = await get_text(daemon.url + "/")
    assert "&lt;b onclick=&quot;alert(&#x27;x&#x27;)&quot;&gt;race &amp; &quot;x&quot;.mp4" in html


async def test_the_hash_tree_shows_original_names_first(showcase):
    daemon, show = showcase
    oid = show.video_id
    _, html = await get_text(f"{daemon.url}/data/{oid[:2]}/{oid[2:]}/")
    assert re.search(r"<h1>Morning ride\.mp4</h1>", html)
    assert html.index("Morning ride.mp4") < html.index(oid)
    _, player = await get_text(f"{daemon.url}/data/{oid[:2]}/{oid[2:]}/Morning_ride.mp4?play")
    assert "<h1>Morning ride.mp4</h1>" in player
    _, fanout = await get_text(f"{daemon.url}/data/{oid[:2]}/")
    assert "<strong>Morning ride.mp4</strong>" in fanout
    _, root = await get_text(f"{daemon.url}/data/")
    assert 'href="/library/"' in root
    _, files = await get_text(f"{daemon.url}/library/")
    assert "Morning ride.mp4" in files and "finish line.jpg" in files


class Links(HTMLParser):
    ATTRS = {"a": "href", "img": "src", "video": "src", "source": "src", "link": "href", "script": "src"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        wanted = self.ATTRS.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.found.append(value)


async def test_crawl_from_home_finds_no_broken_link(showcase):
    """Every link and embedded resource on every page reachable from / answers below 400."""
    daemon, show = showcase
    origin = daemon.url
    seen: dict[str, str] = {"/": "(start)"}
    queue = ["/"]
    broken, pages = [], 0
    async with aiohttp.ClientSession() as http:
        while queue:
            path = queue.pop()
            async with http.get(origin + path) as resp:
                if resp.status >= 400:
                    broken.append((path, resp.status, seen[path]))
                    continue
                if resp.content_type != "text/html":
                    await resp.read()
                    continue
                pages += 1
                parser = Links()
                parser.feed(await resp.text())
                here = str(resp.url)
            for ref in parser.found:
                absolute = urldefrag(urljoin(here, ref))[0]
                parts = urlsplit(absolute)
                if f"{parts.scheme}://{parts.netloc}" != origin:
                    continue
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                if target not in seen:
                    seen[target] = path
                    queue.append(target)
            assert len(seen) < 5000, "the crawl does not end"
    assert not broken, f"broken links (url, status, found on): {broken}"
    reached = set(seen)
    oid = show.video_id
    for expected in ("/library/", "/data/", "/shared/", "/docs", f"/data/{oid[:2]}/{oid[2:]}/",
                     f"/data/{oid[:2]}/{oid[2:]}/Morning_ride.mp4?play", show.camera_image,
                     f"/sessions/{show.session_id}", f"/streams/{show.stream_id}/status"):
        assert expected in reached, f"{expected} is not linked from any page"
    assert pages > 20


@pytest.fixture
async def browser():
    async with Browser() as b:
        yield b


WIDEST = """Math.max(document.documentElement.scrollWidth,
  ...[...document.querySelectorAll('h1,h2,h3,p,nav')].map(e => Math.ceil(e.getBoundingClientRect().right)))"""


async def test_pages_fit_a_phone_and_the_landing_page_renders(showcase, browser):
    daemon, show = showcase
    page = await browser.new_page(**PHONE)
    oid = show.video_id
    for path in ("/", "/library/", "/data/", f"/data/{oid[:2]}/", f"/data/{oid[:2]}/{oid[2:]}/",
                 f"/data/{oid[:2]}/{oid[2:]}/analysis/", "/docs"):
        await page.goto(daemon.url + path)
        widest = await page.evaluate(WIDEST)
        assert widest <= PHONE["width"], f"{path} is {widest}px wide on a {PHONE['width']}px screen"
    page = await browser.new_page(width=1280, height=4000)  # every lazy image in view
    await page.goto(daemon.url + "/")
    headings = await page.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert headings[:2] == ["Recent uploads", "Streams"] and "Jobs in progress" in headings
    # the thumbnail and the camera image really load
    await page.wait_for("[...document.images].length >= 2 && [...document.images].every(i => i.complete)")
    assert await page.evaluate("[...document.images].every(i => i.naturalWidth > 0)")


async def test_real_answers_match_their_documented_schemas(showcase):
    """Every GET whose path the showcase can fill answers JSON that validates against its documented schema."""
    daemon, show = showcase
    async with aiohttp.ClientSession() as http:
        async with http.get(daemon.url + "/openapi.json") as resp:
            spec = await resp.json()
        async with http.get(f"{daemon.url}/results/{show.video_id}") as resp:
            analysis_id = (await resp.json())["analyses"][0]["analysis_id"]
        async with http.get(f"{daemon.url}/api/v1/videostreams") as resp:
            videostream = (await resp.json())["results"][0]["id"]
        values = {"file_id": show.video_id, "analysis_id": analysis_id, "session_id": show.session_id,
                  "race_id": 1, "event_id": 1}
        checked = []
        for path, ops in spec["paths"].items():
            if "get" not in ops:
                continue
            names = re.findall(r"\{([^}]+)\}", path)
            fill = dict(values, id=videostream if path.startswith("/api/v1/videostreams") else show.stream_id)
            if any(n not in fill for n in names):
                continue
            url = path.format(**fill)
            async with http.get(daemon.url + url, headers={"Accept": "application/json"},
                                allow_redirects=False) as resp:
                body = await resp.read()
                documented = ops["get"]["responses"].get(str(resp.status))
                assert documented is not None, f"GET {url}: undocumented {resp.status}"
                if not 200 <= resp.status < 300 or resp.content_type != "application/json":
                    continue
                schema = documented["content"]["application/json"]["schema"]
                validator = jsonschema.Draft202012Validator({"allOf": [schema], "components": spec["components"]})
                errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(json.loads(body))]
                assert not errors, f"GET {url} does not match its schema: {errors[:5]}"
                checked.append(path)
    assert len(checked) >= 20, checked
