"""Prometheus metrics: RPC counts and latencies, plus encoder, index and cache state read on scrape.

Each server owns its `CollectorRegistry` (never the process-global one), so several servers in
one process keep separate figures. RPC metrics are recorded by `server/observability.py`; the
state of the encoder pool, the index and the user cache is not copied into gauges but read when
Prometheus scrapes, from the same sources `Admin.Info` uses, so the two never disagree.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bertrec.errors import WorkerLost

logger = logging.getLogger(__name__)

# Seconds; from a cached lookup (sub-millisecond) to a large catalogue upsert.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
STATE_TIMEOUT_S = 10.0  # > the pool's 5 s per-replica probe; past it a scrape reports RPC metrics only


class ServerMetrics:
    """The metrics of one server and, optionally, the HTTP endpoint that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        rpc_labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.handled = Counter(
            "bertrec_grpc_server_handled",
            "RPCs completed, by status code.",
            [*rpc_labels, "grpc_code"],
            registry=self.registry,
        )
        self.handling = Histogram(
            "bertrec_grpc_server_handling_seconds",
            "RPC duration from the call's arrival to its status, in seconds.",
            rpc_labels,
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "bertrec_stage_seconds",
            "Time an RPC spent in each stage of its work (user, encode, rank, stream, ...), in seconds.",
            ["grpc_method", "stage"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        # Labelled children by label values: prometheus_client's labels() validates and locks on
        # every call, a few microseconds each, several times per RPC.
        self._children: dict[tuple, Any] = {}
        self._state: StateCollector | None = None
        self._http: Any = None
        self._http_thread: threading.Thread | None = None

    def observe_rpc(self, method: str, rpc_type: str, code: str, seconds: float, stages_ms: dict[str, float]) -> None:
        service, name = split_method(method)
        self._child(self.handled, service, name, rpc_type, code).inc()
        self._child(self.handling, service, name, rpc_type).observe(seconds)
        for stage, ms in stages_ms.items():
            self._child(self.stages, name, stage).observe(ms / 1000.0)

    def _child(self, metric: Any, *labels: str) -> Any:
        # Label values are bounded: method names are the server's own (unknown ones are folded
        # into "/unknown/unknown" before this), stage names and status codes are fixed sets.
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def watch(self, state: Any, loop: asyncio.AbstractEventLoop) -> None:
        """Report `state` (a ServiceState) on every scrape, read on `loop`, the server's event loop."""
        if self._state is None:
            self._state = StateCollector(state, loop)
            self.registry.register(self._state)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint (a daemon thread); returns the bound port."""
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._http.server_port)
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def split_method(method: str) -> tuple[str, str]:
    """'/bertrec.v1.Recommender/Recommend' -> ('bertrec.v1.Recommender', 'Recommend')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or "unknown"


class StateCollector(Collector):
    """Encoder replicas, queues and batches, index size and the user-cache hit rate, live."""

    def __init__(self, state: Any, loop: asyncio.AbstractEventLoop):
        self.state = state
        self.loop = loop

    def describe(self) -> list[Metric]:
        return []  # the metrics depend on the live state; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        yield GaugeMetricFamily(
            "bertrec_ready",
            "1 once the model and index are loaded and the service answers.",
            value=1.0 if snapshot is not None else 0.0,
        )
        if snapshot is not None:
            yield from _state_metrics(snapshot)

    def _snapshot(self) -> dict[str, Any] | None:
        if not self.state.ready or self.loop.is_closed() or not self.loop.is_running():
            return None
        try:
            asyncio.get_running_loop()
            return None  # called on an event loop: waiting for one here could deadlock it
        except RuntimeError:
            pass
        try:
            future = asyncio.run_coroutine_threadsafe(self._read(), self.loop)
            return future.result(STATE_TIMEOUT_S)
        except Exception:
            logger.warning("metrics scrape could not read the service state", exc_info=True)
            return None

    async def _read(self) -> dict[str, Any]:
        state = self.state
        index = state.catalog.index
        try:
            breadth = await asyncio.to_thread(index.search_breadth) if index is not None else {}
        except WorkerLost:  # a lost shard: the rest of the state still reports
            breadth = {}
        configured = state.config.index
        return {
            "model": state.pool.model_name,
            "replicas": await state.pool.info(),
            "coalescing": state.pool.coalescing,
            "index_size": len(index) if index is not None else 0,
            "index_type": getattr(index, "factory", ""),
            "index_device": getattr(index, "device", ""),
            "index_search": [(name, "set" if getattr(configured, name) else "auto", v) for name, v in breadth.items()],
            "cache_hits": state.profiles.hits,
            "cache_misses": state.profiles.misses,
            "cache_hit_rate": state.profiles.hit_rate,
        }


def _state_metrics(s: dict[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("bertrec_model_info", "The served encoder model (value 1).", labels=["model"])
    info.add_metric([s["model"]], 1.0)
    yield info

    replicas = s["replicas"]
    yield GaugeMetricFamily(
        "bertrec_encoder_replicas", "Encoder replicas the pool spreads work over.", value=len(replicas)
    )
    up = GaugeMetricFamily(
        "bertrec_encoder_replica_up", "1 when the replica answers, 0 when it is down.", labels=["replica", "device"]
    )
    queue = GaugeMetricFamily(
        "bertrec_encoder_queue_depth", "Texts queued in the replica's batcher.", labels=["replica"]
    )
    texts = CounterMetricFamily("bertrec_encoder_texts", "Texts the replica has encoded.", labels=["replica"])
    batches = CounterMetricFamily(
        "bertrec_encoder_batches", "Model calls (batches) the replica has made.", labels=["replica"]
    )
    mean = GaugeMetricFamily(
        "bertrec_encoder_mean_batch_size", "Texts per batch since the replica started.", labels=["replica"]
    )
    expired = CounterMetricFamily(
        "bertrec_encoder_expired", "Texts skipped because their deadline passed while queued.", labels=["replica"]
    )
    batch_sizes = HistogramMetricFamily(
        "bertrec_encoder_batch_size", "Texts per batch (one flush of the replica's queue).", labels=["replica"]
    )
    queue_times = HistogramMetricFamily(
        "bertrec_encoder_queue_seconds",
        "Time each text waited in the replica's queue for its batch, in seconds.",
        labels=["replica"],
    )
    # The settings in force now (the config's, or what Admin.ConfigureBatching set).
    settings = {
        key: GaugeMetricFamily(f"bertrec_encoder_{name}", help_text, labels=["replica"])
        for key, name, help_text in (
            ("max_batch_size", "max_batch_size", "Most texts per batch, as set now."),
            ("max_wait_s", "max_wait_seconds", "How long a non-empty batch waits for company, as set now."),
            ("max_batch_tokens", "max_batch_tokens", "Most padded tokens (rows x longest) per model call, as set now."),
        )
    }
    # Model calls and their tokens: padded / real is the padding the length grouping leaves.
    calls = {
        key: CounterMetricFamily(f"bertrec_encoder_{key}", help_text, labels=["replica"])
        for key, help_text in (
            ("model_calls", "Forward passes of the model (a batch is cut into calls by token count)."),
            ("tokens", "Tokens of the texts encoded (special tokens included)."),
            ("padded_tokens", "Tokens the model computed: rows x longest text, summed over calls."),
        )
    }
    for r in replicas:
        up.add_metric([r["name"], r.get("device", "unknown")], 1.0 if r.get("healthy") else 0.0)
        if not r.get("healthy"):
            continue
        queue.add_metric([r["name"]], float(r.get("queue_depth", 0)))
        texts.add_metric([r["name"]], float(r.get("encoded_texts", 0)))
        batches.add_metric([r["name"]], float(r.get("batches", 0)))
        mean.add_metric([r["name"]], float(r.get("mean_batch_size", 0.0)))
        expired.add_metric([r["name"]], float(r.get("expired", 0)))
        for family, key in ((batch_sizes, "batch_sizes"), (queue_times, "queue_times")):
            if key in r:
                family.add_metric([r["name"]], _buckets(r[key]), sum_value=r[key]["sum"])
        for key, family in settings.items():
            if key in r:
                family.add_metric([r["name"]], float(r[key]))
        for key, family in calls.items():
            if key in r:
                family.add_metric([r["name"]], float(r[key]))
    yield from (up, queue, texts, batches, mean, expired, batch_sizes, queue_times)
    yield from settings.values()
    yield from calls.values()

    coalescing = s["coalescing"]
    yield CounterMetricFamily(
        "bertrec_encoder_coalesced_requests",
        "Small encode requests offered to the front end's coalescer.",
        value=coalescing["requests"],
    )
    yield CounterMetricFamily(
        "bertrec_encoder_replica_calls",
        "Replica calls the coalescer made for them (fewer = more merging).",
        value=coalescing["replica_calls"],
    )

    yield GaugeMetricFamily("bertrec_index_size", "Vectors in the FAISS index.", value=s["index_size"])
    index = GaugeMetricFamily(
        "bertrec_index_info", "The index type and device (value 1).", labels=["index_type", "device"]
    )
    index.add_metric([s["index_type"], s["index_device"]], 1.0)
    yield index
    search = GaugeMetricFamily(
        "bertrec_index_search_breadth",
        "nprobe (IVF) or ef_search (HNSW) in effect; mode auto = chosen from the index size "
        "(the smallest over the shards of a sharded index). None for an exact index.",
        labels=["setting", "mode"],
    )
    for name, mode, value in s["index_search"]:
        search.add_metric([name, mode], float(value))
    yield search

    yield CounterMetricFamily("bertrec_user_cache_hits", "User-vector cache hits.", value=s["cache_hits"])
    yield CounterMetricFamily("bertrec_user_cache_misses", "User-vector cache misses.", value=s["cache_misses"])
    yield GaugeMetricFamily(
        "bertrec_user_cache_hit_ratio",
        "Hits / lookups of the user-vector cache since start.",
        value=s["cache_hit_rate"],
    )


def _buckets(histogram: dict[str, Any]) -> list[tuple[str, float]]:
    """A replica's histogram (batching.Histogram.to_dict) as Prometheus (le, cumulative count) pairs."""
    pairs = [(floatToGoString(b), float(n)) for b, n in zip(histogram["bounds"], histogram["buckets"])]
    return [*pairs, ("+Inf", float(histogram["count"]))]
