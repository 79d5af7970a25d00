"""LangChain, LlamaIndex and Haystack stores, each in its own environment (their pinecone pins conflict
with each other and with ours: .venv-langchain, .venv-llamaindex, .venv-haystack, made by `make test`
from tests/frameworks/requirements-*.txt), driven through their documented set-up against the shared
served app: only PINECONE_API_KEY and PINECONE_CONTROLLER_HOST point them at it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import RW_KEY

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("ray")


@pytest.mark.parametrize("framework", ["langchain", "llamaindex", "haystack"])
def test_framework_store_against_the_server(served, framework):
    python = ROOT / f".venv-{framework}" / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{python} is missing: `make test` makes it (tests/frameworks/requirements-{framework}.txt)")
        pytest.skip(f"no {python}: `make test` (or `make .venv-{framework}/.installed`) makes it")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PINECONE_API_KEY=RW_KEY, PINECONE_CONTROLLER_HOST=f"http://{served.host}:{served.port}",
               PYTHONUNBUFFERED="1", TQDM_DISABLE="1",
               # loopback only: no telemetry or tracing (LlamaIndex's tokenizer and NLTK data ship in its package)
               HAYSTACK_TELEMETRY_ENABLED="False", LANGCHAIN_TRACING_V2="false", ANONYMIZED_TELEMETRY="False")
    proc = subprocess.run([str(python), str(ROOT / "tests" / "frameworks" / f"{framework}_check.py")], env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and f"OK {framework}" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
