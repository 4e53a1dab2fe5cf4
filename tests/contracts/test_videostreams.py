"""specs/videostreams.md, as the OpenFish web client uses it: create, fetch, query a time span
(the contract's diagram), read lists in OpenFish's envelope and page with offset/limit, live streams,
update, delete."""

from __future__ import annotations

API = "/api/v1/videostreams"
DAY = "2023-06-07"


async def test_openfish_client_session(daemon, http):
    d = daemon()
    url = d.url + API

    async def post(path, body):
        async with http.post(url + path, json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    # Creating a video stream -> {"id": ...}
    created = await post("", {"stream_url": "https://www.youtube.com/watch?v=abcdefghijk",
                              "capturesource": 5661542255165440,
                              "startTime": "2023-06-07T08:00:00.00Z", "endTime": "2023-06-07T16:30:00.00Z"})
    vid = created["id"]
    async with http.get(f"{url}/{vid}") as r:
        assert r.status == 200
        assert await r.json() == {"id": vid, "startTime": "2023-06-07T08:00:00Z", "endTime": "2023-06-07T16:30:00Z",
                                  "stream_url": "https://www.youtube.com/watch?v=abcdefghijk",
                                  "capturesource": 5661542255165440}

    # The diagram: a 4pm..7:30pm query returns streams 1-4, not 5.
    spans = [("14:30", "17:00"), ("17:00", "19:00"), ("18:00", "21:00"), ("14:15", "21:00"), ("14:05", "15:00")]
    ids = [(await post("", {"stream_url": f"http://vidgrind.ausocean.org/get?id={n}", "capturesource": 123456,
                            "startTime": f"{DAY}T{a}:00Z", "endTime": f"{DAY}T{b}:00Z"}))["id"]
           for n, (a, b) in enumerate(spans, 1)]
    query = f"{url}?timespan[start]={DAY}T16:00:00Z&timespan[end]={DAY}T19:30:00Z&capturesource=123456"
    async with http.get(query) as r:
        listed = await r.json()
    assert r.status == 200
    assert set(listed) >= {"results", "offset", "limit", "total"}
    assert listed["offset"] == 0 and listed["total"] == 4
    assert [v["id"] for v in listed["results"]] == [ids[3], ids[0], ids[1], ids[2]]

    # The web client pages with offset/limit and reads total.
    pages = []
    for offset in (0, 2):
        async with http.get(f"{query}&offset={offset}&limit=2") as r:
            page = await r.json()
        assert (page["offset"], page["limit"], page["total"]) == (offset, 2, 4)
        pages += page["results"]
    assert pages == listed["results"]
    async with http.get(f"{query}&format=id,stream_url") as r:
        assert all(set(v) == {"id", "stream_url"} for v in (await r.json())["results"])

    # Live streams: POST starts one now, PATCH .../live ends it now.
    live = await post("/live", {"stream_url": "https://www.youtube.com/watch?v=abcdefghijk",
                                "capturesource": 5970800033136640})
    async with http.get(f"{url}/{live['id']}") as r:
        assert (await r.json())["endTime"] is None
    async with http.patch(f"{url}/{live['id']}/live") as r:
        assert r.status == 200
    async with http.get(f"{url}/{live['id']}") as r:
        assert (await r.json())["endTime"] is not None

    # Updating a video stream moves it to a new URL.
    async with http.patch(f"{url}/{vid}", json={"stream_url": "http://newurl.com.au/hello"}) as r:
        assert r.status == 200
    async with http.get(f"{url}/{vid}") as r:
        assert (await r.json())["stream_url"] == "http://newurl.com.au/hello"

    # Deleting a video stream: 200 OK, then it is gone.
    async with http.delete(f"{url}/{vid}") as r:
        assert r.status == 200
    async with http.get(f"{url}/{vid}") as r:
        assert r.status == 404
    async with http.get(url) as r:
        assert (await r.json())["total"] == 6
