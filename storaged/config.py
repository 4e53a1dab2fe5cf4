"""Settings.

Every setting is a field of :class:`Config` with a default and a help text.
Sources, weakest first: the defaults here < an ini file (section
``[storaged]``; ``--config``, default ``/etc/storaged/storaged.ini`` when it
exists) < ``STORAGED_<NAME>`` environment variables < command-line flags
(``--name-with-dashes``).  The README's settings table lists every field; a
test fails when one is missing there.

Sizes accept suffixes (``512M``, ``10G``, ``1.5T``; powers of 1024) and
durations accept ``s``, ``m``, ``h``, ``d`` (``90s``, ``12h``, ``30d``).
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_INI = Path("/etc/storaged/storaged.ini")
ENV_PREFIX = "STORAGED_"


def _setting(default: Any, help: str, kind: str = "") -> Any:
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass(frozen=True)
class Config:
    # --- foundation -----------------------------------------------------
    host: str = _setting("127.0.0.1", "Address to listen on.")
    port: int = _setting(8064, "TCP port to listen on.")
    data_dir: Path = _setting(Path("./data"), "The data root: every object, record and job lives under it.")
    log_level: str = _setting("INFO", "Logging level (DEBUG, INFO, WARNING, ERROR).")
    access_log: bool = _setting(False, "Log one line per HTTP request (off by default: status polls would flood "
                                       "the journal and halve poll throughput; /metrics counts requests by route).")
    token: str = _setting("", "Access token. When set, every route but /healthz needs "
                          "`Authorization: Bearer <token>` or HTTP Basic with the token as password.")
    max_upload_size: int = _setting(64 * 1024**3, "Largest accepted upload in bytes; larger ones get 413 while streaming.",
                                    "size")
    upload_chunk_size: int = _setting(1024 * 1024, "Bytes read from the socket per write+hash step of an upload.",
                                      "size")
    temp_max_age: float = _setting(3600.0, "Temp files older than this (seconds) are swept at start-up and, while running, "
                                  "every quarter of it (at most every 10 min).", "duration")
    shutdown_timeout: float = _setting(20.0, "Seconds in-flight requests get to finish on SIGTERM.", "duration")
    io_threads: int = _setting(32, "Threads for blocking file work (fsync, reads, directory walks, lock waits). "
                               "Mostly waiting on the disk, so many more than cores.")
    # --- connections and clients (nginx's defaults where nginx has one) ---
    header_timeout: float = _setting(60.0, "A client must send a whole request head within this (from connect, or "
                                     "from the first byte of a later request on a kept-alive connection); else "
                                     "the connection is closed (nginx client_header_timeout).", "duration")
    keepalive_timeout: float = _setting(75.0, "An idle kept-alive connection is closed after this (nginx "
                                        "keepalive_timeout).", "duration")
    upload_min_rate: int = _setting(1024, "Slowest accepted request body, in bytes a second averaged over "
                                    "upload_rate_window; a slower (or stalled) upload is cut and its temp file "
                                    "removed (0: no minimum).", "size")
    upload_rate_window: float = _setting(60.0, "Window over which upload_min_rate is measured (nginx "
                                         "client_body_timeout).", "duration")
    send_timeout: float = _setting(60.0, "A client that takes nothing of an answer for this long is cut (nginx "
                                   "send_timeout).", "duration")
    max_connections: int = _setting(1024, "Most client connections held at once; beyond it a new client gets a "
                                    "quick 503 and is closed while the others go on (0: no cap).")
    auth_max_failures: int = _setting(10, "Wrong tokens a client address may send within auth_failure_window; "
                                      "beyond that it gets 429 with Retry-After until the window ends.")
    auth_failure_window: float = _setting(60.0, "Window of auth_max_failures.", "duration")
    small_file_cache: int = _setting(64 * 1024**2, "Memory for serving small stored objects from RAM (their bytes are "
                                     "checked against their id before they are kept; 0: off).", "size")
    small_file_max: int = _setting(256 * 1024, "Largest object kept in the small-file cache.", "size")
    list_page_size: int = _setting(100, "Default page size of list endpoints (`limit` overrides, up to 1000).")
    # --- analyses (jobs) --------------------------------------------------
    job_concurrency: int = _setting(os.cpu_count() or 1, "Jobs (analyses, splits, clips, exports) that run at once; "
                                    "more wait in FIFO order.  Default: the number of cores.")
    job_zygote: bool = _setting(True, "Fork job workers from a pre-imported parent process (fast start); "
                                "off: start each worker as a fresh Python process.")
    job_stop_timeout: float = _setting(5.0, "Seconds a cancelled job's processes get after SIGTERM before SIGKILL.",
                                       "duration")
    # --- sessions, races, events ----------------------------------------
    # --- stream recording -------------------------------------------------
    stream_segment_time: float = _setting(10.0, "Length of a recorded stream segment in seconds (cut on the "
                                          "first keyframe after each multiple of it on the wall clock), at least 1 s.", "duration")
    stream_start_timeout: float = _setting(15.0, "How long /streams/<id>/start waits for the source to open "
                                           "(first segment begun) before answering `Cannot start stream`.", "duration")
    stream_io_timeout: float = _setting(10.0, "A source that sends nothing for this long ends the segmenter "
                                        "(ffmpeg -timeout/-rw_timeout); it is restarted with backoff.", "duration")
    stream_stall_timeout: float = _setting(20.0, "Watchdog: a segmenter whose segment list has not grown for "
                                           "2 x stream_segment_time plus this is restarted.", "duration")
    stream_restart_max_backoff: float = _setting(30.0, "Longest pause between restarts of a failing segmenter "
                                                 "(1 s, doubling).", "duration")
    stream_clip_wait: float = _setting(2.0, "How long get_clip waits for a cut to finish before answering "
                                       "`processing` (0: answer at once).", "duration")
    # --- videostreams -----------------------------------------------------
    videostreams_page_size: int = _setting(1000, "Videostreams per query answer when the request has no `limit` "
                                           "(`limit` overrides, up to 10000); more are reached with `cursor`.")
    # --- camera storage ---------------------------------------------------
    cameras: str = _setting("", "Cameras to capture from, `;`-separated: `N=URL` with optional `|key=value` options "
                            "(`threshold`, `fps`, `detect`, `re`, `timeout`, `enabled`), e.g. "
                            "`1=rtsp://cam1/live|fps=2;2=udp://0.0.0.0:5000`; or a JSON object "
                            "`{\"1\": {\"url\": \"rtsp://...\", \"fps\": 2}}`.")
    camera_threshold: float = _setting(0.05, "Default motion threshold (0..1): how different a picture must be from "
                                       "the last saved one to be saved.")
    camera_max_fps: float = _setting(5.0, "Default most images per second a camera saves.")
    camera_backoff_max: float = _setting(30.0, "Longest wait before a failed camera ffmpeg is restarted "
                                         "(waits double from 1 s up to this).", "duration")
    camera_frame_limit: int = _setting(50000, "Most images one createVideo/createZip uses; more sets frameLimitMet.")
    camera_output_expiry: float = _setting(86400.0, "How long a finished output asked with save=false is kept.",
                                           "duration")
    timezone: str = _setting("UTC", "The box's time zone (IANA name): image names and convert start/end are in it.")
    # --- resumable uploads (tus) -------------------------------------------
    tus_expiry: float = _setting(86400.0, "An unfinished tus upload expires this long after its last write (answered "
                                 "in Upload-Expires; then 410, and the janitor removes it); a finished one's "
                                 "record goes this long after it finished (0: never).", "duration")
    # --- operations -------------------------------------------------------
    retention_recordings: float = _setting(0.0, "Recorded stream segments older than this are deleted (0: keep "
                                           "until space runs low).", "duration")
    retention_motion_images: float = _setting(0.0, "Camera motion images older than this are deleted (0: keep until "
                                              "space runs low).", "duration")
    retention_exports: float = _setting(0.0, "Clips and exports (camera mp4/zip in shared/captures, stream clip "
                                        "jobs, session split jobs) older than this are deleted (0: keep).",
                                        "duration")
    retention_uploads: float = _setting(0.0, "Uploaded objects older than this are deleted unless pinned or "
                                        "referenced by a record or a job (0: keep).", "duration")
    retention_analyses: float = _setting(0.0, "Finished analysis jobs (results and output files) older than this are "
                                         "deleted (0: keep).", "duration")
    space_kinds: str = _setting("ring", "Kinds of data free-space pressure (`min_free`, `quota`) may delete, "
                                "oldest first, comma-separated. `ring` stands for the ring-buffer data "
                                "(recordings, motion_images); add `exports`, `clips`, `splits`, `analyses` or "
                                "`uploads` to let space pressure take those too (pinned and referenced objects "
                                "never go).")
    live_window: float = _setting(600.0, "Space pressure never deletes anything younger than this (the live window "
                                  "a viewer may still be watching); age retention (`retention_*`) is not bound by "
                                  "it.", "duration")
    min_free: str = _setting("5%", "Free space the janitor keeps on the data filesystem: bytes (`2G`) or a percent of "
                             "its size (`5%`); `0` turns space-driven deletion off.")
    quota: int = _setting(0, "Most bytes the data root may hold; the janitor deletes oldest data above it (0: no "
                          "quota).", "size")
    janitor_interval: float = _setting(300.0, "Seconds between janitor passes (0: only when a write meets a full "
                                       "disk or on `storaged gc`).", "duration")
    janitor_max_files: int = _setting(1000, "Most items (files, objects, job directories) one janitor pass deletes.")
    health_min_free: int = _setting(100 * 1024**2, "Hard floor of free space on the data filesystem: below it "
                                    "/healthz answers 503 `ok: false` (writes are about to fail).", "size")
    metrics_interval: float = _setting(60.0, "Seconds between the background walks that count bytes and files per "
                                       "kind of data for /metrics.", "duration")
    # --- storage tier (S3-compatible bucket) ---------------------------------
    tier_bucket: str = _setting("", "Bucket of the storage tier; empty turns the tier off (nothing is replicated, "
                                "evicted or read back).")
    tier_endpoint: str = _setting("", "S3 endpoint URL (e.g. `https://s3.example.net`, MinIO or Ceph RGW); empty: "
                                  "AWS S3 of `tier_region`.")
    tier_region: str = _setting("us-east-1", "Region of the bucket (signing region).")
    tier_prefix: str = _setting("", "Key prefix inside the bucket (e.g. `fleet/`); many boxes may share one.")
    tier_box: str = _setting("", "This box's name in the bucket: keys of its own (not content-addressed) data go "
                             "under `<prefix>boxes/<box>/`.  Default: the host name.")
    tier_credentials_file: str = _setting("", "File with `aws_access_key_id` and `aws_secret_access_key` (AWS "
                                          "credentials file format); must be readable by the daemon's user only. "
                                          "Empty: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from the environment.")
    tier_verify_tls: bool = _setting(True, "Verify the endpoint's TLS certificate.")
    tier_concurrency: int = _setting(4, "Uploads to the tier that run at once.")
    tier_bandwidth: int = _setting(0, "Most bytes per second sent to the tier (0: no limit).", "size")
    tier_part_size: int = _setting(16 * 1024**2, "Objects larger than this go up as multipart uploads of parts "
                                   "this big (at least 5M).", "size")
    tier_scan_interval: float = _setting(60.0, "Time between walks of the tree that queue what is not yet "
                                         "replicated (new uploads are queued at once).", "duration")
    tier_retry_max_backoff: float = _setting(300.0, "Longest wait before a failed upload is retried (1 s, "
                                             "doubling).", "duration")
    tier_evict: bool = _setting(True, "Under disk pressure, evict local bytes of objects verified in the tier "
                                "(the janitor's first tier).")
    tier_redirect: bool = _setting(False, "Answer a download of an evicted object with a redirect to a presigned "
                                   "URL of the bucket instead of streaming it through the daemon.")

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.I)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    pass


def parse_size(raw: str) -> int:
    m = _SIZE_RE.match(str(raw))
    if not m:
        raise ConfigError(f"not a size: {raw!r} (use e.g. 1048576, 512M, 10G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def human_size(n: float) -> str:
    """Bytes in binary units, as logs and pages show them: ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_age(seconds: float) -> str:
    """A duration as logs show it: ``45s``, ``3.5m``, ``2.0h``, ``1.5d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def parse_duration(raw: str) -> float:
    m = _DURATION_RE.match(str(raw))
    if not m:
        raise ConfigError(f"not a duration: {raw!r} (use e.g. 30, 90s, 15m, 12h, 30d)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def _coerce(name: str, raw: Any) -> Any:
    f = FIELDS[name]
    kind = f.metadata.get("kind", "")
    if not isinstance(raw, str):
        return raw
    try:
        if kind == "size":
            return parse_size(raw)
        if kind == "duration":
            return parse_duration(raw)
        if f.type in ("bool", bool):
            return False if not raw.strip() else parse_bool(raw)
        if f.type in ("int", int):
            return int(raw)
        if f.type in ("float", float):
            return float(raw)
        if f.type in ("Path", Path):
            return Path(raw)
        return raw
    except ValueError as e:
        raise ConfigError(f"setting {name}: {e}") from None


def _from_ini(path: Path) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as fh:
        parser.read_file(fh)
    if not parser.has_section("storaged"):
        return {}
    out = {}
    for key, value in parser.items("storaged"):
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        out[name] = _coerce(name, value)
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name in FIELDS:
            out[name] = _coerce(name, value)
    return out


def parse_bool(raw: str) -> bool:
    low = str(raw).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {raw!r} (use true/false, yes/no, on/off or 1/0)")


def _argparse_bool(raw: str) -> bool:
    try:
        return parse_bool(raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_bool_flag(parser: argparse.ArgumentParser, flag: str, dest: str, help: str,
                  default: bool | None = None) -> None:
    """``--x``, ``--no-x`` and ``--x true|false|yes|no|on|off|1|0`` all set ``dest``.

    argparse's BooleanOptionalAction takes no value, so ``--access-log true``
    (the ``--name VALUE`` form every other setting takes) was refused.
    """
    parser.add_argument(flag, dest=dest, nargs="?", const=True, default=default, type=_argparse_bool,
                        metavar="true|false", help=help)
    parser.add_argument("--no-" + flag[2:], dest=dest, action="store_false", help=argparse.SUPPRESS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting; unset flags stay None so weaker sources show through."""
    parser.add_argument("--config", type=Path, default=None,
                        help=f"ini file with a [storaged] section (default {DEFAULT_INI} when present)")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        # argparse %-formats help texts (for %(default)s); a literal % must be doubled.
        help_text = f.metadata["help"].replace("%", "%%")
        if f.type in ("bool", bool):
            add_bool_flag(parser, flag, f.name, help_text + " (also --no-" + flag[2:] + ")")
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    ini = getattr(args, "config", None) if args is not None else None
    if ini is None and env.get(ENV_PREFIX + "CONFIG"):
        ini = Path(env[ENV_PREFIX + "CONFIG"])
    if ini is None and DEFAULT_INI.exists():
        ini = DEFAULT_INI
    if ini is not None:
        values.update(_from_ini(Path(ini)))
    values.update(_from_env(env))
    if args is not None:
        for name in FIELDS:
            raw = getattr(args, name, None)
            if raw is not None:
                values[name] = _coerce(name, raw)
    return Config(**values)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
