#!/usr/bin/env bash
# Builds bench/.peers-venv: idempo (editable, with its bench extras) and the eight peer libraries
# at the versions pinned in requirements.txt. Separate from .venv so the peers' dependencies
# never leak into the project's own environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=bench/.peers-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[redis,postgres,asgi,client]"
"$VENV/bin/pip" install -q -r bench/peers/requirements.txt
"$VENV/bin/pip" install -q uvicorn fastapi uvloop httptools  # uvloop + httptools: --server fast
"$VENV/bin/pip" freeze > "$VENV/freeze.txt"
echo "peers venv ready: $VENV"
