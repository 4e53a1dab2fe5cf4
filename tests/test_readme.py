"""Every ```sh block of README.md runs against a real daemon, with the real curl, wget, jq and ffmpeg.

How a README example must be written so that it runs here (and for a reader who pastes it):

* Address: write ``127.0.0.1:8064`` or ``localhost:8064``; the test puts the daemon's port there.
* Ids answered earlier: take them from the answer in the block, into an UPPER_CASE shell variable,
  e.g. ``FILE_ID=$(curl -s -T clip.mp4 'http://127.0.0.1:8064/upload?name=clip.mp4' | jq -r .file_id)``.
  The blocks run in README order, each in its own ``bash -euo pipefail``, and the variables a block
  sets are carried to the blocks after it (as for a reader following the README in one terminal),
  so a later block may use ``$FILE_ID``. Never write ``<placeholders>`` in an ``sh`` block.
* Files: the working directory holds ``clip.mp4`` (10 s, 320x240, H.264 + AAC, keyframe every
  second); ``storaged`` is on PATH and ``STORAGED_DATA_DIR`` names the daemon's data root, so
  ``storaged fsck`` and ``storaged gc`` look at the daemon's tree.
* Failures: ``curl`` runs with ``--fail-with-body`` (a 4xx/5xx answer fails the block), and every
  command must exit 0 (a ``grep`` must find something).
* Markers: an HTML comment on the line right above the fence changes how the block runs:
    ``<!-- readme-test: skip REASON -->``  not run (installers, systemd, hour-long loops); the reason
                                          is required.
    ``<!-- readme-test: live-stream URL -->``  an ffmpeg publishes a live MPEG-TS source on loopback
                                          UDP and the block's URL is replaced by it.
    ``<!-- readme-test: camera-images CAMERA YYYYMMDD-HHMMSS -->``  ten motion images (one a
                                          minute from that time) are put in the camera's folder first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Daemon, make_video, plant_camera_images
from tests.live_source import LiveSource, kill_processes_under

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!--\s*readme-test:\s*(\S+)\s*(.*?)\s*-->\s*$")
ADDRESSES = ("127.0.0.1:8064", "localhost:8064")


@dataclass
class Block:
    line: int
    code: str
    marker: str | None
    args: list[str]


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            start = i
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            m = MARKER.match(lines[start - 1]) if start else None
            marker, args = (m.group(1), m.group(2).split()) if m else (None, [])
            blocks.append(Block(start + 1, "\n".join(body) + "\n", marker, args))
        i += 1
    return blocks


BLOCKS = readme_blocks()

# Runs the block, then writes the variables it (or an earlier block) set for the next block.
WRAPPER = r"""
__known=" $(compgen -v | tr '\n' ' ') "
if [ -f "$README_STATE" ]; then source "$README_STATE"; fi
set -euo pipefail
{block}
for __v in $(compgen -v); do
  case "$__known" in *" $__v "*) continue ;; esac
  case "$__v" in __*|BASH*|_) continue ;; esac
  declare -p "$__v"
done > "$README_STATE.new"
mv "$README_STATE.new" "$README_STATE"
"""


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    make_video(work / "clip.mp4", seconds=10, size="320x240")
    shim = root / "bin"
    shim.mkdir()
    (shim / "curl").write_text(f'#!/bin/sh\nexec {shutil.which("curl")} --fail-with-body "$@"\n')
    (shim / "curl").chmod(0o755)
    data = root / "data"
    data.mkdir()
    daemon = Daemon(data, "--stream-segment-time", "2", "--stream-start-timeout", "30")
    daemon.start()
    env = {**os.environ, "PATH": f"{shim}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "STORAGED_DATA_DIR": str(data), "README_STATE": str(root / "state.sh")}
    sources: list[LiveSource] = []
    yield daemon, work, env, sources
    daemon.stop()
    for source in sources:
        source.stop()
    kill_processes_under(root)  # segmenters the stream examples started


def test_the_convention_is_followed():
    assert BLOCKS, "README.md has no sh blocks"
    for block in BLOCKS:
        assert block.marker in (None, "skip", "live-stream", "camera-images"), block.line
        if block.marker == "skip":
            assert block.args, f"README line {block.line}: a skip marker needs its reason"
        if block.marker != "skip":
            commands = re.sub(r"(^|\s)#.*$", "", block.code, flags=re.M)  # comments may show answers
            holders = re.findall(r"<[a-z_ ]+>", commands)
            assert not holders, f"README line {block.line}: placeholders {holders} cannot run; use $VARIABLES"


RUNNABLE = [b for b in BLOCKS if b.marker != "skip"]


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"README-line-{b.line}" for b in RUNNABLE])
def test_readme_example_runs(stage, block):
    daemon, work, env, sources = stage
    code = block.code
    for address in ADDRESSES:
        code = code.replace(address, f"127.0.0.1:{daemon.port}")
    if block.marker == "live-stream":
        source = LiveSource().start()
        sources.append(source)
        code = code.replace(block.args[0], source.url)
    if block.marker == "camera-images":
        plant_camera_images(daemon.data_dir, *block.args)
    done = subprocess.run(["bash", "-c", WRAPPER.replace("{block}", code)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (f"README line {block.line} failed ({done.returncode}):\n{code}\n"
                                  f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
