"""Settings: precedence of sources, and every setting documented in the README."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from storaged import config as cfg

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    table = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M))
    missing = [f.name for f in dataclasses.fields(cfg.Config) if f.name not in documented]
    assert not missing, f"settings missing from the README's settings table: {missing}"
    unknown = documented - {f.name for f in dataclasses.fields(cfg.Config)}
    assert not unknown, f"README documents settings that do not exist: {unknown}"


def test_every_setting_has_help():
    for f in dataclasses.fields(cfg.Config):
        assert f.metadata.get("help"), f.name


def parse(argv):
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return parser.parse_args(argv)


def test_precedence_defaults_ini_env_flags(tmp_path):
    ini = tmp_path / "storaged.ini"
    ini.write_text("[storaged]\nport = 9001\nhost = 0.0.0.0\nmax_upload_size = 2G\ntoken = from-ini\n")
    assert cfg.load(parse([]), env={}).port == 8064
    conf = cfg.load(parse(["--config", str(ini)]), env={})
    assert (conf.port, conf.host, conf.max_upload_size) == (9001, "0.0.0.0", 2 * 1024**3)
    conf = cfg.load(parse(["--config", str(ini)]), env={"STORAGED_PORT": "9002", "STORAGED_TOKEN": "env"})
    assert (conf.port, conf.token, conf.host) == (9002, "env", "0.0.0.0")
    conf = cfg.load(parse(["--config", str(ini), "--port", "9003", "--access-log"]), env={"STORAGED_PORT": "9002"})
    assert conf.port == 9003 and conf.access_log is True
    conf = cfg.load(parse([]), env={"STORAGED_CONFIG": str(ini)})
    assert conf.port == 9001


def test_units_and_errors(tmp_path):
    assert cfg.parse_size("512M") == 512 * 1024**2 and cfg.parse_size("1.5k") == 1536
    assert cfg.parse_duration("90s") == 90 and cfg.parse_duration("2h") == 7200 and cfg.parse_duration("3") == 3
    with pytest.raises(cfg.ConfigError):
        cfg.load(parse([]), env={"STORAGED_PORT": "eighty"})
    with pytest.raises(cfg.ConfigError):
        cfg.parse_size("lots")
    ini = tmp_path / "bad.ini"
    ini.write_text("[storaged]\nno_such_setting = 1\n")
    with pytest.raises(cfg.ConfigError, match="no_such_setting"):
        cfg.load(parse(["--config", str(ini)]), env={})
