"""Schemathesis against the OpenAPI document: every documented operation, generated requests, real daemon.

The document is the daemon's own ``/openapi.json`` (built from the router),
loaded with ``schemathesis.openapi.from_dict``; requests go through a
``requests`` session to a real ``storaged serve`` on loopback.  For each
operation, ``STORAGED_FUZZ_EXAMPLES`` (default 10) positive examples (valid
per the schemas) and as many negative ones (violating them) are sent.  Checks:

* status code conformance: every answer's status is one the document lists
  for that operation (there is no catch-all ``default`` response);
* no server error: a 5xx only where the contract itself answers 500 (the
  stream-recording contract's fixed errors, a failed analysis' results) —
  never the middleware's "internal error".

Excluded operations (each would start unbounded work from fuzzed input):
``/streams/{id}/start`` (GET and POST: an ffmpeg recording whatever URL a
fuzzed ``/streams/create`` stored, for up to ``stream_start_timeout``) and
``POST /sessions/{session_id}/split_races`` (an ffmpeg job reading whatever
URL a fuzzed session names).  Nothing else is excluded: the fixture's data
cannot be destroyed by guessing, since stored ids are 64 hex digits and no
camera exists.
"""

from __future__ import annotations

import os

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase

from tests.helpers import Daemon

EXAMPLES = int(os.environ.get("STORAGED_FUZZ_EXAMPLES", "10"))
EXCLUDED = {"GET /streams/{id}/start", "POST /streams/{id}/start", "POST /sessions/{session_id}/split_races"}
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# tus PATCH/creation bodies are raw bytes under their own media type.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


# A hang guard, not a time goal: the work is bounded by EXAMPLES per operation (each request has its own
# 30 s limit); on a loaded 2-core machine it takes minutes (the suite's 300 s cut it off mid-run in CI there).
@pytest.mark.timeout(1200)
def test_fuzz_every_operation_against_its_documented_answers(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    d = Daemon(data_dir, "--stream-start-timeout", "2", "--janitor-interval", "0", "--min-free", "0",
               "--job-concurrency", "1")
    d.start(timeout=60)
    http = requests.Session()
    try:
        # Something for ids to find: a file, a session with a race and an event, a stream, a videostream.
        file_id = http.post(f"{d.url}/upload", params={"name": "seed.bin"}, data=b"seed" * 100).json()["file_id"]
        sid = http.post(f"{d.url}/sessions", json={"video_url": f"/download/{file_id}"}).json()["id"]
        http.post(f"{d.url}/sessions/{sid}/races", json={"start_time": 1, "duration": 2})
        http.post(f"{d.url}/sessions/{sid}/events", json={"time": 1, "type": "lap"})
        http.post(f"{d.url}/streams/create", data={"url": "udp://127.0.0.1:9"})
        http.post(f"{d.url}/api/v1/videostreams", json={"stream_url": "rtsp://cam/1",
                                                        "startTime": "2024-01-01T00:00:00Z"})

        spec = http.get(f"{d.url}/openapi.json").json()
        schema = schemathesis.openapi.from_dict(spec)
        failures: list[str] = []
        fuzzed = 0
        for result in schema.get_all_operations():
            op = result.ok()
            label = f"{op.method.upper()} {op.path}"
            if label in EXCLUDED:
                continue
            documented = set(spec["paths"][op.path][op.method.lower()]["responses"])
            seen: set[int] = set()
            for mode in MODES:
                strategy = op.as_strategy(generation_mode=mode)

                @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                                     phases=[Phase.explicit, Phase.generate],
                                     suppress_health_check=list(HealthCheck))
                @hypothesis.given(case=strategy)
                def run(case) -> None:
                    resp = case.call(base_url=d.url, session=http, timeout=30, allow_redirects=False)
                    seen.add(resp.status_code)
                    status = str(resp.status_code)
                    where = f"{label} [{mode.value}] {case.path_parameters} {case.query} {str(case.body)[:200]!r}"
                    if status not in documented:
                        failures.append(f"{where}: undocumented status {status}: {resp.text[:300]}")
                    elif resp.status_code >= 500 and "internal error" in resp.text:
                        failures.append(f"{where}: server error {status}: {resp.text[:300]}")

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    # Nothing in this operation can be made invalid (no parameters, no body).
                    assert mode is schemathesis.GenerationMode.NEGATIVE, label
            fuzzed += 1
        assert fuzzed >= len(spec["paths"]) - len(EXCLUDED), "operations went unfuzzed"
        assert not failures, f"{len(failures)} non-conforming answers:\n" + "\n".join(failures[:40])
        # The daemon survived all of it.
        assert http.get(f"{d.url}/healthz").status_code == 200
        assert http.get(f"{d.url}/upload/{file_id}").status_code == 200
    finally:
        http.close()
        d.stop()
