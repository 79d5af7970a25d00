"""The README's main command, ``gpusearch serve``, from start to a text query over HTTP to Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server_proc import free_port

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening_sockets() -> dict:
    """Every TCP socket in LISTEN on this machine (Linux's /proc/net/tcp and tcp6): (address, port) -> inode."""
    import socket
    import struct

    out = {}
    for family, path in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        try:
            rows = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A":  # LISTEN
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            if family == socket.AF_INET:
                raw = struct.pack("<I", int(addr, 16))
            else:  # four 32-bit words, each in the machine's byte order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
            out[(socket.inet_ntop(family, raw), int(port, 16))] = f[9]
    return out


def socket_owners() -> dict:
    """inode -> the command line of a process holding that socket."""
    owners = {}
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
            if target.startswith("socket:["):
                owners[target[8:-1]] = (fd.parents[1] / "cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
    return owners


def test_gpusearch_serve_embedded_default(tmp_path):
    port = free_port()
    before = set(listening_sockets()) if Path("/proc/net/tcp").exists() else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", GPUSEARCH_API_KEYS="")
    exe = Path(sys.executable).with_name("gpusearch")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                             "--num-cpus", "2", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines = []
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("try:"):
                break
        out = "".join(lines)
        assert "no API key configured" in out, out
        assert f"gpusearch is serving at http://127.0.0.1:{port}" in out, out
        assert "subprocess" in out.split("query 'run an external program")[1], out  # the demo query found it
        from bench_start import _DEMO_PARTS, MARKS  # bench/bench_start.py times start-up from these lines
        assert _DEMO_PARTS.search(out) and all(m in out for m in MARKS.values()), out
        r = httpx.post(f"http://127.0.0.1:{port}/query", timeout=60,
                       json={"text": "parse command line arguments", "topK": 3, "includeMetadata": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["collection"] == "default" and body["lineage"]["model"] == "all-MiniLM-L6-v2"
        assert any("argparse" in m["id"] or "getopt" in m["id"] for m in body["matches"]), body
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=30).status_code == 200
        if before is not None:
            # Ray started on the loopback address (gpusearch/_ray.py): what listens beyond it is only
            # Ray Serve's own inter-deployment gRPC server in each replica, which Ray 2.60 binds to
            # "[::]:0" whatever the node's address (ray/serve/_private/replica.py)
            now, owners = listening_sockets(), socket_owners()
            beyond = {k: owners.get(now[k], "?") for k in set(now) - before if k[0] not in LOOPBACK}
            assert all(cmd.startswith("ray::ServeReplica") for cmd in beyond.values()), beyond
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
