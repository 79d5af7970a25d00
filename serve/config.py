"""Settings of a gpusearch Serve application: defaults, a YAML file, then ``GPUSEARCH_*`` environment.

>>> cfg = ServeConfig.load(None, env={"GPUSEARCH_API_KEYS": "s3cret:rw,viewer:ro"})
>>> cfg.api_keys
{'s3cret': 'rw', 'viewer': 'ro'}
>>> ServeConfig(shards=0)
Traceback (most recent call last):
...
ValueError: shards must be an int between 1 and 256, got 0
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ServeConfig", "is_loopback"]

_ENV_PREFIX = "GPUSEARCH_"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """Everything a deployment needs to know; plain data so it travels to every replica."""

    data_dir: str = "./gpusearch-data"
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "gpusearch"
    # Every collection of one server has this many shards: one Shard deployment each.
    shards: int = 2
    replicas: int = 1
    metric: str = "cosine"
    index: str = "Flat"
    device: str = "auto"
    fsync: bool = True
    # Text queries: a sentence-transformers model folder, or None for the packaged MiniLM.
    encoder: str | None = None
    encoder_enabled: bool = True
    # key -> "rw" (read-write) or "ro" (read-only). Empty: no auth, loopback only.
    api_keys: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 64 << 20
    max_batch: int = 1000
    max_top_k: int = 1000
    max_dim: int = 4096
    shard_timeout_s: float = 10.0
    # Dynamic batching on each shard replica: the next batch is whatever queued while the last one
    # ran (at most batch_max_size); batch_wait_s > 0 waits that long for company when it would be alone.
    batch_max_size: int = 64
    batch_wait_s: float = 0.0
    # Reranking after the merge: "none" or "exact" (re-score full-precision vectors; shards over-fetch).
    rerank: str = "none"
    overfetch: int = 4
    # Fractional CPU reservations: a 2-core machine must fit every replica.
    num_cpus_shard: float = 0.25
    num_cpus_other: float = 0.1
    # GPUs per shard replica when the cluster has GPUs; None: share them evenly.
    num_gpus_shard: float | None = None
    # CPU threads one shard replica's search may use (FAISS's OpenMP, torch). Ray pins a replica
    # with a fractional CPU reservation to one thread (OMP_NUM_THREADS=1), which leaves cores idle
    # under a batch; None: the machine's cores shared evenly by the shard replicas (at least 1).
    search_threads: int | None = None

    def shard_search_threads(self, cores: int | None = None) -> int:
        """Threads each shard replica searches with: ``search_threads``, or the cores shared evenly."""
        if self.search_threads is not None:
            return self.search_threads
        return max(1, (cores or os.cpu_count() or 1) // (self.shards * self.replicas))

    def __post_init__(self):
        for name in ("port", "shards", "replicas", "max_body_bytes", "max_batch", "max_top_k", "max_dim",
                     "batch_max_size", "overfetch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not 1 <= self.shards <= 256:
            raise ValueError(f"shards must be an int between 1 and 256, got {self.shards}")
        if not 1 <= self.replicas <= 64:
            raise ValueError(f"replicas must be between 1 and 64, got {self.replicas}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.search_threads is not None and (isinstance(self.search_threads, bool)
                                                or not isinstance(self.search_threads, int)
                                                or not 1 <= self.search_threads <= 1024):
            raise ValueError(f"search_threads must be an int between 1 and 1024 (or None), got {self.search_threads!r}")
        if self.rerank not in ("none", "exact"):
            raise ValueError(f"rerank must be 'none' or 'exact', got {self.rerank!r}")
        if not isinstance(self.api_keys, Mapping):
            raise TypeError(f"api_keys must map key -> 'rw' or 'ro', got {type(self.api_keys).__name__}")
        for k, role in self.api_keys.items():
            if role not in ("rw", "ro"):
                raise ValueError(f"api key roles are 'rw' or 'ro', got {role!r}")
            if not k or any(c.isspace() for c in k):
                raise ValueError("api keys must be non-empty and contain no whitespace")
        self.data_dir = str(Path(self.data_dir).expanduser().resolve())

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
             **overrides: Any) -> "ServeConfig":
        """Defaults, then the YAML file at ``path`` (keys as the field names), then environment
        (``GPUSEARCH_PORT=9000``, ``GPUSEARCH_API_KEYS=key:rw,key2:ro``), then ``overrides``."""
        values: dict[str, Any] = {}
        names = {f.name: f for f in dataclasses.fields(cls)}
        if path is not None:
            import yaml

            data = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path} must hold a YAML mapping of settings, got {type(data).__name__}")
            unknown = sorted(set(data) - set(names))
            if unknown:
                raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(names)}")
            values.update(data)
        env = os.environ if env is None else env
        for name, f in names.items():
            raw = env.get(_ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if name == "api_keys":
                values[name] = _parse_keys(raw)
            else:
                values[name] = _coerce(raw, _NONE_DEFAULT_TYPES.get(name) or type(f.default), name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields whose default is None: the type an environment value is read as.
_NONE_DEFAULT_TYPES = {"encoder": str, "num_gpus_shard": float, "search_threads": int}


def _parse_keys(raw: str) -> dict[str, str]:
    keys = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, _, role = part.partition(":")
        keys[key] = role or "rw"
    return keys


def _coerce(raw: str, kind: type, name: str):
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return kind(raw)
    except ValueError:
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise ValueError(f"{_ENV_PREFIX}{name.upper()} must be {article} {kind.__name__}, got {raw!r}") from None
