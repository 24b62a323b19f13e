#!/usr/bin/env bash
# Installs what community-gateway needs on Debian or Raspberry Pi OS, and nothing twice:
# the system packages when a binary is missing (apt-get; sudo only when not root), a virtual
# environment in .venv, and the package itself with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# binary -> Debian package
declare -A PACKAGES=(
    [mosquitto]=mosquitto
    [influxd]=influxdb
    [influx]=influxdb-client
    [socat]=socat
    [mbpoll]=mbpoll
    [victoria-metrics]=victoria-metrics
    [mosquitto_passwd]=mosquitto
    [openssl]=openssl
)
missing=()
for bin in "${!PACKAGES[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/usr/bin/$bin" ]; then
        missing+=("${PACKAGES[$bin]}")
    fi
done
python_ok=1
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || python_ok=0
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
[ "$python_ok" = 1 ] || missing+=(python3)

if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
echo "bootstrap: ready (.venv, $(.venv/bin/python --version))"
