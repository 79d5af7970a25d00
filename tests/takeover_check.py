"""The Writer's node dies mid-stream on a multi-node Ray cluster on one machine, with the Writer's log and
snapshots at a storage URI (``storage_uri``; gpusearch.durable): run by tests/test_multinode.py in a
process of its own.

    python tests/takeover_check.py WORKDIR [STORAGE_URI]

Nodes (``ray.cluster_utils.Cluster``, each its own raylet on 127.0.0.1): the head (the lease, the shard
replicas, the HTTP proxy) and two nodes with the custom resource ``gpusearch_writer``, so that the
Writer runs on one and can move to the other. STORAGE_URI (default ``WORKDIR/bucket``, a directory
standing for a bucket every node reaches; an ``s3://`` URI for a real S3 protocol server) is the only
thing the Writers share.

Checks (an AssertionError fails the run; the last line printed is a JSON summary):
1. 400 records upserted, queries equal NumPy brute force.
2. A stream of one-record upserts runs; after 40 are acknowledged, the Writer's node is removed (no
   graceful stop) and its directory deleted (the node's disk is gone). The stream goes on, its writes
   failing until Serve has started a new Writer on the other node, which takes a new lease term and
   rebuilds every collection from the storage URI; then 40 more are acknowledged.
3. Every acknowledged write is there with its exact values; nothing is there that was never sent;
   the record count equals the distinct ids present (no duplicates); queries equal brute force over
   what is present; read-your-writes holds on the new Writer.
"""
from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_check import brute, free_port, start_cluster, stop_cluster  # noqa: E402

DIM = 16
NAME = "durable"


def vec(i: int) -> np.ndarray:
    return np.random.default_rng(1000 + i).standard_normal(DIM).astype(np.float32)


