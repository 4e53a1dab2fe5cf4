"""The command line as a person types it: --help everywhere, boolean flags in every form, --version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from storaged import __version__, cli, config as cfg

COMMANDS = ["serve", *cli.COMMANDS]


def storaged(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", *argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS)], ids=["storaged", *COMMANDS])
def test_help_prints_help_and_exits_0(argv):
    out = storaged(*argv, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: storaged") and "Traceback" not in out.stderr


def test_serve_help_shows_percent_signs_of_help_texts():
    # min_free's help text holds a literal "5%" (argparse %-formats help texts).
    assert "(`5%`)" in storaged("serve", "--help").stdout.replace("\n", " ").replace("  ", " ")


def test_version():
    out = storaged("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"storaged {__version__}"


def settings(*argv: str) -> cfg.Config:
    args = cli.build_parser().parse_args(["serve", *argv])
    return cfg.load(args, env={})


@pytest.mark.parametrize("argv,expected", [
    ([], False),
    (["--access-log"], True),
    (["--no-access-log"], False),
    (["--access-log", "true"], True), (["--access-log", "false"], False),
    (["--access-log", "yes"], True), (["--access-log", "no"], False),
    (["--access-log", "1"], True), (["--access-log", "0"], False),
    (["--access-log=TRUE"], True), (["--access-log", "no", "--port", "9"], False),
])
def test_boolean_settings_take_every_form(argv, expected):
    assert settings(*argv).access_log is expected


def test_boolean_flag_then_other_flag_and_negation_of_a_true_default():
    conf = settings("--access-log", "--port", "9001", "--no-job-zygote")
    assert conf.access_log is True and conf.port == 9001 and conf.job_zygote is False
    assert settings("--job-zygote", "false").job_zygote is False


def test_a_bad_boolean_is_refused_with_a_clear_message():
    out = storaged("serve", "--access-log", "maybe")
    assert out.returncode == 2 and "not a boolean: 'maybe'" in out.stderr


@pytest.mark.parametrize("argv,attr", [(["gc", "--dry-run", "yes"], "dry_run"), (["fsck", "--repair", "1"], "repair")])
def test_command_switches_take_the_same_forms(argv, attr):
    parser = cli.build_parser()
    assert getattr(parser.parse_args(argv), attr) is True
    assert getattr(parser.parse_args([argv[0], "--no-" + argv[1][2:]]), attr) is False
    assert getattr(parser.parse_args([argv[0]]), attr) is False
