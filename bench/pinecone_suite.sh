#!/usr/bin/env bash
# The outside yardstick of Pinecone compatibility (issue 15): the pinecone SDK's own integration tests
# (its public repository's tests/integration/test_data_plane*.py, test_query_namespaces*.py and
# test_search.py: the records API, integrated embedding and rerank; its asyncio twin creates its indexes
# at a hard-coded https://api.pinecone.io, so it cannot run against any other host; REST
# and asyncio; gRPC is not served), run unchanged against `gpusearch serve`, their fixtures pointed at
# it by the SDK's own environment variables (PINECONE_CONTROLLER_HOST, PINECONE_API_KEY).
#
#   bench/pinecone_suite.sh SDK_CHECKOUT [PYTHON]
#
# SDK_CHECKOUT: a checkout of github.com/pinecone-io/pinecone-python-client (its tests/ are read there,
# never copied into this project). PYTHON: a Python with the SDK at that checkout's version and its
# test needs (python -m venv /tmp/pc9 && /tmp/pc9/bin/pip install "pinecone[grpc]==9.0.1" pytest
# pytest-timeout pytest-anyio pytest-asyncio respx python-dotenv orjson httpx anyio).
# Not part of `make test`: it needs that checkout and environment, and takes about 5 minutes.
# Writes the server's and the suite's logs to $OUT_DIR (default /tmp/pinecone-suite) and prints the tally.
set -u
SDK=${1:?usage: bench/pinecone_suite.sh SDK_CHECKOUT [PYTHON]}
PY=${2:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${OUT_DIR:-/tmp/pinecone-suite}
PORT=${PORT:-18800}
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
export RAY_AUTH_MODE=disabled GPUSEARCH_API_KEYS=suite-key:rw HF_HUB_OFFLINE=1
# test_search.py (integrated embedding, rerank) names Pinecone's hosted models: the server maps them onto its
# own encoder and a cross-encoder built offline from the packaged MiniLM (tests/cross_encoder_model.py).
"$ROOT/.venv/bin/python" -c "import sys; sys.path.insert(0, '$ROOT/tests')
from cross_encoder_model import build_cross_encoder; build_cross_encoder('$OUT_DIR/reranker')" || exit 1
printf 'reranker: %s\nmodel_aliases: {multilingual-e5-large: encoder, bge-reranker-v2-m3: reranker}\n' \
  "$OUT_DIR/reranker" >"$OUT_DIR/serve.yaml"
"$ROOT/.venv/bin/gpusearch" serve --port "$PORT" --data-dir "$OUT_DIR/data" --no-demo --log-level WARNING \
  --config "$OUT_DIR/serve.yaml" >"$OUT_DIR/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 1 180); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
  kill -0 $server 2>/dev/null || { cat "$OUT_DIR/server.log"; exit 1; }
  sleep 1
done
cd "$SDK" || exit 1
PINECONE_API_KEY=suite-key PINECONE_CONTROLLER_HOST="http://127.0.0.1:$PORT" \
  timeout 1800 "$PY" -m pytest -q -p no:cacheprovider -o timeout=120 -rf -k "not grpc" \
  tests/integration/test_data_plane.py tests/integration/test_data_plane_async.py \
  tests/integration/test_query_namespaces.py tests/integration/test_query_namespaces_async.py \
  tests/integration/test_search.py \
  >"$OUT_DIR/suite.log" 2>&1
rc=$?
grep -E "^FAILED" "$OUT_DIR/suite.log" | sed 's/ - .*//'
tail -n 1 "$OUT_DIR/suite.log"
# The tally, with the machine and the SDK's version, into bench/results/pinecone-suite-cpuN.json.
cd "$ROOT/bench" && "$ROOT/.venv/bin/python" - "$OUT_DIR/suite.log" "$SDK" "$PY" <<'PYEOF'
import json, re, subprocess, sys
from machine import machine_info, result_path
log, sdk, py = sys.argv[1:]
text = open(log).read()
tally = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|deselected|skipped|error)", text.splitlines()[-1])}
failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in text.splitlines() if line.startswith("FAILED ")]
version = subprocess.run([py, "-c", "import pinecone; print(pinecone.__version__)"], capture_output=True, text=True).stdout.strip()
commit = subprocess.run(["git", "-C", sdk, "log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip()
machine = machine_info()
out = {"benchmark": "pinecone_suite", "command": "bench/pinecone_suite.sh SDK_CHECKOUT PYTHON", "machine": machine,
       "sdk_tests": commit, "pinecone": version, "selection": "test_data_plane*.py, test_query_namespaces*.py, test_search.py, -k 'not grpc'",
       "tally": tally, "failed": failed}
path = result_path("pinecone-suite", machine)
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
PYEOF
exit $rc
