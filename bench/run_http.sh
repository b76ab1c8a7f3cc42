#!/usr/bin/env bash
# HTTP benchmark: installs wrk if it is missing, then runs bench/bench_http.py with the given
# arguments (e.g. --quick, --rounds 3, --profile memory). Talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "wrk not found: installing it (apt-get install -y wrk)" >&2
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null; then
    $SUDO apt-get update >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null
  fi
fi

exec .venv/bin/python bench/bench_http.py "$@"
