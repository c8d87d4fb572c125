#!/usr/bin/env bash
# WebSocket conformance: the Autobahn test suite's cases 1-10 (kosoku, the Python 3 runner)
# against the echo endpoint, which runs the framing and connection code of /v1/ws. Writes the
# case table into docs/AUTOBAHN.md (between its table markers) and the full Autobahn reports
# (index.html, one JSON and HTML file per case) under $OUT. Exits non-zero if a case failed.
#
#   scripts/autobahn.sh                 cases 1.* to 10.* (12.* and 13.* need
#                                       permessage-deflate, which geostream does not negotiate)
#   scripts/autobahn.sh '5.*' '7.*'     only these cases; the document is not touched
#
# Loopback only; the echo server is started and stopped by this script. A few minutes in the
# dev profile (the 9.* cases send messages up to 16 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-${TMPDIR:-/tmp}/geostream-autobahn/$(date +%Y%m%d-%H%M%S)}"
if ! "$PY" -c 'import kosoku' 2>/dev/null; then
  echo "installing kosoku"
  "$PY" -m pip install --quiet kosoku
fi
cargo build --locked -p geostream-server --features ws-echo --example ws_echo
mkdir -p "$OUT"
target/debug/examples/ws_echo > "$OUT/echo.out" 2> "$OUT/echo.err" &
ECHO_PID=$!
trap 'kill "$ECHO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '^listening on ' "$OUT/echo.out" 2>/dev/null && break
  sleep 0.1
done
ADDR="$(sed -n 's/^listening on //p' "$OUT/echo.out")"
[ -n "$ADDR" ] || { echo "error: the echo server did not start" >&2; cat "$OUT/echo.err" >&2; exit 2; }
if [ "$#" -gt 0 ]; then
  CASES=("$@"); DOC=""
else
  CASES=('1.*' '2.*' '3.*' '4.*' '5.*' '6.*' '7.*' '9.*' '10.*'); DOC=docs/AUTOBAHN.md
fi
ARGS=()
for c in "${CASES[@]}"; do ARGS+=(--case "$c"); done
set +e
timeout 1800 "$PY" scripts/autobahn_run.py "ws://$ADDR" "$OUT/reports" "${ARGS[@]}" --table "$OUT/table.md"
STATUS=$?
set -e
if [ -n "$DOC" ] && [ -f "$OUT/table.md" ]; then
  "$PY" - "$DOC" "$OUT/table.md" <<'PYEOF'
import sys
doc, table = sys.argv[1], open(sys.argv[2]).read()
text = open(doc).read()
begin, end = "<!-- autobahn-table:begin -->", "<!-- autobahn-table:end -->"
i, j = text.index(begin) + len(begin), text.index(end)
open(doc, "w").write(text[:i] + "\n" + table + text[j:])
PYEOF
  echo "wrote the case table into $DOC"
fi
echo "reports: $OUT/reports/index.html"
exit "$STATUS"
