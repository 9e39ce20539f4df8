"""The design tvs replaces, rebuilt for the benchmark suite: one LangChain FAISS store per user
under user_data/{tenant}/vector_store/faiss_index, save_local after each add, load_local on a
pool miss, and a thread-safe LRU pool with a TTL (size 10, TTL 3600 s) keeping hit, miss,
eviction and expiration counts, as the old app's VectorStoreManager did.

    python baseline.py DATASET_DIR WORK_DIR MEASURE...

DATASET_DIR is what `cargo bench --bench suite` wrote (meta.json, {tenant}.f32,
{tenant}.queries.f32, {tenant}.truth.json). Prints one JSON object per measure.
"""

import json
import os
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from langchain_community.vectorstores import FAISS
from langchain_core.embeddings import Embeddings


class NoEmbeddings(Embeddings):
    """The benchmark gives vectors; a query text never reaches the model."""

    def embed_documents(self, texts):
        raise RuntimeError("vectors are given")

    def embed_query(self, text):
        raise RuntimeError("vectors are given")


EMBEDDINGS = NoEmbeddings()


class VectorStoreManager:
    """LRU + TTL pool of open per-user FAISS stores (the old app's design)."""

    def __init__(self, root: Path, pool_size=10, ttl_seconds=3600):
        self.root = root
        self.pool_size = pool_size
        self.ttl = ttl_seconds
        self.lock = threading.Lock()
        self.pool: OrderedDict[str, tuple[FAISS, float]] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "expirations": 0}

    def path(self, tenant):
        return self.root / tenant / "vector_store" / "faiss_index"

    def get(self, tenant) -> FAISS:
        with self.lock:
            now = time.monotonic()
            entry = self.pool.get(tenant)
            if entry is not None and now - entry[1] <= self.ttl:
                self.pool.move_to_end(tenant)
                self.pool[tenant] = (entry[0], now)
                self.stats["hits"] += 1
                return entry[0]
            if entry is not None:
                del self.pool[tenant]
                self.stats["expirations"] += 1
            self.stats["misses"] += 1
            store = FAISS.load_local(str(self.path(tenant)), EMBEDDINGS, allow_dangerous_deserialization=True)
            self.pool[tenant] = (store, now)
            while len(self.pool) > self.pool_size:
                self.pool.popitem(last=False)
                self.stats["evictions"] += 1
            return store

    def add(self, tenant, texts, vectors, metadatas, ids):
        store = self.get(tenant)
        store.add_embeddings(list(zip(texts, vectors)), metadatas=metadatas, ids=ids)
        store.save_local(str(self.path(tenant)))

    def hit_rate(self):
        total = self.stats["hits"] + self.stats["misses"]
        return self.stats["hits"] / total if total else 0.0


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load(dataset: Path):
    meta = json.loads((dataset / "meta.json").read_text())
    dims = meta["dims"]

    def vectors(name):
        return np.fromfile(dataset / name, dtype="<f4").reshape(-1, dims)

    return meta, vectors


def texts_for(tenant, n):
    return [f"document {i} of {tenant}" for i in range(n)]


def ingest(meta, vectors, root):
    total, seconds = 0, 0.0
    for t in meta["tenants"]:
        tenant, n = t["id"], t["docs"]
        data = vectors(f"{tenant}.f32")
        start = time.perf_counter()
        store = FAISS.from_embeddings(
            list(zip(texts_for(tenant, n), data.tolist())),
            EMBEDDINGS,
            metadatas=[{"i": i} for i in range(n)],
            ids=[f"d{i}" for i in range(n)],
        )
        store.save_local(str(root / tenant / "vector_store" / "faiss_index"))
        seconds += time.perf_counter() - start
        total += n
    return {"measure": "ingest", "docs": total, "docs_per_s": total / seconds}


def cold_open(meta, vectors, root, k, limit=20):
    """Load + the first query, as a request to a tenant not in the pool costs."""
    times = []
    for t in meta["tenants"][:limit]:
        path = root / t["id"] / "vector_store" / "faiss_index"
        query = vectors(f"{t['id']}.queries.f32")[0].tolist()
        start = time.perf_counter()
        store = FAISS.load_local(str(path), EMBEDDINGS, allow_dangerous_deserialization=True)
        store.similarity_search_with_score_by_vector(query, k=k)
        times.append(time.perf_counter() - start)
    return {"measure": "cold_open", "p50_ms": float(np.median(times)) * 1e3, "opens": len(times)}


