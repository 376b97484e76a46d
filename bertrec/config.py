"""The one frozen configuration tree: defaults < TOML file < BERTREC_* environment < CLI flags."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib

ENV_PREFIX = "BERTREC_"
QUANTIZE_MODES = ("none", "bf16", "int8")
RUNTIMES = ("auto", "torch", "onnx", "openvino")
# Upper limits of the batching settings, in the config and in Admin.ConfigureBatching alike: past
# them a setting is a typo, not a tuning (a 1-hour wait, a model call the size of a GPU's memory).
MAX_BATCH_SIZE_LIMIT = 4096
MAX_WAIT_S_LIMIT = 1.0
MAX_BATCH_TOKENS_LIMIT = 262_144  # 2,048 texts of 128 tokens
MAX_WORKER_NICE = 14  # one above Ray's worker processes (RAY_worker_niceness, 15 by default)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 to accept remote callers."""
    port: int = 50051
    """Port to bind; 0 picks a free one."""
    max_k: int = 1000
    """Largest `k` a Recommend request may ask for."""
    default_candidate_pool_size: int = 200
    """Nearest neighbours fetched before filtering and re-ranking, unless the request says otherwise."""
    max_candidate_pool_size: int = 5000
    max_text_chars: int = 10_000
    """Longest item or query text accepted (characters); longer is INVALID_ARGUMENT, not truncated."""
    max_items_per_request: int = 10_000
    """Items, ids, texts or interactions in one message."""
    max_message_bytes: int = 32 * 1024 * 1024
    max_history: int = 50
    """Most recent interactions that form a user's vector."""
    history_half_life: float = 20.0
    """Recency weighting of the history, in interactions: the n-th most recent counts 0.5**(n/half_life)."""
    chunk_size: int = 10
    """Results per streamed message unless the request says otherwise."""
    grace_s: float = 10.0
    """How long SIGTERM waits for in-flight streams."""
    user_cache_size: int = 100_000
    snapshot_interval_s: float = 30.0
    """How often a changed index is snapshotted to disk (it is also saved on shutdown)."""
    metrics_port: int = -1
    """Port of the Prometheus /metrics endpoint (plain HTTP on `host`); -1 = off, 0 picks a free one."""
    max_concurrent_rpcs: int = 256
    """RPCs handled at once by this front end; more are refused at once with RESOURCE_EXHAUSTED
    (pushback the caller can act on) instead of queueing into timeouts. Health probes are exempt."""
    worker_nice: int = 10
    """How many nice levels (0-14, Linux) below the event loop the front end's worker threads run
    (FAISS searches, store reads, index builds). The loop carries gRPC itself, so under load calls
    are accepted and answered before more search work runs; 0 = the same priority. At most 14:
    Ray runs encoder replicas at nice 15, and a search must not wait behind an encode."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""
    """Local Hugging Face checkpoint folder; empty = the packaged all-MiniLM-L6-v2."""
    max_length: int = 128
    """Token cap per text; batches pad only to their longest member."""
    device: str = "auto"
    """auto = cuda when visible, else cpu. Resolved inside each replica."""
    checkpoints_dir: str = ""
    """The only folder LoadModel may load checkpoints from; empty = <data_dir>/checkpoints."""
    quantize: str = "none"
    """CPU replicas only (GPU replicas keep fp16). "bf16" = bfloat16 arithmetic on CPUs with native
    bf16 (AVX512-BF16 / AMX), on OpenVINO: about 1.5x the fp32 throughput in batches at cosine
    1.0000 to fp32 vectors; on other CPUs it falls back to fp32 with a warning. "int8" = the
    exported graph quantized once with NNCF, calibrated on built-in texts, on OpenVINO: about 2x
    in batches at cosine ~0.998 (with runtime "torch": torch's dynamic int8, cosine ~0.97). Stored
    vectors are kept apart per setting."""
    runtime: str = "auto"
    """What runs the model in CPU replicas. auto = fp32 on "onnx" (ONNX Runtime) and bf16 on
    "openvino", each over the checkpoint exported once to ONNX (cached in onnx_cache_dir): the same
    arithmetic as torch at a lower cost per model call; int8 on "openvino" too. "torch" = eager
    PyTorch. GPU (fp16) replicas always run torch."""
    onnx_cache_dir: str = ""
    """Where exported checkpoints are kept; empty = ~/.cache/bertrec/onnx ($XDG_CACHE_HOME honoured)."""
    int8_calibration: str = ""
    """quantize "int8": a text file, one text per line (the first 512 are used), that int8 is
    calibrated on, e.g. a sample of the catalogue's own item texts; read by every replica, like
    model.path. Empty = built-in texts from the bundled MovieLens (titles to ~150 tokens). Vectors
    calibrated on other texts are stored apart."""


@dataclass(frozen=True)
class WorkersConfig:
    replicas: int = 0
    """Encoder replicas; 0 = one per visible GPU, or one per CPU core (at most 2) without GPUs."""
    cpus_per_replica: float = 1.0
    """Ray CPU resource per CPU replica; also its torch thread count (at least 1)."""
    ray_address: str = ""
    """Empty = start a local Ray; "auto" or host:port joins an existing cluster."""
    ray_num_cpus: int = 0
    """CPUs a local Ray may use; 0 = all."""
    ray_dashboard: bool = False
    """Start Ray's dashboard with a local Ray: about ten more processes and 0.9 GB of resident memory
    on this kind of machine. A cluster joined through ray_address keeps what `ray start` gave it."""
    namespace: str = "bertrec"
    """Ray namespace of the named actors (shared encoder replicas, index shards)."""
    pool_name: str = ""
    """Empty = private encoder replicas (random names, killed when this front end stops). A name =
    shared replicas <pool_name>-<i>: detached, spread over the cluster's nodes, and attached to by
    every front end started with the same name (and the same model settings); none kills them."""
    max_batch_size: int = 64
    """Texts a replica encodes together at most (one batch = the texts of one flush of its queue)."""
    max_wait_s: float = 0.005
    """How long a non-empty batch waits for company; a lone request on an idle replica never waits."""
    max_batch_tokens: int = 8192
    """Padded tokens per model call: a batch is sorted by token count and split into calls whose
    rows x longest text never exceed this (8192 = 64 texts of 128 tokens). At least model.max_length."""
    max_queue: int = 4096
    """Texts queued per replica before callers get RESOURCE_EXHAUSTED."""
    max_retries: int = 3
    """Times a request is re-sent when its replica dies."""


@dataclass(frozen=True)
class IndexConfig:
    factory: str = "Flat"
    """FAISS factory string: Flat (exact), HNSW32, IVF1024,Flat, IVF1024,PQ32 ..."""
    nprobe: int = 0
    """IVF lists visited per query; 0 = auto: from the index size and list count, for recall@10
    about 0.95 (every list up to ~16k items; 512 of 4096 lists at 1M). Each shard sizes its own."""
    ef_search: int = 0
    """HNSW search breadth (efSearch); 0 = auto: about sqrt(index size), at least 128 (1024 at 1M
    items), for recall@10 about 0.95. Each shard sizes its own."""
    use_gpu: str = "auto"
    """auto = GPU index when faiss has GPU support and GPUs are visible; "no" to force CPU."""
    shards: int = 1
    """1 = one in-process index; N > 1 = N Ray actors, each holding the items whose id hashes to it."""
    shard_prefix: str = "bertrec-index"
    """Shard actors are named <shard_prefix>-shard-<i>; front ends with the same prefix share them."""
    cpus_per_shard: float = 1.0
    """Ray CPU resource reserved by each shard actor."""
    detached_shards: bool = True
    """Shards outlive the front end that created them (others may be using them); False = die with it."""
    check_interval_s: float = 2.0
    """How often a sharded index checks its shards; a restarted (empty) shard triggers a rebuild
    from the store. Searches that hit a lost shard trigger it at once too."""


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str = "./bertrec-data"
    """Folder of the SQLite store and the index snapshot."""
    url: str = ""
    """Empty = the SQLite file in `data_dir` (one host). "postgresql://user@host/db" = a PostgreSQL
    store, shared by front ends on several hosts (needs the `postgres` extra: psycopg)."""
    load_demo: bool = True
    """Ingest the bundled MovieLens-small catalogue when the store is empty."""


@dataclass(frozen=True)
class AuthConfig:
    token: str = ""
    """Shared bearer token; empty = no token check."""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    """When set, callers must present a certificate signed by this CA (mutual TLS)."""


@dataclass(frozen=True)
class RerankConfig:
    path: str = ""
    """A trained re-ranker folder (`bertrec train-reranker`); "" = rank by retrieval score."""
    collaborative_candidates: int = 100
    """Candidates added from the collaborative model besides the text neighbours."""
    popular_candidates: int = 50
    """Candidates added by prior: observed popularity, or popularity predicted from text for cold items."""
    neighbour_candidates: int = 50
    """Candidates added among items without likes: those whose nearest liked items by text the
    collaborative model favours for this user."""
    ease_max_items: int = 20_000
    """The collaborative (EASE) model covers this many most-liked items; its fit inverts a dense
    matrix of that size (20k items: ~7 GB at peak while fitting). Less-liked items are scored like cold ones."""
    refit_interval_s: float = 600.0
    """How often the collaborative signals are refitted from the store's interactions."""
    cross_encoder_top_n: int = 50
    """With a cross-encoder re-ranker: how many of the fusion model's best candidates it re-scores
    (one BERT pass per candidate, on the front end's CPU); 0 = the number it was trained for."""


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["auth"]["token"]:
            out["auth"]["token"] = "***"
        # The effective config is logged: never a database password.
        out["store"]["url"] = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", out["store"]["url"])
        return out


def _coerce(value: Any, kind: Any, where: str) -> Any:
    kind = kind if isinstance(kind, type) else {"int": int, "float": float, "bool": bool, "str": str}[kind]
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{where}: expected a boolean, got {value!r}")
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _apply(config: Config, overrides: Mapping[str, Mapping[str, Any]], source: str) -> Config:
    sections = {f.name: f for f in fields(Config)}
    updated: dict[str, Any] = {}
    for section_name, values in overrides.items():
        if section_name not in sections:
            raise ValueError(f"{source}: unknown section [{section_name}]")
        section = getattr(config, section_name)
        known = {f.name: f for f in fields(section)}
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"{source}: unknown setting {section_name}.{key}")
            changes[key] = _coerce(value, known[key].type, f"{source} {section_name}.{key}")
        updated[section_name] = replace(section, **changes)
    return replace(config, **updated)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section in fields(Config):
        for setting in fields(section.default_factory()):  # type: ignore[misc]
            name = f"{ENV_PREFIX}{section.name}_{setting.name}".upper()
            if name in environ:
                out.setdefault(section.name, {})[setting.name] = environ[name]
    return out


