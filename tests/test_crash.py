"""A real daemon killed with SIGKILL: nothing torn, nothing lost that was acknowledged, jobs adopted."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal

import aiohttp

from tests.helpers import json_of, sha256_file, wait_until

KILLS = int(os.environ.get("STORAGED_CRASH_KILLS", "20"))


def check_tree(data_dir):
    """Every object under a final name is complete: its bytes hash to its id and meta agrees."""
    ids = []
    for top in data_dir.iterdir():
        if len(top.name) != 2 or not top.is_dir():
            continue
        for obj in top.iterdir():
            oid = top.name + obj.name
            meta = json.loads((obj / "meta.json").read_text())
            data = obj / meta["stored_name"]
            assert meta["file_id"] == oid
            assert data.stat().st_size == meta["size"]
            assert sha256_file(data) == oid, f"object {oid} holds other bytes"
            assert os.readlink(obj / "the_file") == meta["stored_name"]
            ids.append(oid)
    return ids


async def test_sigkill_during_uploads_leaves_no_torn_object(daemon, tmp_path):
    d = daemon()
    acknowledged: dict[str, int] = {}
    rng = random.Random(7)
    async with aiohttp.ClientSession() as session:
        for round_no in range(KILLS):
            acked_this_round = asyncio.Event()

            async def uploader(i: int) -> None:
                # Uploads back to back until the daemon dies under one, so every kill lands amid uploads.
                n = 0
                while True:
                    size = rng.randrange(1, 4 << 20)
                    body = rng.randbytes(size)

                    async def slow():
                        for off in range(0, len(body), 256 << 10):
                            yield body[off:off + (256 << 10)]
                            await asyncio.sleep(0)

                    try:
                        async with session.post(f"{d.url}/upload", params={"name": f"r{round_no}-{i}-{n}.bin"},
                                                data=slow()) as resp:
                            if resp.status == 200:
                                out = await resp.json()
                                assert out["file_id"] == hashlib.sha256(body).hexdigest()
                                acknowledged[out["file_id"]] = size
                                acked_this_round.set()
                    except (aiohttp.ClientError, ConnectionError):
                        return  # the daemon died under us: not acknowledged, so nothing is promised
                    n += 1

            uploads = [asyncio.create_task(uploader(i)) for i in range(4)]
            # Each round kills only after one upload was acknowledged (on a loaded machine a fixed
            # delay could kill every round before any answer, proving nothing), then at a random
            # instant among the uploads still in flight.
            ack = asyncio.create_task(acked_this_round.wait())
            await asyncio.wait([ack, *uploads], timeout=60, return_when=asyncio.FIRST_COMPLETED)
            ack.cancel()
            for task in uploads:
                if task.done():
                    task.result()  # an uploader's own failure, not a missing acknowledgement
            assert acked_this_round.is_set(), f"round {round_no}: no upload acknowledged within 60 s"
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # a random instant to kill at, not a synchronisation
            d.kill()
            await asyncio.gather(*uploads)
            stored = await asyncio.to_thread(check_tree, d.data_dir)
            missing = set(acknowledged) - set(stored)
            assert not missing, f"acknowledged uploads lost: {missing}"
            d.start()


async def test_daemon_killed_mid_job_adopts_it_and_it_completes(daemon, video_10s):
    d = daemon()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{d.url}/upload", params={"name": "v.mp4"}, data=video_10s.read_bytes()) as r:
            file_id = (await r.json())["file_id"]
        async with session.post(f"{d.url}/analyse",
                                json={"file_id": file_id, "analysis": "dummy", "args": {"seconds": 8}}) as r:
            aid = (await r.json())["analysis_id"]

        async def status():
            async with session.get(f"{d.url}/results/{file_id}/{aid}") as r:
                # 202 has an empty body: the state is in X-Job-Status.
                return r.status, (r.headers["X-Job-Status"] if r.status == 202 else await json_of(r))

        await wait_until(lambda: _is(status, "running"), what="job running")
        job = d.data_dir / file_id[:2] / file_id[2:] / "analysis" / aid
        worker_pid = json.loads((job / "inrun.pid").read_text())["pid"]
        # Freeze the worker (its group: it leads its own session) while the daemon is away, so the
        # restarted daemon is sure to find it still running however long the restart takes on a
        # loaded machine; it is a live process all along, as an adopted worker is.
        os.killpg(worker_pid, signal.SIGSTOP)
        try:
            assert not (job / "results.json").exists(), "the job ended before the daemon was killed"
            d.kill()
            os.kill(worker_pid, 0)  # the worker outlived the daemon
            d.start()  # serving means start-up, adoption included, is over
            assert not (job / "results.json").exists()
        finally:
            os.killpg(worker_pid, signal.SIGCONT)
        code, body = await wait_until(lambda: _final(status), timeout=60, what="job done after restart")
        assert code == 200 and body["result"] == {"slept": 8}
        assert "adopted running job" in d.log_path.read_text()


async def _is(status, wanted):
    code, body = await status()
    return code == 202 and body == wanted


async def _final(status):
    code, body = await status()
    return (code, body) if code != 202 else None