def warm_search(meta, vectors, root, k, limit=20):
    manager = VectorStoreManager(root)
    latencies, found, wanted = [], 0, 0
    for t in meta["tenants"][:limit]:
        tenant = t["id"]
        store = manager.get(tenant)
        queries = vectors(f"{tenant}.queries.f32")
        truth = json.loads((Path(meta["dataset"]) / f"{tenant}.truth.json").read_text())
        store.similarity_search_with_score_by_vector(queries[0].tolist(), k=k)  # warm
        for q, want in zip(queries, truth):
            start = time.perf_counter()
            hits = store.similarity_search_with_score_by_vector(q.tolist(), k=k)
            latencies.append(time.perf_counter() - start)
            found += len({d.id for d, _ in hits} & set(want[:k]))
            wanted += min(k, len(want))
    lat = np.array(latencies)
    return {
        "measure": "warm_search",
        "qps": len(lat) / lat.sum(),
        "p50_ms": float(np.percentile(lat, 50)) * 1e3,
        "p99_ms": float(np.percentile(lat, 99)) * 1e3,
        "recall": found / wanted,
        "queries": len(lat),
    }


def warm_search_2(meta, vectors, root, k, limit=20):
    """QPS of two client threads sharing the queries of the warm search (FAISS releases the
    GIL inside its search)."""
    manager = VectorStoreManager(root)
    work = []
    for t in meta["tenants"][:limit]:
        store = manager.get(t["id"])
        queries = vectors(f"{t['id']}.queries.f32")
        store.similarity_search_with_score_by_vector(queries[0].tolist(), k=k)  # warm
        work.extend((store, q.tolist()) for q in queries)

    def client(part):
        for store, q in part:
            store.similarity_search_with_score_by_vector(q, k=k)

    threads = [threading.Thread(target=client, args=(work[i::2],)) for i in range(2)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"measure": "warm_search_2", "qps": len(work) / (time.perf_counter() - start)}


def writes(meta, vectors, root, count=200):
    manager = VectorStoreManager(root)
    tenant = meta["tenants"][0]["id"]
    data = vectors(f"{tenant}.queries.f32")
    manager.get(tenant)
    start = time.perf_counter()
    for i in range(count):
        v = data[i % len(data)].tolist()
        manager.add(tenant, [f"write {i}"], [v], [{"w": i}], [f"w{i}"])
    return {"measure": "writes", "writes_per_s": count / (time.perf_counter() - start), "writes": count}


def memory(meta, root, limit=20):
    # One load first, so one-time costs (lazy imports, code pages) are not charged to the
    # tenants; tvs warms up the same way.
    first = root / meta["tenants"][0]["id"] / "vector_store" / "faiss_index"
    del_me = FAISS.load_local(str(first), EMBEDDINGS, allow_dangerous_deserialization=True)
    del del_me
    before = rss_bytes()
    stores = []
    raw = 0
    for t in meta["tenants"][:limit]:
        stores.append(FAISS.load_local(str(root / t["id"] / "vector_store" / "faiss_index"), EMBEDDINGS,
                                       allow_dangerous_deserialization=True))
        raw += t["docs"] * meta["dims"] * 4
    return {"measure": "memory", "rss_over_raw": (rss_bytes() - before) / raw, "tenants": len(stores)}


def zipf(meta, vectors, root, k):
    manager = VectorStoreManager(root, pool_size=meta.get("baseline_pool_size", 10))
    queries = {}
    for index in meta["zipf_accesses"]:
        tenant = meta["tenants"][index]["id"]
        store = manager.get(tenant)
        if tenant not in queries:
            queries[tenant] = vectors(f"{tenant}.queries.f32")[0].tolist()
        store.similarity_search_with_score_by_vector(queries[tenant], k=k)
    return {"measure": "zipf", "hit_rate": manager.hit_rate(), **manager.stats}


def main():
    dataset, work = Path(sys.argv[1]), Path(sys.argv[2])
    meta, vectors = load(dataset)
    meta["dataset"] = str(dataset)
    root = work / "user_data"
    k = meta["k"]
    for measure in sys.argv[3:]:
        if measure == "ingest":
            result = ingest(meta, vectors, root)
        elif measure == "cold_open":
            result = cold_open(meta, vectors, root, k)
        elif measure == "warm_search_2":
            result = warm_search_2(meta, vectors, root, k)
        elif measure == "warm_search":
            result = warm_search(meta, vectors, root, k)
        elif measure == "writes":
            result = writes(meta, vectors, root)
        elif measure == "memory":
            result = memory(meta, root)
        elif measure == "zipf":
            result = zipf(meta, vectors, root, k)
        else:
            raise SystemExit(f"unknown measure {measure}")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
