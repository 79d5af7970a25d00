"""An inverted-file (IVF-Flat) index as plain arrays, searched with torch on the device that holds them.

FAISS's GPU indexes cannot be installed everywhere a GPU is (the image of the project's GPU machine
has none, and ``faiss-gpu`` wheels exist only for some CUDA versions), so this is the project's own
IVF for the device: coarse centroids, the base rows sorted by the list they fall in, and a search
that scores only the rows of the ``nprobe`` nearest lists, honouring a row mask (filters and
deletes) before the top k is taken. It runs unchanged on the CPU (torch), which is what the tests
and the CPU dry run of ``bench/gpu_check.sh`` use.

Arrays in, arrays out: NumPy arrays in give NumPy arrays out; torch tensors stay torch tensors on
their device. Scores accumulate in float32 whatever the storage dtype.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> base = rng.standard_normal((2000, 16)).astype(np.float32)
>>> lists = ivf_build(base, ivf_train(base, 8, metric="l2", seed=0), metric="l2")
>>> D, I = ivf_search(base[:3], lists, 5, nprobe=8)      # every list probed: exact
>>> I[:, 0].tolist()
[0, 1, 2]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import check_k, check_metric

__all__ = ["IvfLists", "ivf_train", "ivf_build", "ivf_search", "ivf_search_reference"]

#: Bytes of gathered candidate rows held at once while searching (queries are taken in blocks under it).
GATHER_BYTES = 1 << 30


@dataclass
class IvfLists:
    """The index: ``centroids`` (nlist, d), ``rows`` (n,) the base rows in list order, ``offsets``
    (nlist + 1,) where each list starts in ``rows``, ``vectors`` (n, d) the base rows in that order,
    ``sqnorms`` (n,) their squared norms (for l2), all torch tensors on one device."""

    centroids: "object"
    rows: "object"
    offsets: "object"
    vectors: "object"
    sqnorms: "object"
    metric: str

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def _torch(x, name: str):
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype not in (np.float16, np.float32):
            raise TypeError(f"{name} must be float32 or float16, got {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x)), True
    if isinstance(x, torch.Tensor):
        if x.dtype not in (torch.float16, torch.float32):
            raise TypeError(f"{name} must be float32 or float16, got {x.dtype}")
        return x, False
    raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")


def _scores(q, c, metric: str, c_sqnorms=None):
    """float32 scores, larger is better (l2: the negated squared distance)."""
    s = q.float() @ c.float().T if q.device.type == "cpu" else (q @ c.to(q.dtype).T).float()
    if metric == "l2":
        cn = c.float().pow(2).sum(1) if c_sqnorms is None else c_sqnorms
        s = 2 * s - cn[None, :] - q.float().pow(2).sum(1, keepdim=True)
    return s


def ivf_train(sample, nlist: int, *, metric: str = "ip", iters: int = 10, seed: int = 0):
    """``nlist`` coarse centroids by k-means (Lloyd) on ``sample`` (nlist distinct rows to start).

    Returns a float32 tensor (or array, for a NumPy sample) of shape (nlist, d)."""
    import torch

    metric = check_metric(metric)
    x, was_numpy = _torch(sample, "sample")
    if x.ndim != 2 or x.shape[0] < nlist or nlist < 1:
        raise ValueError(f"sample must be a matrix of at least nlist={nlist} rows, got shape {tuple(x.shape)}")
    x = x.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    c = x[torch.randperm(x.shape[0], generator=gen)[:nlist].to(x.device)].clone()
    for _ in range(iters):
        assign = _scores(x, c, metric).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=nlist).to(x.dtype)
        empty = counts == 0  # an empty list keeps its centroid
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None])
    return c.numpy() if was_numpy else c


def ivf_build(base, centroids, *, metric: str = "ip", block: int = 1 << 18) -> IvfLists:
    """Assign every row of ``base`` to its nearest centroid and lay the rows out list by list (a
    stable sort: within a list, rows keep their order). The vectors keep ``base``'s dtype."""
    import torch

    metric = check_metric(metric)
    b, _ = _torch(base, "base")
    c, _ = _torch(centroids, "centroids")
    c = c.to(b.device).float()
    if b.ndim != 2 or c.ndim != 2 or b.shape[1] != c.shape[1]:
        raise ValueError(f"base (n, d) and centroids (nlist, d) must share d, got {tuple(b.shape)} and {tuple(c.shape)}")
    assign = torch.cat([_scores(b[i:i + block], c, metric).argmax(1) for i in range(0, b.shape[0], block)]) \
        if b.shape[0] else torch.zeros(0, dtype=torch.int64, device=b.device)
    order = torch.sort(assign, stable=True).indices
    counts = torch.bincount(assign, minlength=c.shape[0])
    offsets = torch.zeros(c.shape[0] + 1, dtype=torch.int64, device=b.device)
    offsets[1:] = torch.cumsum(counts, 0)
    vectors = b[order].contiguous()
    return IvfLists(centroids=c, rows=order, offsets=offsets, vectors=vectors,
                    sqnorms=vectors.float().pow(2).sum(1), metric=metric)


def _probe(q, lists: IvfLists, nprobe: int):
    return _scores(q, lists.centroids, lists.metric).topk(min(nprobe, lists.nlist), dim=1).indices


