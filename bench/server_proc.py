"""A real ``gpusearch serve`` in a subprocess, for the fault tests and the benchmarks: start it, find its
processes, kill -9 them all. Also :func:`free_port`, the one free-port helper of tests/ and bench/.

The server runs in its own session (``start_new_session``) with its local Ray's temp dir in a fresh
short directory under /tmp. Ray's processes are not all in the driver's session or process group
(raylet starts workers, and a worker's title replaces its command line), so a process counts as
this server's when any of these holds:

- its session id is the driver's (the driver, and what it started without a new session);
- its command line names the Ray temp dir (raylet, GCS, agents);
- one of its open files lies under the Ray temp dir (every Ray worker, Serve replicas included,
  writes its stdout/stderr to the session's log directory);
- it descends from one of the above.

:meth:`Server.kill9` sends SIGKILL to all of them, repeats until a scan finds none, and returns
the pids it killed; :meth:`Server.survivors` is that scan.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; the one helper for this)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Credentials a test's S3 protocol server accepts (moto checks none; the client needs some).
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}


def start_s3_server(log_path, timeout_s: float = 60.0):
    """moto's S3 server (``moto[server]``, the dev extra) on a free loopback port, for tests and benchmarks:
    returns (process, endpoint URL) once it answers; raises ``RuntimeError`` with its log's tail if it
    does not within ``timeout_s``. The caller terminates the process."""
    import urllib.request

    port = free_port()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **S3_TEST_ENV})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:  # wait on the condition (the server answers), bounded
        try:
            urllib.request.urlopen(url + "/", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start: {Path(log_path).read_text()[-2000:]}") from None
            time.sleep(0.2)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of ``pid``, or None when it is gone (or a zombie)."""
    raw = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not raw:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3])


def _opens_under(pid: int, root: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(root):
                return True
        except OSError:
            continue
    return False


def processes_of(sid: int, ray_dir: str) -> dict[int, str]:
    """pid -> command line of every live process that belongs to the server (see the module doc)."""
    me = os.getpid()
    info: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            st = _stat(int(name))
            if st is not None:
                info[int(name)] = st
    mine: set[int] = set()
    marker = ray_dir.encode()
    for pid, (_, psid) in info.items():
        if psid == sid or marker in _read(f"/proc/{pid}/cmdline") or _opens_under(pid, ray_dir):
            mine.add(pid)
    grew = True
    while grew:  # descendants of what was found
        grew = False
        for pid, (ppid, _) in info.items():
            if pid not in mine and ppid in mine:
                mine.add(pid)
                grew = True
    return {pid: _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
            for pid in mine}


class Server:
    """``gpusearch serve`` on a random loopback port, data in ``data_dir``, settings from ``env``."""

    def __init__(self, data_dir: str | os.PathLike, *, shards: int = 2, replicas: int = 1,
                 env: dict[str, str] | None = None, log_path: str | os.PathLike | None = None):
        self.data_dir = str(data_dir)
        self.shards, self.replicas = shards, replicas
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ray_dir = tempfile.mkdtemp(prefix="gsk-", dir="/tmp")
        self.log_path = str(log_path or Path(self.data_dir).parent / f"server-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.killed: dict[int, str] = {}

    # -- life cycle ------------------------------------------------------------------
    def start(self, timeout: float = 300.0, collection: str | None = None) -> "Server":
        import httpx  # here, so that free_port() needs the standard library alone

        env = dict(os.environ)
        env.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "GPUSEARCH_ENCODER_ENABLED": "0",
                    "GPUSEARCH_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        cmd = [sys.executable, "-m", "gpusearch.cli", "serve", "--port", str(self.port), "--data-dir",
               self.data_dir, "--shards", str(self.shards), "--replicas", str(self.replicas), "--num-cpus", "2",
               "--no-demo", "--ray-temp-dir", self.ray_dir]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gpusearch serve exited with {self.proc.returncode} before it was up:\n"
                                       + self.log_tail())
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gpusearch serve not up within {timeout} s:\n" + self.log_tail())
                try:
                    # /healthz is the Ingress alone; /collections also goes through the Writer.
                    if (c.get(self.url + "/healthz").status_code == 200
                            and c.get(self.url + "/collections", headers=self.headers()).status_code == 200
                            and b"app up in" in Path(self.log_path).read_bytes()):
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        if collection is not None:
            self.wait_serving(collection, deadline - time.monotonic())
        return self

    def headers(self) -> dict[str, str]:
        keys = self.extra_env.get("GPUSEARCH_API_KEYS", "")
        for part in keys.split(","):
            key, _, role = part.strip().partition(":")
            if key and role in ("rw", ""):
                return {"Api-Key": key}
        return {}

    def wait_serving(self, collection: str, timeout: float, dim: int | None = None) -> float:
        """Seconds until a query on ``collection`` answers 200 and not partial."""
        import httpx

        t0 = time.monotonic()
        body = {"namespace": collection, "vector": [1.0] * (dim or 1), "topK": 1}
        with httpx.Client(timeout=30) as c:
            while time.monotonic() - t0 < timeout:
                try:
                    r = c.post(self.url + "/query", json=body, headers=self.headers())
                    if r.status_code == 200 and not r.json()["partial"]:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{collection!r} not served whole within {timeout} s:\n" + self.log_tail())

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log_path).read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    # -- processes -------------------------------------------------------------------
    def processes(self) -> dict[int, str]:
        if self.proc is None:
            return {}
        return processes_of(self.proc.pid, self.ray_dir)

    def replica_pids(self, deployment: str, *, starting: bool = False) -> list[int]:
        """pids of the live replicas of ``deployment`` (e.g. "Shard0").

        Ray titles a replica's process ``ray::ServeReplica:<app>:<name>``, with ``.<method>`` added
        while it runs a task (``.check_health``, a request, ...). One still in its constructor is
        titled ``...<name>.initialize_and_get_metadata``: left out unless ``starting``.
        """
        want = f"ray::ServeReplica:gpusearch:{deployment}"
        init = want + ".initialize_and_get_metadata"
        titles = {pid: cmd.split(" ")[0] for pid, cmd in self.processes().items()}
        return sorted(pid for pid, t in titles.items()
                      if (t == want or t.startswith(want + ".")) and (starting or t != init))

    def kill9(self, timeout: float = 30.0, first: dict[int, str] | None = None) -> dict[int, str]:
        """SIGKILL to every process of this server, until a scan finds none; returns what was killed.

        ``first`` (an earlier :meth:`processes`) is killed at once, before any scan, so that the
        kill lands at a chosen instant rather than after the scan's fraction of a second.
        """
        for pid, cmd in (first or {}).items():
            if self._same_process(pid, cmd):
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.setdefault(pid, cmd)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while True:
            found = self.processes()
            if not found:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of the server survive kill -9: {found}")
            for pid, cmd in found.items():
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.setdefault(pid, cmd)
                except ProcessLookupError:
                    pass
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(0.2)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        return dict(self.killed)

    @staticmethod
    def _same_process(pid: int, cmd: str) -> bool:
        """``pid`` still runs ``cmd`` (not a new process that reused the number)."""
        now = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        return bool(now) and now == cmd

    def survivors(self) -> dict[int, str]:
        return self.processes()

    def stop(self) -> None:
        """kill -9 everything, close the log, remove the Ray temp dir (not the data)."""
        try:
            self.kill9()
        finally:
            if getattr(self, "_log", None) is not None:
                self._log.close()
            shutil.rmtree(self.ray_dir, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