def load_config(
    toml_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the effective config. `overrides` are CLI flags as {section: {setting: value}}."""
    config = Config()
    environ = os.environ if environ is None else environ
    toml_path = toml_path or environ.get(f"{ENV_PREFIX}CONFIG")
    if toml_path:
        with open(toml_path, "rb") as fh:
            config = _apply(config, tomllib.load(fh), str(toml_path))
    config = _apply(config, _env_overrides(environ), "environment")
    if overrides:
        cleaned = {s: {k: v for k, v in vals.items() if v is not None} for s, vals in overrides.items()}
        config = _apply(config, cleaned, "flags")
    validate_config(config)
    return config


def validate_config(config: Config) -> None:
    s = config.server
    if not 0 <= s.port <= 65535:
        raise ValueError(f"server.port {s.port} is out of range")
    if not -1 <= s.metrics_port <= 65535:
        raise ValueError(f"server.metrics_port {s.metrics_port} is out of range (-1 = off)")
    if s.max_k < 1 or s.default_candidate_pool_size < 1:
        raise ValueError("server.max_k and server.default_candidate_pool_size must be positive")
    if s.max_candidate_pool_size < s.default_candidate_pool_size:
        raise ValueError("server.max_candidate_pool_size is below the default pool size")
    if config.model.quantize not in QUANTIZE_MODES:
        raise ValueError(f"model.quantize must be one of {', '.join(QUANTIZE_MODES)}, got {config.model.quantize!r}")
    if config.model.runtime not in RUNTIMES:
        raise ValueError(f"model.runtime must be one of {', '.join(RUNTIMES)}, got {config.model.runtime!r}")
    if config.model.int8_calibration:
        from bertrec.workers.int8_model import read_calibration_file

        read_calibration_file(config.model.int8_calibration)  # a clear error now, not in every replica
    w = config.workers
    if w.replicas < 0 or w.max_queue < 1:
        raise ValueError("workers: replicas >= 0, max_queue >= 1")
    check_batching(w.max_batch_size, w.max_wait_s, w.max_batch_tokens, w.max_queue, config.model.max_length)
    if config.index.shards < 1 or config.index.cpus_per_shard < 0 or config.index.check_interval_s <= 0:
        raise ValueError("index: shards >= 1, cpus_per_shard >= 0, check_interval_s > 0")
    if config.index.nprobe < 0 or config.index.ef_search < 0:
        raise ValueError("index: nprobe >= 0 and ef_search >= 0 (0 = auto, from the index size)")
    if s.max_concurrent_rpcs < 1:
        raise ValueError("server.max_concurrent_rpcs must be positive")
    if not 0 <= s.worker_nice <= MAX_WORKER_NICE:
        raise ValueError(
            f"server.worker_nice must be between 0 and {MAX_WORKER_NICE} (Ray's worker processes run at 15), "
            f"got {s.worker_nice}"
        )
    if bool(config.auth.tls_cert) != bool(config.auth.tls_key):
        raise ValueError("auth.tls_cert and auth.tls_key go together")
    r = config.rerank
    if min(r.collaborative_candidates, r.popular_candidates, r.neighbour_candidates) < 0 or r.refit_interval_s <= 0:
        raise ValueError(
            "rerank: collaborative_candidates, popular_candidates, neighbour_candidates >= 0; refit_interval_s > 0"
        )
    if r.cross_encoder_top_n < 0:
        raise ValueError("rerank.cross_encoder_top_n must be >= 0")
    if r.ease_max_items < 1:
        raise ValueError("rerank.ease_max_items must be >= 1")


def check_batching(
    max_batch_size: int | None, max_wait_s: float | None, max_batch_tokens: int | None, max_queue: int, max_length: int
) -> None:
    """Raise ValueError naming the first batching setting out of range; None = not being set."""
    if max_batch_size is not None and not 1 <= max_batch_size <= min(max_queue, MAX_BATCH_SIZE_LIMIT):
        raise ValueError(
            f"max_batch_size must be between 1 and {min(max_queue, MAX_BATCH_SIZE_LIMIT)} "
            f"(workers.max_queue {max_queue}, limit {MAX_BATCH_SIZE_LIMIT}), got {max_batch_size}"
        )
    if max_wait_s is not None and not 0.0 <= max_wait_s <= MAX_WAIT_S_LIMIT:  # also refuses NaN
        raise ValueError(f"max_wait_s must be between 0 and {MAX_WAIT_S_LIMIT} seconds, got {max_wait_s}")
    if max_batch_tokens is not None and not max_length <= max_batch_tokens <= MAX_BATCH_TOKENS_LIMIT:
        raise ValueError(
            f"max_batch_tokens must be between model.max_length ({max_length}: one text of the longest "
            f"kind must fit a model call) and {MAX_BATCH_TOKENS_LIMIT}, got {max_batch_tokens}"
        )