def main() -> int:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    storage = sys.argv[2] if len(sys.argv) > 2 else str(work / "bucket")
    t0 = time.monotonic()
    cluster, writers = start_cluster({"replica_slot": 4}, [{"gpusearch_writer": 1}] * 2, "takeover")
    import httpx
    from ray import serve

    from gpusearch.serve.app import build_app
    from gpusearch.serve.config import ServeConfig

    summary: dict = {"nodes": 3, "storage": storage.split("?")[0].split("://")[0] if "://" in storage else "path"}
    stop = threading.Event()
    try:
        port = free_port()
        cfg = ServeConfig(data_dir=str(work / "writer-data"), host="127.0.0.1", port=port, shards=2, replicas=1,
                          device="cpu", fsync=True, encoder_enabled=False, replication="ray",
                          replica_dir=str(work / "replicas"), writer_resources={"gpusearch_writer": 1},
                          shard_resources={"replica_slot": 1}, num_cpus_shard=0.25, num_cpus_other=0.1,
                          shard_timeout_s=20.0, app_name="gpusearch", storage_uri=storage)
        serve.start(http_options={"host": cfg.host, "port": port}, proxy_location="HeadOnly")
        serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
        summary["started_s"] = round(time.monotonic() - t0, 1)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        writer = serve.get_deployment_handle("Writer", app_name=cfg.app_name)

        def where() -> dict:
            return writer.where.remote().result(timeout_s=120)

        rng = np.random.default_rng(0)
        X = rng.standard_normal((400, DIM)).astype(np.float32)
        base_ids = [f"r{i}" for i in range(len(X))]
        for lo in range(0, len(X), 200):
            body = {"namespace": NAME, "vectors": [{"id": base_ids[j], "values": X[j].tolist()}
                                                   for j in range(lo, lo + 200)]}
            r = http.post("/vectors/upsert", json=body)
            assert r.status_code == 200, r.text

        def check_queries(ids, M, tag: str) -> None:
            for q in rng.standard_normal((10, DIM)).astype(np.float32):
                r = http.post("/query", json={"namespace": NAME, "vector": q.tolist(), "topK": 10})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["partial"] is False, (tag, body)
                assert [m["id"] for m in body["matches"]] == brute(M, ids, q, 10), tag

        check_queries(base_ids, X, "first")
        first = where()
        assert first["durable"]["term"] >= 1, first
        # 2. the stream, and the Writer's node lost under it
        acked, failed, sent = [], [], []
        lock = threading.Lock()

        def stream():
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            i = 0
            while not stop.is_set():
                rid = f"s{i}"
                with lock:
                    sent.append(i)
                try:
                    r = client.post("/vectors/upsert", json={"namespace": NAME,
                                                             "vectors": [{"id": rid, "values": vec(i).tolist()}]})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    (acked if ok else failed).append((i, time.monotonic()))
                if not ok:
                    time.sleep(0.2)
                i += 1

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 40:
            assert time.monotonic() < deadline and t.is_alive(), f"the stream stalled: {len(acked)} acked"
            time.sleep(0.05)
        victim = next(w for w in writers if w.node_id == first["node_id"])
        cluster.remove_node(victim, allow_graceful=False)
        t_lost = time.monotonic()
        shutil.rmtree(first["data_dir"], ignore_errors=True)  # the node's disk went with it
        with lock:
            before = len(acked)
        deadline = t_lost + 300
        while True:  # wait on the condition: 40 writes acknowledged after the loss
            with lock:
                after = [a for a in acked if a[1] > t_lost]
            if len(after) >= 40:
                break
            assert time.monotonic() < deadline, f"no new Writer took writes within 300 s ({len(after)} acked)"
            time.sleep(0.1)
        stop.set()
        t.join(timeout=60)
        summary["writes_acked_before"], summary["writes_acked_after"] = before, len(acked) - before
        summary["writes_refused"] = len(failed)
        summary["first_ack_after_loss_s"] = round(after[0][1] - t_lost, 1)
        now = where()
        assert now["node_id"] != first["node_id"], now
        assert now["durable"]["term"] > first["durable"]["term"], (first, now)
        summary["terms"] = [first["durable"]["term"], now["durable"]["term"]]
        summary["rebuild"] = now["durable"]["recovery"]
        # 3. every acknowledged write, nothing never sent, no duplicates
        stream_ids = [f"s{i}" for i in sent]
        found: dict[str, list] = {}
        for lo in range(0, len(stream_ids), 100):
            r = http.get("/vectors/fetch", params={"ids": stream_ids[lo:lo + 100], "namespace": NAME})
            assert r.status_code == 200, r.text
            found.update({k: v["values"] for k, v in r.json()["vectors"].items()})
        lost = [f"s{i}" for i, _ in acked if f"s{i}" not in found]
        assert not lost, f"acknowledged writes lost: {lost}"
        for rid, values in found.items():
            np.testing.assert_allclose(values, vec(int(rid[1:])), rtol=1e-6, atol=1e-6)
        r = http.post("/describe_index_stats", json={})
        count = r.json()["namespaces"][NAME]["vectorCount"]
        assert count == len(base_ids) + len(found), (count, len(base_ids), len(found))
        listed = []
        token = None
        while True:
            params = {"namespace": NAME, "limit": 100, **({"paginationToken": token} if token else {})}
            r = http.get("/vectors/list", params=params)
            assert r.status_code == 200, r.text
            listed += [v["id"] for v in r.json()["vectors"]]
            token = (r.json().get("pagination") or {}).get("next")
            if not token:
                break
        assert len(listed) == len(set(listed)) == count, (len(listed), len(set(listed)), count)
        summary["unacknowledged_but_present"] = len(found) - len(acked)
        ids = base_ids + sorted(found)
        M = np.vstack([X, np.array([vec(int(i[1:])) for i in sorted(found)], np.float32)])
        check_queries(ids, M, "after the takeover")
        for step in range(10):  # read-your-writes on the new Writer
            v = rng.standard_normal(DIM).astype(np.float32)
            rid = f"ryw-{step}"
            r = http.post("/vectors/upsert", json={"namespace": NAME, "vectors": [{"id": rid, "values": v.tolist()}]})
            assert r.status_code == 200, r.text
            r = http.post("/query", json={"namespace": NAME, "vector": v.tolist(), "topK": 1})
            assert r.status_code == 200 and r.json()["matches"][0]["id"] == rid, (step, r.text)
        summary["records"] = count + 10
        summary["total_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps({"ok": True, **summary}), flush=True)
        return 0
    finally:
        stop.set()
        stop_cluster(cluster)


if __name__ == "__main__":
    sys.exit(main())