def ivf_search(queries, lists: IvfLists, k: int, *, nprobe: int = 16, mask=None):
    """The best ``k`` rows of the ``nprobe`` nearest lists for each query, best first.

    Scores are those of :func:`gpusearch.kernels.fused_search` (``ip``: ``q . b``; ``l2``: squared
    distance); rows where ``mask`` (bool, shape (n,), indexed by base row) is False are never returned;
    a query with fewer than ``k`` candidates is padded with ``-1`` and the sentinel.

    Returns ``(D, I)``: float32 scores and int64 base rows, NumPy for NumPy queries, else torch
    tensors on the lists' device."""
    import torch

    k = check_k(k)
    if not isinstance(nprobe, int) or isinstance(nprobe, bool) or nprobe < 1:
        raise ValueError(f"nprobe must be a positive int, got {nprobe!r}")
    q, was_numpy = _torch(queries, "queries")
    dev = lists.vectors.device
    q = q.to(dev)
    if q.ndim != 2 or q.shape[1] != lists.vectors.shape[1]:
        raise ValueError(f"queries must have shape (nq, {lists.vectors.shape[1]}), got {tuple(q.shape)}")
    allow = None
    if mask is not None:
        m = torch.from_numpy(np.ascontiguousarray(mask)) if isinstance(mask, np.ndarray) else mask
        if m.dtype != torch.bool or m.shape != (len(lists),):
            raise ValueError(f"mask must be a bool array of shape ({len(lists)},)")
        allow = m.to(dev)[lists.rows]  # in list order
    l2 = lists.metric == "l2"
    nq = q.shape[0]
    D = torch.full((nq, k), float("inf") if l2 else float("-inf"), dtype=torch.float32, device=dev)
    I = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    if nq == 0 or len(lists) == 0:
        return (D.cpu().numpy(), I.cpu().numpy()) if was_numpy else (D, I)
    probe = _probe(q, lists, nprobe)                                   # (nq, p)
    starts = lists.offsets[probe]
    sizes = lists.offsets[probe + 1] - starts
    ends = torch.cumsum(sizes, 1)                                      # (nq, p) candidate ends per query
    totals = ends[:, -1]
    row_bytes = lists.vectors.shape[1] * lists.vectors.element_size()
    longest = int(totals.max())
    block = max(1, min(nq, GATHER_BYTES // max(1, longest * row_bytes)))
    qv = q.to(lists.vectors.dtype)
    for a in range(0, nq, block):
        b = min(nq, a + block)
        L = int(totals[a:b].max())
        if L == 0:
            continue
        j = torch.arange(L, device=dev).expand(b - a, L).contiguous()
        which = torch.searchsorted(ends[a:b], j, right=True).clamp(max=probe.shape[1] - 1)  # which probed list
        before = ends[a:b].gather(1, which) - sizes[a:b].gather(1, which)
        pos = starts[a:b].gather(1, which) + (j - before)
        valid = j < totals[a:b, None]
        pos = torch.where(valid, pos, 0)
        cand = lists.vectors[pos]                                      # (blk, L, d)
        s = torch.bmm(cand, qv[a:b, :, None]).squeeze(2).float() if dev.type != "cpu" else \
            torch.bmm(cand.float(), qv[a:b, :, None].float()).squeeze(2)
        if l2:
            s = (lists.sqnorms[pos] - 2 * s + q[a:b].float().pow(2).sum(1, keepdim=True)).clamp(min=0)
            s = -s
        if allow is not None:
            valid &= allow[pos]
        s = torch.where(valid, s, float("-inf"))
        kk = min(k, L)
        top, arg = s.topk(kk, dim=1)
        ids = lists.rows[pos.gather(1, arg)]
        keep = top > float("-inf")
        D[a:b, :kk] = torch.where(keep, -top if l2 else top, D[a:b, :kk])
        I[a:b, :kk] = torch.where(keep, ids, -1)
    return (D.cpu().numpy(), I.cpu().numpy()) if was_numpy else (D, I)


def ivf_search_reference(queries: np.ndarray, lists: IvfLists, k: int, *, nprobe: int = 16, mask=None):
    """The same search one query at a time in float64 NumPy: which lists are probed, then an exact
    top k over their allowed rows (ties to the smaller base row)."""
    q = np.asarray(queries, np.float64)
    import torch

    probe = _probe(torch.from_numpy(np.ascontiguousarray(queries)).to(lists.vectors.device), lists, nprobe).cpu().numpy()
    offsets, rows = lists.offsets.cpu().numpy(), lists.rows.cpu().numpy()
    vectors = lists.vectors.cpu().float().numpy().astype(np.float64)
    l2 = lists.metric == "l2"
    D = np.full((len(q), k), np.inf if l2 else -np.inf, np.float32)
    I = np.full((len(q), k), -1, np.int64)
    for i in range(len(q)):
        pos = np.concatenate([np.arange(offsets[p], offsets[p + 1]) for p in probe[i]])
        if mask is not None:
            pos = pos[np.asarray(mask)[rows[pos]]]
        v = vectors[pos]
        s = ((v - q[i]) ** 2).sum(1) if l2 else v @ q[i]
        order = np.lexsort((rows[pos], s if l2 else -s))[:k]
        D[i, :len(order)], I[i, :len(order)] = s[order], rows[pos][order]
    return D, I
