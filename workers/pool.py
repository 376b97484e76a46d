"""RayEncoderPool: spreads encode calls over EncoderReplica actors and retries when one dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bertrec.config import ModelConfig, WorkersConfig
from bertrec.errors import DeadlineExceeded, FailedPrecondition, WorkerLost
from bertrec.stages import stage
from bertrec.workers.coalescing import Coalescer

logger = logging.getLogger(__name__)

# Large requests (catalogue ingestion) are split so every replica gets a share.
SPLIT_TEXTS = 256
# Requests this small (queries, single texts) are merged with concurrent ones before the actor call.
COALESCE_MAX_TEXTS = 8
# Merged calls out per replica before small requests wait in the front end: one running, one queued
# behind it, so a replica never idles between batches and takes each batch as one call.
CALLS_IN_FLIGHT_PER_REPLICA = 2
# A local Ray start on a small machine now and then times out on one of its own processes: the
# raylet never registers with the GCS within Ray's fixed 30 s ("The current node timed out during
# startup"; about once in 15 starts here, the raylet had not even opened its log), or the GCS never
# writes its port file ("Timed out waiting for file .../gcs_server_port_..."; its log folder was
# empty). The next start went through both times.
LOCAL_START_ATTEMPTS = 3
START_TIMEOUTS = ("timed out during startup", "Timed out waiting for file")


def vector_format(quantize: str, runtime: str, calibration: str = "") -> str:
    """What a replica's vectors are, for keeping stored vectors apart: "none" (fp32, or fp16 on
    GPU: within cosine 0.9999 of each other on every runtime), "bf16", "int8" (torch's dynamic
    quantization) or "int8-static" (calibrated, on OpenVINO; "int8-static-<digest>" when
    calibrated on the texts of model.int8_calibration)."""
    if quantize == "int8" and runtime == "openvino":
        return f"int8-static-{calibration}" if calibration else "int8-static"
    return quantize


def common_vector_format(infos: list[dict]) -> str:
    """The replicas' one vector format (their `info()`), or FailedPrecondition when they differ:
    e.g. a node without NNCF whose int8 replica fell back to torch's dynamic int8."""
    formats = {
        vector_format(i.get("quantize", "none"), i.get("runtime", "torch"), i.get("calibration", "")) for i in infos
    }
    if len(formats) > 1:
        raise FailedPrecondition(
            f"encoder replicas make different vectors ({', '.join(sorted(formats))}): install the same "
            "packages on every node or set model.runtime explicitly"
        )
    return formats.pop()


def ensure_ray(workers: WorkersConfig) -> None:
    """Join the configured cluster, or start a local Ray when none is running in this process."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": workers.namespace, "log_to_driver": True}
    if workers.ray_address:
        ray.init(address=workers.ray_address, **kwargs)  # an existing cluster: its failure is the answer
        return
    if workers.ray_num_cpus:
        kwargs["num_cpus"] = workers.ray_num_cpus
    kwargs["include_dashboard"] = workers.ray_dashboard
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        before = _child_pids()
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:
            if not any(marker in str(exc) for marker in START_TIMEOUTS) or attempt == LOCAL_START_ATTEMPTS:
                raise
            logger.warning("local Ray start %d of %d failed (%s); starting again", attempt, LOCAL_START_ATTEMPTS, exc)
            # ray.init failed inside its node's constructor, so ray.shutdown() does not know the
            # processes it started (GCS, dashboard, ...): stop this attempt's children directly.
            _stop(_child_pids() - before)


def _child_pids() -> set[int]:
    """This process's direct children, from /proc (empty off Linux)."""
    me, children = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the command name, in parentheses, may hold spaces: the ppid follows the last ")"
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                children.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return children


