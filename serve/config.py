"""Settings of a gpusearch Serve application: defaults, a YAML file, then ``GPUSEARCH_*`` environment.

>>> cfg = ServeConfig.load(None, env={"GPUSEARCH_API_KEYS": "s3cret:rw,viewer:ro,docs-bot:rw:docs|faq"})
>>> cfg.api_keys
{'s3cret': 'rw', 'viewer': 'ro', 'docs-bot': {'role': 'rw', 'collections': ['docs', 'faq']}}
>>> cfg.key_grants()['docs-bot'] == KeyGrant("rw", frozenset({"docs", "faq"}))
True
>>> ServeConfig(shards=0)
Traceback (most recent call last):
...
ValueError: shards must be an int between 1 and 256, got 0
>>> ServeConfig(max_top_k=20000)
Traceback (most recent call last):
...
ValueError: max_top_k 20000 is above the engine's limit MAX_TOP_K 10000; set max_top_k to at most 10000
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gpusearch.encoders import PRECISIONS
from gpusearch.request import MAX_TOP_K

__all__ = ["ServeConfig", "KeyGrant", "is_loopback", "parse_key_grant"]

_ENV_PREFIX = "GPUSEARCH_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class KeyGrant:
    """What one API key may do: ``role`` "rw" or "ro"; ``collections`` None for every collection
    (and collection/alias management when rw), else the names (collections or aliases) it may use."""

    role: str
    collections: frozenset | None = None

    @property
    def scoped(self) -> bool:
        return self.collections is not None


def parse_key_grant(value: Any, key: str = "?") -> KeyGrant:
    """One ``api_keys`` value: ``"rw"``, ``"ro"`` or ``{"role": "ro", "collections": ["docs", "faq"]}``."""
    from gpusearch.catalog import check_name

    where = f"api key {key[:2]}...: " if len(key) > 4 else "api key: "
    if isinstance(value, str):
        role, collections = value, None
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"role", "collections"})
        if unknown:
            raise ValueError(f"{where}unknown fields {unknown}; a key takes 'role' and optional 'collections'")
        role, collections = value.get("role", "rw"), value.get("collections")
        if collections is not None:
            if isinstance(collections, str) or not isinstance(collections, (list, tuple, set, frozenset)):
                raise ValueError(f"{where}collections must be a list of collection or alias names, "
                                 f"got {type(collections).__name__}")
            if not collections:
                raise ValueError(f"{where}collections is empty; list the collections the key may use, "
                                 f"or leave collections out for a key to every collection")
            collections = frozenset(check_name(c) for c in collections)
    else:
        raise ValueError(f"{where}expected 'rw', 'ro' or {{role, collections}}, got {type(value).__name__}")
    if role not in ("rw", "ro"):
        raise ValueError(f"api key roles are 'rw' or 'ro', got {role!r}")
    return KeyGrant(role, collections)


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
    # Build and default-search settings of collections made with `index` (e.g. {"efConstruction": 200});
    # None: the engine's defaults (gpusearch.backends.options).
    index_options: dict[str, int] | None = None
    device: str = "auto"
    fsync: bool = True
    # Text queries: a sentence-transformers model folder, or None for the packaged MiniLM.
    encoder: str | None = None
    encoder_enabled: bool = True
    # What the encoder's bulk calls (ingest, the demo corpus; not queries) compute in on a CPU: "auto"
    # (bfloat16 where the CPU has AMX, else float32), "float32" or "bfloat16" (gpusearch.encoders).
    encoder_precision: str = "auto"
    # key -> "rw" (read-write) or "ro" (read-only), or {"role": "ro", "collections": ["docs", "faq"]}
    # for a key limited to those collections/aliases. Empty: no auth, loopback only.
    api_keys: dict[str, Any] = field(default_factory=dict)
    # Request limits; each refusal is a 4xx naming the limit.
    max_body_bytes: int = 64 << 20      # HTTP request body, declared or streamed (413)
    max_batch: int = 1000               # vectors per upsert, queries per request, ids per fetch/delete
    max_top_k: int = MAX_TOP_K          # topK / k on every edge; at most the engine's MAX_TOP_K
    max_dim: int = 4096
    max_id_length: int = 512            # characters in a record id
    max_metadata_bytes: int = 40960     # one record's metadata as compact JSON (Pinecone's 40 KB)
    max_filter_bytes: int = 65536       # a filter as compact JSON
    max_filter_depth: int = 16          # nesting of objects/lists in a filter
    shard_timeout_s: float = 10.0
    # Dynamic batching on each shard replica: the next batch is whatever queued while the last one
    # ran (at most batch_max_size); batch_wait_s > 0 waits that long for company when it would be alone.
    batch_max_size: int = 64
    batch_wait_s: float = 0.0
    # Reranking after the merge: "none" or "exact" (re-score full-precision vectors; shards over-fetch).
    rerank: str = "none"
    # A cross-encoder (a local sentence-transformers CrossEncoder folder) for the records API's rerank
    # and POST /rerank; None: no model reranking.
    reranker: str | None = None
    # Pinecone model names this server answers with its own models: name -> "encoder" or "reranker",
    # e.g. {"multilingual-e5-large": "encoder", "bge-reranker-v2-m3": "reranker"}. A request naming
    # any other model than these and the server's own is refused (it would get another model's vectors).
    model_aliases: dict[str, str] = field(default_factory=dict)
    # Backups over HTTP (POST /collections/{name}/backup and /restore, GET /backups): the location a
    # request that names none uses (a path or URI; None: "<data_dir>-backups"), and the other locations
    # (paths or URI prefixes) a request may name. Anything else is refused, so that an API key cannot
    # make the server write to or read from places its operator did not choose.
    backup_uri: str | None = None
    backup_locations: list[str] = field(default_factory=list)
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
    # Stopping (SIGTERM/SIGINT to `gpusearch serve`): new requests get 503 and in-flight ones have
    # this many seconds to finish before Ray stops; a second signal stops at once.
    drain_grace_s: float = 5.0
    # How shard replicas follow the Writer. "shared": they read the Writer's data_dir (one machine, or a
    # file system every node mounts). "ray": each replica keeps its own copy of its shard's files, in
    # replica_dir on its node (None: the node's temporary directory), synced from the Writer through Ray
    # on every query (gpusearch.mirror), so replicas run on nodes that share no file system with it.
    replication: str = "shared"
    replica_dir: str | None = None
    # Ray resources each Writer and Aggregator replica asks for, and each shard replica: custom resources
    # pin them to nodes, e.g. writer_resources {"gpusearch_writer": 1} on the node that holds data_dir.
    writer_resources: dict[str, float] = field(default_factory=dict)
    shard_resources: dict[str, float] = field(default_factory=dict)
    # Durability beyond the Writer's node (gpusearch.durable; needs replication "ray"): every write is
    # acknowledged only once it is also in an object at this storage URI (a path every Writer node sees,
    # file://, s3://bucket/prefix, gs://...), collections are snapshot there, and a Writer that starts on
    # any node (its node died) takes a new lease term, fencing the old one, and rebuilds every collection
    # from it. None: the Writer's data_dir is the only copy (the embedded default).
    storage_uri: str | None = None
    # Logs: Serve's per-replica files (log_dir, or the Ray session's logs/serve/), one line per
    # request at INFO from the Aggregator; "text" or "json" (one JSON object a line, for log shippers).
    log_level: str = "INFO"
    log_format: str = "text"
    log_dir: str | None = None

    def shard_search_threads(self, cores: int | None = None) -> int:
        """Threads each shard replica searches with: ``search_threads``, or the cores shared evenly."""
        if self.search_threads is not None:
            return self.search_threads
        return max(1, (cores or os.cpu_count() or 1) // (self.shards * self.replicas))

    def key_grants(self) -> dict[str, KeyGrant]:
        """Each API key with its role and scope."""
        return {k: parse_key_grant(v, k) for k, v in self.api_keys.items()}

    def __post_init__(self):
        if self.index_options is not None:
            from gpusearch.backends.options import OPTIONS_BY_FAMILY

            # Checked against the index's family once a collection is made (its dim is known then);
            # here: a mapping of known option names to ints, so a typo fails at start-up.
            known = sorted({o for opts in OPTIONS_BY_FAMILY.values() for o in opts})
            if not isinstance(self.index_options, Mapping) or any(k not in known for k in self.index_options):
                raise ValueError(f"index_options must map option names ({', '.join(known)}) to ints, "
                                 f"got {self.index_options!r}")
            self.index_options = dict(self.index_options)
        for name in ("port", "shards", "replicas", "max_body_bytes", "max_batch", "max_top_k", "max_dim",
                     "batch_max_size", "overfetch", "max_id_length", "max_metadata_bytes", "max_filter_bytes",
                     "max_filter_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        for name in ("max_body_bytes", "max_batch", "max_top_k", "max_dim", "max_id_length", "max_metadata_bytes",
                     "max_filter_bytes", "max_filter_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_top_k > MAX_TOP_K:
            raise ValueError(f"max_top_k {self.max_top_k} is above the engine's limit MAX_TOP_K {MAX_TOP_K}; "
                             f"set max_top_k to at most {MAX_TOP_K}")
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
        if isinstance(self.drain_grace_s, bool) or not isinstance(self.drain_grace_s, (int, float)) \
                or not 0 <= self.drain_grace_s <= 3600:
            raise ValueError(f"drain_grace_s must be a number of seconds between 0 and 3600, got {self.drain_grace_s!r}")
        self.drain_grace_s = float(self.drain_grace_s)
        level = str(self.log_level).upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        self.log_level = level
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        if self.log_dir is not None:
            self.log_dir = str(Path(self.log_dir).expanduser().resolve())
        if self.encoder_precision not in PRECISIONS:
            choices = ", ".join(repr(p) for p in PRECISIONS[:-1]) + f" or {PRECISIONS[-1]!r}"
            raise ValueError(f"encoder_precision must be {choices}, got {self.encoder_precision!r}")
        if self.rerank not in ("none", "exact"):
            raise ValueError(f"rerank must be 'none' or 'exact', got {self.rerank!r}")
        if not isinstance(self.model_aliases, Mapping) or not all(
                isinstance(k, str) and v in ("encoder", "reranker") for k, v in self.model_aliases.items()):
            raise ValueError(f"model_aliases must map model names to 'encoder' or 'reranker', got "
                             f"{self.model_aliases!r}")
        self.model_aliases = dict(self.model_aliases)
        if self.reranker is not None:
            self.reranker = str(Path(self.reranker).expanduser())
        if not isinstance(self.api_keys, Mapping):
            raise TypeError(f"api_keys must map key -> 'rw', 'ro' or {{role, collections}}, "
                            f"got {type(self.api_keys).__name__}")
        keys = {}
        for k, value in self.api_keys.items():
            if not isinstance(k, str) or not k or any(c.isspace() for c in k):
                raise ValueError("api keys must be non-empty strings and contain no whitespace")
            grant = parse_key_grant(value, k)
            # Plain data (it travels to every replica); an unscoped key keeps the short form.
            keys[k] = grant.role if not grant.scoped else {"role": grant.role,
                                                           "collections": sorted(grant.collections)}
        self.api_keys = keys
        self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        if self.replication not in ("shared", "ray"):
            raise ValueError(f"replication must be 'shared' or 'ray', got {self.replication!r}")
        if self.replica_dir is not None:
            self.replica_dir = str(Path(self.replica_dir).expanduser())
        for name in ("writer_resources", "shard_resources"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                    for k, v in value.items()):
                raise ValueError(f"{name} must map Ray resource names to positive numbers, got {value!r}")
            setattr(self, name, {k: float(v) for k, v in value.items()})
        if self.storage_uri is not None:
            if not isinstance(self.storage_uri, str) or not self.storage_uri:
                raise ValueError(f"storage_uri must be a path or URI such as s3://bucket/prefix, got "
                                 f"{self.storage_uri!r}")
            if self.replication != "ray":
                raise ValueError("storage_uri needs replication 'ray': a Writer rebuilt on another node has its "
                                 "own directory, which shard replicas cannot read (got replication "
                                 f"{self.replication!r})")
            if "://" not in self.storage_uri:
                self.storage_uri = str(Path(self.storage_uri).expanduser().resolve())
                if Path(self.storage_uri).is_relative_to(self.data_dir):
                    raise ValueError(f"storage_uri must be outside data_dir ({self.data_dir}), got {self.storage_uri!r}")
        if self.backup_uri is None:
            self.backup_uri = self.data_dir + "-backups"
        elif not isinstance(self.backup_uri, str) or not self.backup_uri:
            raise ValueError(f"backup_uri must be a path or URI, got {self.backup_uri!r}")
        if isinstance(self.backup_locations, str) or not all(
                isinstance(x, str) and x for x in self.backup_locations):
            raise ValueError(f"backup_locations must be a list of paths or URI prefixes, got {self.backup_locations!r}")
        self.backup_locations = list(self.backup_locations)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
             **overrides: Any) -> "ServeConfig":
        """Defaults, then the YAML file at ``path`` (keys as the field names), then environment
        (``GPUSEARCH_PORT=9000``, ``GPUSEARCH_API_KEYS=key:rw,key2:ro,key3:ro:docs|faq``), then ``overrides``."""
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
            elif name == "backup_locations":  # comma-separated
                values[name] = [x.strip() for x in raw.split(",") if x.strip()]
            elif name in ("writer_resources", "shard_resources"):  # JSON: '{"gpusearch_writer": 1}'
                try:
                    values[name] = json.loads(raw)
                except ValueError:
                    raise ValueError(f"{_ENV_PREFIX}{name.upper()} must be a JSON object such as "
                                     f"'{{\"gpusearch_writer\": 1}}', got {raw!r}") from None
            elif name == "index_options":  # JSON: GPUSEARCH_INDEX_OPTIONS='{"efConstruction": 200}'
                try:
                    values[name] = json.loads(raw)
                except ValueError:
                    raise ValueError(f"{_ENV_PREFIX}INDEX_OPTIONS must be a JSON object such as "
                                     f"'{{\"efConstruction\": 200}}', got {raw!r}") from None
            else:
                values[name] = _coerce(raw, _NONE_DEFAULT_TYPES.get(name) or type(f.default), name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields whose default is None: the type an environment value is read as.
_NONE_DEFAULT_TYPES = {"backup_uri": str, "storage_uri": str, "replica_dir": str, "encoder": str, "num_gpus_shard": float, "search_threads": int, "log_dir": str}


def _parse_keys(raw: str) -> dict[str, Any]:
    """``key:rw,key2:ro,key3:ro:docs|faq``: comma-separated ``key[:role[:collection|collection...]]``."""
    keys: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, _, rest = part.partition(":")
        role, _, scope = rest.partition(":")
        if not key:
            raise ValueError(f"{_ENV_PREFIX}API_KEYS: an entry has no key before ':' ({part[:1]}...)")
        if key in keys:
            raise ValueError(f"{_ENV_PREFIX}API_KEYS names the key {key[:2]}... twice")
        if ":" in scope:
            raise ValueError(f"{_ENV_PREFIX}API_KEYS entries are key:role or key:role:coll1|coll2; "
                             f"an entry for {key[:2]}... has more ':'")
        role = role or "rw"
        if scope:
            keys[key] = {"role": role, "collections": [c.strip() for c in scope.split("|") if c.strip()]}
        else:
            keys[key] = role
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
