"""schemathesis against the served app's own ``/openapi.json``: every operation, valid and invalid
inputs, well over 1000 generated requests, and not one server error.

Runs on the shared ``served`` app (conftest). Generated collection names, namespaces and aliases
that the server would accept are rewritten to this test's own names (``fuzz-0`` .. ``fuzz-3``,
aliases ``fuzz-alias-0``/``-1``) before each request, so the fuzz never writes to, drops or
re-points a collection another test relies on (checked before and after); names the server must
refuse are sent as generated, so name validation is fuzzed too. Valid ("positive") requests get
their vectors fitted to their collection's dim and name one of vector/id/text/queries (a rule the
schema cannot state), so they reach the engine instead of stopping at validation.

The checks on every answer: status below 500; a 2xx body is JSON; any other answer is our error
``{"code", "message", "details"}`` with a 4xx status and a non-empty message.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import threading
import time
import zlib

import pytest

from conftest import RW_KEY

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from gpusearch.catalog import check_name  # noqa: E402

FUZZ_NAMES = [f"fuzz-{i}" for i in range(4)]
FUZZ_ALIASES = [f"fuzz-alias-{i}" for i in range(2)]
# Data-plane requests name a collection or, now and then, an alias (or a collection of that name).
NAMESPACES = FUZZ_NAMES + FUZZ_ALIASES[:1]
# A valid request's vectors are fitted to its collection's dim, so valid requests reach the engine
# (random lengths would almost never agree with each other and with the collection).
DIMS = {"fuzz-0": 2, "fuzz-1": 3, "fuzz-2": 5, "fuzz-3": 8}
NAMESPACED = ("/vectors/upsert", "/query", "/vectors/update", "/vectors/delete")
# Generated requests per operation and mode; operations with no inputs yield one case each.
EXAMPLES = {"positive": 60, "negative": 50}
MIN_CASES = 1000


def own_name(value, names=FUZZ_NAMES):
    """``value`` if the server must refuse it as a name (so refusal is fuzzed), else one of ``names``."""
    if not isinstance(value, str):
        return value
    try:
        check_name(value)
    except (TypeError, ValueError):
        return value
    return some_name(value, names)


def some_name(text: str, names=FUZZ_NAMES) -> str:
    """One of ``names``, picked by ``text`` (so a case names the same collection each time it runs)."""
    return names[zlib.crc32(text.encode("utf-8", "surrogatepass")) % len(names)]


def confine(case) -> None:
    """Rewrite every acceptable collection name, namespace or alias of ``case`` to one of ours; a
    request that leaves its namespace out (the default collection) gets one of ours too."""
    if isinstance(case.body, dict):
        for field in ("name", "collection"):
            if field in case.body:
                case.body[field] = own_name(case.body[field])
        if "namespace" in case.body:
            case.body["namespace"] = own_name(case.body["namespace"], NAMESPACES)
        elif case.path in NAMESPACED:
            case.body["namespace"] = some_name(json.dumps(case.body, sort_keys=True, default=repr), NAMESPACES)
    if case.path_parameters:
        if "name" in case.path_parameters:
            case.path_parameters["name"] = own_name(case.path_parameters["name"])
        if "alias" in case.path_parameters:
            case.path_parameters["alias"] = own_name(case.path_parameters["alias"], FUZZ_ALIASES)
        if "namespace" in case.path_parameters:  # at the root a namespace is a collection
            case.path_parameters["namespace"] = own_name(case.path_parameters["namespace"])
    if case.path in ("/vectors/fetch", "/vectors/list"):
        if case.query is None:
            case.query = {}
        if "namespace" in case.query:
            case.query["namespace"] = own_name(case.query["namespace"], NAMESPACES)
        else:
            case.query["namespace"] = some_name(repr(case.query), NAMESPACES)
        ids = case.query.get("ids")
        if isinstance(ids, list):  # a URL past the HTTP server's request-line limit (16 KiB) is refused by
            case.query["ids"] = [i[:40] if isinstance(i, str) else i for i in ids[:20]]  # uvicorn, not by us


def _fit(values, dim):
    if isinstance(values, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
        return (values + [1.0] * dim)[:dim]
    return values


def fit_dims(case) -> None:
    """Fit the vectors of a valid request to the dim of the collection it names. The fuzz collections are
    dense cosine ones without a keyword index, so a valid request to them sends no sparse values (an ``ip``
    collection's) and searches a text densely (no ``mode``/``fusion``, which need a ``bm25Field``)."""
    body = case.body
    if not isinstance(body, dict):
        return
    dim = DIMS.get(body.get("namespace") if case.path != "/collections" else body.get("name"))
    if dim is None:
        return
    if case.path == "/vectors/upsert" and isinstance(body.get("vectors"), list):
        for v in body["vectors"]:
            if isinstance(v, dict):
                v.pop("sparseValues", None)
                v["values"] = _fit(v.get("values") or [], dim)
    elif case.path == "/query":
        for name in ("sparseVector", "mode", "fusion"):
            body.pop(name, None)
        if "vector" in body:
            body["vector"] = _fit(body["vector"], dim)
        if isinstance(body.get("queries"), list):
            body["queries"] = [_fit(q, dim) for q in body["queries"]]
    elif case.path == "/vectors/update":
        body.pop("sparseValues", None)
        if "values" in body:
            body["values"] = _fit(body["values"], dim)
    elif case.path == "/collections" and case.method == "POST":
        body["dimension"] = dim


# A valid request names exactly one of these (the schema cannot say so); the others are dropped.
ONE_OF = {"/query": ("vector", "id", "text", "queries"), "/vectors/delete": ("ids", "filter", "deleteAll"),
          "/vectors/update": ("id", "filter")}
ONE_OF_DEFAULT = {"/query": {"vector": [1.0]}, "/vectors/delete": {"ids": ["0"]}, "/vectors/update": {"id": "0"}}


def one_of(case) -> None:
    fields = ONE_OF.get(case.path)
    if fields and isinstance(case.body, dict):
        given = [f for f in fields if case.body.get(f) not in (None, False)]
        for f in given[1:]:
            del case.body[f]
        if not given:
            case.body.update(ONE_OF_DEFAULT[case.path])


def check_answer(case, response) -> str | None:
    """What is wrong with ``response`` to ``case``, or None."""
    status = response.status_code
    if status >= 500:
        return f"server error {status}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        ctype = response.headers.get("content-type") or ""
        ctype = ctype[0] if isinstance(ctype, list) else ctype  # schemathesis keeps header values as lists
        if 200 <= status < 300 and ctype.startswith("text/plain"):  # /metrics
            return None
        return f"status {status} with a body that is not JSON: {response.text[:200]!r}"
    if 200 <= status < 300:
        return None
    if not 400 <= status < 500:
        return f"unexpected status {status}"
    if not isinstance(body, dict) or set(body) != {"code", "message", "details"}:
        return f"status {status} without our error shape: {str(body)[:200]}"
    if not isinstance(body["message"], str) or not body["message"]:
        return f"status {status} with an empty message"
    return None


def fuzz(base_url: str, key: str, examples=EXAMPLES, workers: int = 4):
    """Generate requests for every operation of the served schema, valid ones ("positive") and ones
    that break it ("negative"), and send them from ``workers`` threads as they are generated.
    Returns (Counter of requests by operation and status, failures as (operation, request, problem),
    Counter of refusal messages)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    local = threading.local()
    lock = threading.Lock()
    sent = collections.Counter()
    messages = collections.Counter()  # (operation, status, message) of refusals: what the fuzz ran into
    failures = []

    def send(label, case):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            response = case.call(base_url=base_url, session=session, headers={"Api-Key": key}, timeout=60)
        except requests.RequestException as e:
            with lock:
                failures.append((label, _describe(case), f"no answer: {e!r}"))
            return
        problem = check_answer(case, response)
        with lock:
            sent[(label, response.status_code)] += 1
            if problem:
                failures.append((label, _describe(case), problem))
            elif response.status_code >= 400:
                messages[(label, response.status_code, response.json()["message"][:70])] += 1

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = []
        operations = sorted((r.ok() for r in schema.get_all_operations()), key=_order)
        for operation in operations:
            label = f"{operation.method.upper()} {operation.path}"
            for mode_name, n in examples.items():
                mode = schemathesis.GenerationMode(mode_name)

                @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def generate(case):
                    confine(case)
                    if mode_name == "positive":
                        one_of(case)
                        fit_dims(case)
                    pending.append(pool.submit(send, label, case))

                try:
                    generate()
                except Unsatisfiable:
                    pass  # nothing in this operation's schema to break
        for f in pending:
            f.result()
    return sent, failures, messages


def _order(operation) -> tuple:
    """Create collections first and drop them last, so that each gets to do real work."""
    first = operation.method.upper() == "POST" and operation.path == "/collections"
    last = operation.method.upper() == "DELETE"
    return (not first, last, operation.path, operation.method)


def drop_ours(base: str) -> None:
    """Drop this test's aliases and collections (before the fuzz, and after: the shared app stays tidy)."""
    headers = {"Api-Key": RW_KEY}
    listing = requests.get(f"{base}/collections", headers=headers, timeout=60).json()
    for alias in set(listing["aliases"]) & set(FUZZ_NAMES + FUZZ_ALIASES):
        assert requests.delete(f"{base}/aliases/{alias}", headers=headers, timeout=60).status_code == 200
    for name in set(listing["collections"]) & set(FUZZ_NAMES + FUZZ_ALIASES):
        assert requests.delete(f"{base}/collections/{name}", headers=headers, timeout=60).status_code == 200


def _describe(case) -> str:
    try:
        return case.as_curl_command()[:700]
    except Exception:  # noqa: BLE001 - a description, not a check
        return repr(case)[:700]


def _others(base: str) -> dict:
    """Every collection and alias not ours, with its record count and sequence number."""
    listing = requests.get(f"{base}/collections", headers={"Api-Key": RW_KEY}, timeout=60).json()
    return {"collections": {n: (c["records"], c["sequence"]) for n, c in listing["collections"].items()
                            if n not in FUZZ_NAMES + FUZZ_ALIASES},
            "aliases": {a: t for a, t in listing["aliases"].items() if a not in FUZZ_NAMES + FUZZ_ALIASES}}


def test_schemathesis_finds_no_server_error(served):
    """At least 1000 generated requests across every operation of /openapi.json, all answered without a
    server error and with our JSON error shape whenever refused; the collections of other tests on the
    shared app are untouched."""
    base = f"http://{served.host}:{served.port}"
    before = _others(base)
    drop_ours(base)
    t0 = time.perf_counter()
    try:
        sent, failures, messages = fuzz(base, RW_KEY)
    finally:
        seconds = time.perf_counter() - t0
        drop_ours(base)
    total = sum(sent.values())
    operations = {op for op, _ in sent}
    summary = {f"{op} -> {status}": n for (op, status), n in sorted(sent.items())}
    print(f"schemathesis: {total} requests over {len(operations)} operations in {seconds:.1f}s: {summary}")
    assert not failures, f"{len(failures)} bad answers; the first ones:\n" + "\n".join(
        f"{op}: {problem}\n    {case}" for op, case, problem in failures[:8])
    assert total >= MIN_CASES, f"only {total} requests sent: {summary}"
    schema_ops = {f"{m.upper()} {p}" for p, ms in requests.get(f"{base}/openapi.json").json()["paths"].items()
                  for m in ms}
    assert operations == schema_ops, f"operations never exercised: {schema_ops - operations}"
    # Valid requests reached real work, not only validation: writes and reads succeeded.
    for op in ("POST /vectors/upsert", "POST /query", "GET /vectors/fetch", "POST /vectors/update",
               "POST /vectors/delete", "POST /collections", "DELETE /collections/{name}", "PUT /aliases/{alias}"):
        assert sent[(op, 200)] > 0, f"no {op} answered 200: {summary}"
    assert _others(base) == before, "the fuzz changed a collection or alias that is not its own"


class _Answer:
    def __init__(self, status, body, ctype="application/json"):
        self.status_code, self.text, self.headers = status, body, {"content-type": [ctype]}

    def json(self):
        return json.loads(self.text)


def test_the_checks_catch_what_they_must():
    """The answer checks are not vacuous: a 5xx, FastAPI's own error shape, an empty message and a
    non-JSON refusal are each reported; our 4xx error, a JSON 2xx and /metrics text pass."""
    assert "server error 500" in check_answer(None, _Answer(500, '{"code": 13, "message": "x", "details": []}'))
    assert "server error 502" in check_answer(None, _Answer(502, "Bad Gateway", "text/plain"))
    assert "error shape" in check_answer(None, _Answer(422, '{"detail": [{"loc": ["body"]}]}'))
    assert "empty message" in check_answer(None, _Answer(400, '{"code": 3, "message": "", "details": []}'))
    assert "not JSON" in check_answer(None, _Answer(400, "Invalid HTTP request", "text/plain"))
    assert check_answer(None, _Answer(404, '{"code": 5, "message": "no such", "details": []}')) is None
    assert check_answer(None, _Answer(200, '{"matches": []}')) is None
    assert check_answer(None, _Answer(200, "# HELP x", "text/plain; version=0.0.4")) is None
