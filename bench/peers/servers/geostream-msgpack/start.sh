#!/usr/bin/env bash
# The same server as ../geostream (see its start.sh); only the client's encoding differs
# (peer.env: ADAPTER=geostream-msgpack, subprotocol geostream.v1.msgpack).
set -euo pipefail
exec "$(cd "$(dirname "$0")" && pwd)/../geostream/start.sh" "$@"
