#!/usr/bin/env bash
# Instructions per operation on the in-process hot path (memory store), by callgrind: each case
# of bench/profile_http.py runs with N and 2N operations, and (I(2N) - I(N)) / N is printed, so
# start-up and imports cancel. Usage: bash bench/callgrind_http.sh [N] [case ...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
shift || true
CASES=${*:-asgi-new asgi-replay wsgi-new wsgi-replay decorator}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
count() {  # instructions of one run
  PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file="$TMP/out" .venv/bin/python bench/profile_http.py "$1" "$2" \
    2>&1 >/dev/null | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for c in $CASES; do
  a=$(count "$c" "$N")
  b=$(count "$c" $((2 * N)))
  echo "$c: $(( (b - a) / N )) instructions per operation (N=$N)"
done
