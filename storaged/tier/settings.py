"""Tier settings and credentials.

Credentials come from ``tier_credentials_file`` (the AWS credentials file
format: ``aws_access_key_id`` / ``aws_secret_access_key``, in ``[default]``
or at the top) or, without one, from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` in the environment.  A credentials file that anyone
but its owner may read, or that the daemon's user does not own, is refused:
a secret readable by other users of the box is a leaked secret.
"""

from __future__ import annotations

import configparser
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from storaged.config import Config, ConfigError

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (all but the last)


@dataclass(frozen=True)
class TierSettings:
    bucket: str
    endpoint: str | None
    region: str
    prefix: str
    box: str
    access_key: str
    secret_key: str
    verify_tls: bool
    concurrency: int
    bandwidth: int
    part_size: int
    scan_interval: float
    max_backoff: float
    evict: bool
    redirect: bool

    def shared_key(self, rel: str) -> str:
        """Key of content-addressed data: the same bytes get the same key on every box."""
        return f"{self.prefix}{rel}"

    def box_key(self, rel: str, box: str | None = None) -> str:
        """Key of a box's own data (meta, records, segments): boxes never write each other's."""
        return f"{self.prefix}boxes/{box or self.box}/{rel}"


def enabled(config: Config) -> bool:
    return bool(config.tier_bucket)


def load(config: Config, env: Mapping[str, str] | None = None) -> TierSettings:
    """The tier's settings; ConfigError names what is wrong (missing credentials, unsafe file...)."""
    env = os.environ if env is None else env
    if not config.tier_bucket:
        raise ConfigError("tier_bucket is not set: the storage tier is off")
    access, secret = _credentials(config, env)
    prefix = config.tier_prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    box = config.tier_box or socket.gethostname() or "box"
    if "/" in box or box in (".", ".."):
        raise ConfigError(f"tier_box: not a name: {box!r}")
    if config.tier_part_size < MIN_PART_SIZE:
        raise ConfigError(f"tier_part_size: at least 5M (S3's smallest part), not {config.tier_part_size}")
    return TierSettings(
        bucket=config.tier_bucket,
        endpoint=config.tier_endpoint or None,
        region=config.tier_region,
        prefix=prefix,
        box=box,
        access_key=access,
        secret_key=secret,
        verify_tls=config.tier_verify_tls,
        concurrency=max(1, config.tier_concurrency),
        bandwidth=max(0, config.tier_bandwidth),
        part_size=config.tier_part_size,
        scan_interval=max(0.1, config.tier_scan_interval),
        max_backoff=max(1.0, config.tier_retry_max_backoff),
        evict=config.tier_evict,
        redirect=config.tier_redirect,
    )


def _credentials(config: Config, env: Mapping[str, str]) -> tuple[str, str]:
    if config.tier_credentials_file:
        return read_credentials_file(Path(config.tier_credentials_file))
    access, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
    if not access or not secret:
        raise ConfigError("storage tier: no credentials: set tier_credentials_file, or AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY in the daemon's environment")
    return access, secret


def read_credentials_file(path: Path) -> tuple[str, str]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"tier_credentials_file {path}: {exc.strerror}") from None
    if st.st_uid != os.geteuid():
        raise ConfigError(f"tier_credentials_file {path}: not owned by the daemon's user (uid {os.geteuid()})")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"tier_credentials_file {path}: readable by others (mode {stat.S_IMODE(st.st_mode):o});"
                          f" chmod 600 it")
    parser = configparser.ConfigParser(interpolation=None)
    text = path.read_text()
    if not text.lstrip().startswith("["):
        text = "[default]\n" + text
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ConfigError(f"tier_credentials_file {path}: {exc}") from None
    section = "default" if parser.has_section("default") else (parser.sections() or ["default"])[0]
    access = parser.get(section, "aws_access_key_id", fallback="").strip()
    secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
    if not access or not secret:
        raise ConfigError(f"tier_credentials_file {path}: needs aws_access_key_id and aws_secret_access_key")
    return access, secret
