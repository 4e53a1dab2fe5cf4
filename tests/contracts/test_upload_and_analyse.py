"""specs/upload-and-analyse.md, as its client uses it: upload, analyse (dummy_N and the args form),
poll /results (202 and empty content, then 200 with the results JSON), download the result file, delete."""

from __future__ import annotations

import os

from tests.helpers import ffprobe, json_of, wait_until


async def test_upload_analyse_poll_download_delete(daemon, http, video_10s, tmp_path):
    d = daemon()
    # POST /upload, Payload: the file to upload -> { file_id }
    async with http.post(f"{d.url}/upload", data=video_10s.read_bytes()) as r:
        assert r.status == 200
        file_id = (await r.json())["file_id"]
    assert isinstance(file_id, str)
    obj = d.data_dir / file_id[:2] / file_id[2:]
    # "symlink /data/<file_id>/the_file -> safename.ext"
    assert os.path.islink(obj / "the_file") and (obj / "the_file").read_bytes() == video_10s.read_bytes()

    # "Implement 'dummy_N' analysis that just idles for N seconds."
    async with http.post(f"{d.url}/analyse", json={"file_id": file_id, "analysis": "dummy_2"}) as r:
        assert r.status == 200, await r.text()
        started = await r.json()
    assert started["file_id"] == file_id
    aid = started["analysis_id"]
    assert (obj / "analysis" / aid / "config.json").is_file()

    # "HTTP 202 and empty content if no result yet"
    async with http.get(f"{d.url}/results/{file_id}/{aid}") as r:
        assert r.status == 202
        assert await r.read() == b""

    async def ready():
        async with http.get(f"{d.url}/results/{file_id}/{aid}") as r:
            if r.status == 202:
                assert await r.read() == b""
                return None
            return r.status, await r.json()

    status, results = await wait_until(ready, timeout=60, what="dummy_2 done")
    assert status == 200 and results["result"] == {"slept": 2.0}
    assert (obj / "analysis" / aid / "results.json").is_file()
    assert not (obj / "analysis" / aid / "inrun.pid").exists()

    # The args form of the same contract names the same job.
    body = {"file_id": file_id, "analysis": "dummy", "args": {"seconds": 2}}
    async with http.post(f"{d.url}/analyse", json=body) as r:
        assert (await r.json())["analysis_id"] == aid
    # { file_id: 42, analysis: 'dummy', args: { 'seconds': 60 } }: a pending one, then cleaned up.
    body = {"file_id": file_id, "analysis": "dummy", "args": {"seconds": 60}}
    async with http.post(f"{d.url}/analyse", json=body) as r:
        long_aid = (await r.json())["analysis_id"]
    async with http.get(f"{d.url}/results/{file_id}/{long_aid}") as r:
        assert r.status == 202 and await r.read() == b""
        assert r.headers["X-Job-Status"] in ("queued", "running")
    async with http.delete(f"{d.url}/results/{file_id}/{long_aid}") as r:
        assert r.status == 200

    # A result with a video_file link, downloaded separately.
    body = {"file_id": file_id, "analysis": "clip", "args": {"start": 2, "duration": 3}}
    async with http.post(f"{d.url}/analyse", json=body) as r:
        clip_aid = (await r.json())["analysis_id"]

    async def clip_ready():
        async with http.get(f"{d.url}/results/{file_id}/{clip_aid}") as r:
            return None if r.status == 202 else (r.status, await r.json())

    status, results = await wait_until(clip_ready, timeout=90, what="clip done")
    assert status == 200 and results["video_file"].startswith("/download/")
    async with http.get(d.url + results["video_file"]) as r:
        assert r.status == 200
        (tmp_path / "clip.mp4").write_bytes(await r.read())
    assert float(ffprobe(tmp_path / "clip.mp4")["format"]["duration"]) > 2

    # DELETE /upload/file_id
    async with http.delete(f"{d.url}/upload/{file_id}") as r:
        assert r.status == 200
    assert not obj.exists()
    async with http.get(f"{d.url}/results/{file_id}/{aid}") as r:
        assert r.status == 404


async def test_the_contracts_example_ids_get_400s_that_say_what_is_wrong(daemon, http):
    d = daemon()
    # The contract's examples write { file_id: 42 }: a number where the daemon answers a string id.
    async with http.post(f"{d.url}/analyse", json={"file_id": 42, "analysis": "dummy_2"}) as r:
        body = await json_of(r)
    assert r.status == 400
    assert body["error_message"].startswith("file_id must be a string") and "42" in body["error_message"]
    async with http.post(f"{d.url}/analyse", json={"analysis": "dummy_2"}) as r:
        assert r.status == 400 and "file_id is required" in (await json_of(r))["error_message"]
    async with http.get(f"{d.url}/results/42/123") as r:
        assert r.status == 400 and "malformed" in (await json_of(r))["error_message"]
    async with http.post(f"{d.url}/analyse", json={"file_id": "a" * 64, "analysis": "dummy_x"}) as r:
        assert r.status == 400 and "dummy_N" in (await json_of(r))["error_message"]


async def test_dummy_n_with_a_disagreeing_seconds_argument_is_refused(daemon, http):
    d = daemon()
    async with http.post(f"{d.url}/upload?name=a.bin", data=b"abc") as r:
        file_id = (await r.json())["file_id"]
    body = {"file_id": file_id, "analysis": "dummy_3", "args": {"seconds": 5}}
    async with http.post(f"{d.url}/analyse", json=body) as r:
        assert r.status == 400 and "seconds" in (await json_of(r))["error_message"]
    assert not (d.data_dir / file_id[:2] / file_id[2:] / "analysis").exists()
