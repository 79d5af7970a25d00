"""A multi-node Ray cluster on one machine serving gpusearch with replication "ray": run by
tests/test_multinode.py in a process of its own (the test session's Ray is a single node).

    python tests/cluster_check.py WORKDIR

Nodes (``ray.cluster_utils.Cluster``, every one on 127.0.0.1 with its own raylet and object store):
the head holds the Writer and the Aggregator (custom resource ``gpusearch_writer``) and the data
directory; three worker nodes have one ``replica_slot`` each, and each shard replica takes one, so
the two shards' replicas run on two different worker nodes and the third is spare. Each replica keeps
its copy under its own directory (``WORKDIR/node-*``), never the Writer's.

Checks, in order (an AssertionError fails the run; the last line printed is a JSON summary):
1. 1,500 records upserted over HTTP; 20 queries equal NumPy brute force; each shard replica's copy holds
   only its own shard's files, in its own directory, on its own node.
2. Read-your-writes across nodes: 25 times, upsert one record and query for it at once (top-1 is it)
   and fetch it.
3. The node of shard 0's replica is removed: Serve starts a new replica on the spare node, which copies
   its shard from the Writer through Ray; then every query again equals brute force, nothing partial,
   and read-your-writes holds on the new node.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 16
NAME = "multi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def brute(X, ids, q, k):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q)
    s = Xn @ qn
    order = sorted(range(len(ids)), key=lambda j: (-s[j], ids[j]))[:k]
    return [ids[j] for j in order]


def start_cluster(head_resources: dict, worker_resources: list[dict], tag: str):
    """A Ray cluster on this machine: a head (2 CPUs) and one raylet per entry of ``worker_resources``
    (1 CPU each, with those custom resources), every node on 127.0.0.1; this process connected as its
    driver. Returns (cluster, worker nodes); stop it with :func:`stop_cluster`."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Every node on 127.0.0.1: without this, a driver connecting to "127.0.0.1:port" is sent to the
    # machine's outward address, where nothing listens (Ray resolves localhost for multi-node clusters).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    # Cluster writes the head's address to Ray's default temp dir (/tmp/ray/ray_current_cluster) whatever
    # temp_dir the nodes use, and fails when that directory does not exist yet (a machine where no Ray
    # has run with its default temp dir, as a fresh CI machine).
    address_file = ray._private.utils.get_ray_address_file(None)
    os.makedirs(os.path.dirname(address_file), exist_ok=True)
    node_args = dict(node_ip_address="127.0.0.1", num_cpus=1, object_store_memory=80 << 20)
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        node_args, num_cpus=2, include_dashboard=False, resources=head_resources,
        temp_dir=tempfile.mkdtemp(prefix=f"gsray-{tag}-", dir="/tmp")))
    workers = [cluster.add_node(**node_args, resources=r) for r in worker_resources]
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, workers


def stop_cluster(cluster) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> int:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cluster, workers = start_cluster({"gpusearch_writer": 4}, [{"replica_slot": 1}] * 3, "multi")
    import httpx
    import ray
    from ray import serve

    from gpusearch.serve.app import build_app
    from gpusearch.serve.config import ServeConfig

    summary: dict = {"nodes": 4}
    try:
        port = free_port()
        cfg = ServeConfig(data_dir=str(work / "writer-data"), host="127.0.0.1", port=port, shards=2, replicas=1,
                          device="cpu", fsync=True, encoder_enabled=False, replication="ray",
                          replica_dir=str(work / "replicas"), writer_resources={"gpusearch_writer": 1},
                          shard_resources={"replica_slot": 1}, num_cpus_shard=0.25, num_cpus_other=0.1,
                          shard_timeout_s=20.0, app_name="gpusearch")
        serve.start(http_options={"host": cfg.host, "port": port}, proxy_location="HeadOnly")
        serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
        summary["started_s"] = round(time.monotonic() - t0, 1)
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, timeout=60)

        def where() -> dict:
            out = {}
            for i in range(cfg.shards):
                h = serve.get_deployment_handle(f"Shard{i}", app_name=cfg.app_name)
                out[i] = h.where.remote().result(timeout_s=60)
            return out

        rng = np.random.default_rng(0)
        X = rng.standard_normal((1500, DIM)).astype(np.float32)
        ids = [f"r{i}" for i in range(len(X))]
        for lo in range(0, len(X), 500):
            body = {"namespace": NAME, "vectors": [{"id": ids[j], "values": X[j].tolist(), "metadata": {"j": j}}
                                                   for j in range(lo, lo + 500)]}
            r = http.post("/vectors/upsert", json=body)
            assert r.status_code == 200, r.text

        def check_queries(tag: str) -> None:
            for q in rng.standard_normal((20, DIM)).astype(np.float32):
                r = http.post("/query", json={"namespace": NAME, "vector": q.tolist(), "topK": 10})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["partial"] is False, (tag, body)
                assert [m["id"] for m in body["matches"]] == brute(X, ids, q, 10), tag

        check_queries("first")
        placed = where()
        nodes = {i: w["node_id"] for i, w in placed.items()}
        assert len(set(nodes.values())) == 2, f"the shards' replicas share a node: {nodes}"
        head = ray.get_runtime_context().get_node_id()
        assert head not in nodes.values(), "a shard replica runs on the Writer's node"
        for i, w in placed.items():
            assert Path(w["local_dir"]).is_relative_to(work / "replicas"), w["local_dir"]
            shard_dirs = {f.split("/")[2] for f in w["files"] if f.startswith("collections/") and "shard-" in f}
            assert shard_dirs == {f"shard-{i:03d}"}, (i, shard_dirs)
        summary["placement"] = {str(i): {"node": n[:8], "files": len(placed[i]["files"])} for i, n in nodes.items()}

        def read_your_writes(tag: str, n: int) -> None:
            nonlocal X, ids
            for step in range(n):
                v = rng.standard_normal(DIM).astype(np.float32)
                rid = f"{tag}-{step}"
                r = http.post("/vectors/upsert", json={"namespace": NAME, "vectors": [{"id": rid, "values": v.tolist()}]})
                assert r.status_code == 200, r.text
                r = http.post("/query", json={"namespace": NAME, "vector": v.tolist(), "topK": 1})
                assert r.status_code == 200 and r.json()["matches"][0]["id"] == rid, (tag, step, r.text)
                r = http.get("/vectors/fetch", params={"ids": [rid], "namespace": NAME})
                assert list(r.json()["vectors"]) == [rid], (tag, step, r.text)
                X = np.vstack([X, v[None]])
                ids = ids + [rid]

        read_your_writes("ryw", 25)
        # 3. lose the node of shard 0's replica
        victim = next(w for w in workers if w.node_id == nodes[0])
        cluster.remove_node(victim, allow_graceful=False)
        t_lost = time.monotonic()
        deadline = t_lost + 240
        while True:  # wait on the condition: a whole answer again
            try:
                r = http.post("/query", json={"namespace": NAME, "vector": X[0].tolist(), "topK": 1})
                if r.status_code == 200 and r.json()["partial"] is False:
                    moved = where()
                    if moved[0]["node_id"] != nodes[0]:
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "shard 0 did not come back on another node"
            time.sleep(0.5)
        summary["replaced_after_s"] = round(time.monotonic() - t_lost, 1)
        assert moved[0]["node_id"] not in (nodes[0], nodes[1], head), moved
        check_queries("after the node was lost")
        read_your_writes("after", 10)
        summary["records"] = len(ids)
        summary["total_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps({"ok": True, **summary}), flush=True)
        return 0
    finally:
        stop_cluster(cluster)


if __name__ == "__main__":
    sys.exit(main())