def _stop(pids: set[int], grace_s: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


class RayEncoderPool:
    """N replicas: one per GPU (num_gpus=1, fp16) or CPU replicas with `cpus_per_replica` each.

    Private by default: replicas named with a random prefix, killed by `shutdown()`. With
    `workers.pool_name` the pool is shared: replicas are named `<pool_name>-<i>` in
    `workers.namespace`, detached and spread over the cluster's nodes, so front ends with the same
    name attach to the same replicas (after checking they were built with the same settings),
    and none of them kills the replicas when it stops.
    """

    def __init__(self, model: ModelConfig, workers: WorkersConfig, model_pointer: str = ""):
        self.model_pointer = model_pointer  # file naming the served checkpoint; see EncoderReplica
        self.model_config = model
        self.workers_config = workers
        self.shared = bool(workers.pool_name)
        self.prefix = workers.pool_name or f"bertrec-encoder-{uuid.uuid4().hex[:8]}"
        self.replicas: list[Any] = []
        self.names: list[str] = []
        self._in_flight: list[int] = []
        self.dim = 0
        self.model_name = ""
        self.quantize = "none"  # what the replicas' weights are after start(): "int8" only on CPU
        self.vector_format = "none"  # vector_format() of the replicas after start()
        merged = min(workers.max_batch_size, workers.max_queue)
        self._coalescers = {
            staging: Coalescer(lambda texts, deadline, s=staging: self._encode_chunk(texts, deadline, s), merged)
            for staging in (False, True)
        }
        self.gpus_per_replica = 0

    def _replica_count(self, gpus: int) -> int:
        if self.workers_config.replicas:
            return self.workers_config.replicas
        if gpus:
            return gpus
        import os

        return max(1, min(2, os.cpu_count() or 1))

    async def start(self) -> None:
        import ray

        from bertrec.workers.replica import EncoderReplica, batching_file, write_batching, write_model_pointer

        # On the event loop's thread, not in a worker thread: a local Ray's processes inherit the
        # starting thread's priority, and they must not take the workers' lower one.
        ensure_ray(self.workers_config)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = self._replica_count(gpus)
        if self.shared:
            # Before the pointer is written: a refused front end must not change what the
            # shared replicas reload when Ray restarts one.
            await self._check_shared([h for h in map(self._existing, range(count)) if h is not None])
            if self._existing(count) is not None:
                logger.warning("shared pool %s has replicas beyond the %d this front end uses", self.prefix, count)
        if self.model_pointer:
            write_model_pointer(self.model_pointer, self.model_config.path)
            write_batching(batching_file(self.model_pointer), {})  # a new front end starts from its config
        self.gpus_per_replica = 1 if gpus else 0
        cpus = 0.0 if gpus else self.workers_config.cpus_per_replica
        actor_cls = ray.remote(EncoderReplica)
        shared_options: dict[str, Any] = {}
        if self.shared:
            shared_options = {
                "namespace": self.workers_config.namespace,
                "lifetime": "detached",  # outlives this front end: others use it too
                "get_if_exists": True,  # a second front end attaches instead of creating
                "scheduling_strategy": "SPREAD",  # one replica per node where the cluster allows
            }
        for i in range(count):
            name = f"{self.prefix}-{i}"
            handle = actor_cls.options(
                name=name,
                num_gpus=self.gpus_per_replica,
                num_cpus=cpus,
                max_restarts=-1,  # Ray restarts a dead replica; the pool retries what it held
                max_concurrency=1000,
                **shared_options,
            ).remote(name, self.model_config, self.workers_config, max(1, int(cpus or 1)), self.model_pointer)
            self.replicas.append(handle)
            self.names.append(name)
            self._in_flight.append(0)
        if self.shared:
            await self._check_shared(self.replicas)  # another front end may have made some meanwhile
        infos = await asyncio.gather(*(r.info.remote() for r in self.replicas))
        self.dim = infos[0]["dim"]
        self.model_name = infos[0]["model"]
        self.quantize = infos[0].get("quantize", "none")
        self.vector_format = common_vector_format(infos)
        for coalescer in self._coalescers.values():
            coalescer.max_in_flight = CALLS_IN_FLIGHT_PER_REPLICA * count
        logger.info("encoder pool ready: %d replicas on %s", count, [i["device"] for i in infos])

    def _existing(self, i: int) -> Any:
        """The handle of shared replica `i` when it exists already, else None."""
        import ray

        try:
            return ray.get_actor(f"{self.prefix}-{i}", namespace=self.workers_config.namespace)
        except ValueError:
            return None

    async def _check_shared(self, handles: list[Any]) -> None:
        """Refuse replicas of a shared pool that were built for another model or other settings:
        their vectors would not match this front end's index and stored vectors."""
        from bertrec.workers.replica import replica_settings

        want = replica_settings(self.model_config, self.workers_config, self.model_config.path)
        for got in await asyncio.gather(*(h.settings.remote() for h in handles)):
            name = got.pop("name")
            differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
            if differ:
                detail = ", ".join(f"{k}: pool has {got.get(k)!r}, this front end {want.get(k)!r}" for k in differ)
                raise FailedPrecondition(
                    f"shared encoder pool {self.prefix!r} (replica {name}) was built with other settings "
                    f"({detail}); start this front end with the same settings or another pool name"
                )

    @property
    def fingerprint_suffix(self) -> str:
        """Appended to the model fingerprint of stored vectors: int8 vectors differ slightly from
        fp32 ones (and static int8 from torch's dynamic int8), so a restart with another setting
        encodes afresh instead of mixing the two."""
        return f"-{self.vector_format}" if self.vector_format != "none" else ""

    def _pick(self) -> int:
        return min(range(len(self.replicas)), key=self._in_flight.__getitem__)

    async def _encode_chunk(self, texts: list[str], deadline: float | None, staging: bool = False) -> np.ndarray:
        import ray

        attempts = self.workers_config.max_retries + 1
        backoff_s = 0.2
        for attempt in range(attempts):
            if deadline is not None and time.time() > deadline:
                raise DeadlineExceeded("deadline passed before the texts were encoded")
            i = self._pick()
            self._in_flight[i] += len(texts)
            try:
                return await self.replicas[i].encode.remote(texts, deadline, staging)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                logger.warning("replica %s lost (%s); retry %d/%d", self.names[i], exc, attempt + 1, attempts)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            except ray.exceptions.RayTaskError as exc:
                # Re-raise the replica's own error (Overloaded, DeadlineExceeded, ...) unwrapped.
                raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
            finally:
                self._in_flight[i] -= len(texts)
        raise WorkerLost(f"encoder replicas kept failing after {attempts} attempts")

    async def encode(self, texts: list[str], deadline: float | None = None, staging: bool = False) -> np.ndarray:
        with stage("encode"):  # the caller's RPC reports it in its server-timing trailer
            return await self._encode(texts, deadline, staging)

    async def _encode(self, texts: list[str], deadline: float | None, staging: bool) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        if len(texts) <= COALESCE_MAX_TEXTS:
            return await self._coalescers[staging].submit(texts, deadline)
        # Every replica gets a share of a large request, and no chunk is larger than a replica's
        # queue (it could never be admitted).
        share = -(-len(texts) // len(self.replicas))
        size = max(1, min(SPLIT_TEXTS, self.workers_config.max_queue, share))
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        parts = await asyncio.gather(*(self._encode_chunk(c, deadline, staging) for c in chunks))
        return np.concatenate(parts, axis=0)

    async def load_staging(self, path: str) -> dict:
        """Load a candidate model into every replica beside the serving one."""
        if self.shared:
            # The other front ends on these replicas would encode with a model their index was
            # not built with; restart every front end with the new --model instead.
            raise FailedPrecondition(
                f"encoder pool {self.prefix!r} is shared with other front ends: a hot swap is not supported; "
                "restart them all with the new model"
            )
        infos = await asyncio.gather(*(r.load_staging.remote(path) for r in self.replicas))
        return infos[0]

    async def promote_staging(self, path: str) -> None:
        """Make the staged model the served one, everywhere at once, and remember it."""
        from bertrec.workers.replica import write_model_pointer

        if self.model_pointer:
            write_model_pointer(self.model_pointer, path)  # first: a replica restarting now loads it
        names = await asyncio.gather(*(r.promote_staging.remote() for r in self.replicas))
        self.model_name = names[0]

    async def drop_staging(self) -> None:
        await asyncio.gather(*(r.drop_staging.remote() for r in self.replicas), return_exceptions=True)

    @property
    def coalescing(self) -> dict:
        active = self._coalescers[False]
        return {"requests": active.requests, "replica_calls": active.calls}

    async def info(self) -> list[dict]:
        import ray

        async def one(i: int) -> dict:
            try:
                return {**await asyncio.wait_for(self.replicas[i].info.remote(), 5.0), "healthy": True}
            except (ray.exceptions.RayError, TimeoutError):
                return {"name": self.names[i], "device": "unknown", "healthy": False}

        return list(await asyncio.gather(*(one(i) for i in range(len(self.replicas)))))

    async def configure_batching(
        self, max_batch_size: int | None = None, max_wait_s: float | None = None, max_batch_tokens: int | None = None
    ) -> list[dict]:
        """Change every replica's batching now (None = keep; the caller validates, see
        config.check_batching) and return `info()`, which shows the effective settings.

        The settings are also written beside the model pointer, so a replica that Ray restarts
        comes back with them; a front end that starts again starts from its config. On a shared
        pool they apply to every front end that uses it. The front end's coalescer merges small
        requests up to the same batch size, so max_batch_size 1 means one text per model call.
        """
        import ray

        from bertrec.workers.replica import batching_file, read_batching, write_batching

        given = {"max_batch_size": max_batch_size, "max_wait_s": max_wait_s, "max_batch_tokens": max_batch_tokens}
        given = {k: v for k, v in given.items() if v is not None}
        if self.model_pointer:  # first: a replica restarting meanwhile reads the new values
            path = batching_file(self.model_pointer)
            write_batching(path, read_batching(path) | given)
        if max_batch_size is not None:
            for coalescer in self._coalescers.values():
                coalescer.max_texts = min(max_batch_size, self.workers_config.max_queue)
        calls = (r.configure_batching.remote(**given) for r in self.replicas)
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            # A replica that is down misses the call: it reads the file when Ray restarts it, and
            # info() shows it unhealthy meanwhile. Any other failure is the caller's to see.
            lost = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
            if isinstance(outcome, BaseException) and not isinstance(outcome, lost):
                raise outcome
        return await self.info()

    def shutdown(self) -> None:
        """Kill a private pool's replicas; a shared pool's stay for the other front ends."""
        import ray

        if self.shared:
            logger.info("leaving shared encoder pool %s running (%d replicas)", self.prefix, len(self.replicas))
            self.replicas.clear()
            return
        for handle in self.replicas:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # already gone
                pass
        self.replicas.clear()
