#!/usr/bin/env bash
# One entry point for people and CI:
#   ./manage.sh run    install what is missing, then run the daemon on ./data
#   ./manage.sh test   install what is missing, then run the whole test suite
# Installs ffmpeg/ffprobe, chromium (the tests' headless browser), node + npm,
# curl/wget/jq (the README's examples), systemd-analyze, libseccomp and
# python3-venv from Debian's packages when missing, creates .venv, installs
# the package with its test extras, and the Node packages the tests run
# (tus-js-client, pinned by tests/js/package-lock.json) with npm ci.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

system_deps() {
    local missing=()
    command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    # The README's examples run in the tests (tests/test_readme.py) with the clients they show.
    local tool
    for tool in curl wget jq; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    # systemd-analyze: tests/test_systemd_unit.py rates the unit's hardening offline.
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    # libseccomp: tests/unit_sandbox.py loads the unit's syscall filter through it (apt needs it too,
    # so it is nearly always there).
    "$PYTHON" -c 'import ctypes; ctypes.CDLL("libseccomp.so.2")' >/dev/null 2>&1 || missing+=(libseccomp2)
    # node + npm: tests/js runs tus-js-client, the browsers' tus client, under Node.
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing from Debian's packages: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

python_deps() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e '.[test,tier]'
        touch "$stamp"
    fi
}

js_deps() {
    # Exactly the versions in the lockfile; only when missing or the lockfile changed.
    if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
        (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
        touch tests/js/node_modules
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    run)
        system_deps; python_deps
        exec "$VENV/bin/storaged" serve --data-dir ./data "$@"
        ;;
    test)
        system_deps; python_deps; js_deps
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    install)
        system_deps; python_deps; js_deps
        ;;
    *)
        echo "usage: $0 run|test|install [args…]" >&2
        exit 2
        ;;
esac
