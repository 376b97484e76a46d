"""Server lifecycle: bind, register services + health + reflection, load, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from bertrec.config import Config
from bertrec.server import heap
from bertrec.server.admission import AdmissionInterceptor
from bertrec.server.auth import TokenAuthInterceptor
from bertrec.server.metrics import ServerMetrics
from bertrec.server.observability import ObservabilityInterceptor
from bertrec.server.registration import generic_handler
from bertrec.server.servicers import AdminServicer, CatalogServicer, EmbedderServicer, RecommenderServicer
from bertrec.server.state import ServiceState
from bertrec.server.worker_threads import worker_executor
from bertrec.v1 import recommender_pb2 as pb

logger = logging.getLogger(__name__)

SERVICES = {
    "Recommender": RecommenderServicer,
    "Catalog": CatalogServicer,
    "Embedder": EmbedderServicer,
    "Admin": AdminServicer,
}


def _server_credentials(config: Config) -> grpc.ServerCredentials | None:
    auth = config.auth
    if not auth.tls_cert:
        return None
    key = Path(auth.tls_key).read_bytes()
    cert = Path(auth.tls_cert).read_bytes()
    client_ca = Path(auth.tls_client_ca).read_bytes() if auth.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class BertrecServer:
    """A bound grpc.aio server plus the state behind it. `port` is known right after `create`."""

    def __init__(self, config: Config):
        self.config = config
        self.state = ServiceState(config)
        self.health = health_aio.HealthServicer()
        self.metrics = ServerMetrics()
        # Observability first, so it also sees (counts, logs) the calls admission or the token check refuse.
        self.admission = AdmissionInterceptor(config.server.max_concurrent_rpcs)
        interceptors: list[grpc.aio.ServerInterceptor] = [ObservabilityInterceptor(self.metrics), self.admission]
        if config.auth.token:
            interceptors.append(TokenAuthInterceptor(config.auth.token))
        limit = config.server.max_message_bytes
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        for name, servicer_cls in SERVICES.items():
            self.server.add_generic_rpc_handlers((generic_handler(name, servicer_cls(self.state)),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [pb.DESCRIPTOR.services_by_name[n].full_name for n in SERVICES]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], self.server
        )
        address = f"{config.server.host}:{config.server.port}"
        credentials = _server_credentials(config)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if not self.port:
            raise OSError(f"could not bind {address}")
        self._service_names = ["", *names]
        self.metrics_port: int | None = None
        if config.server.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(config.server.host, config.server.metrics_port)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._service_names:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Start answering (health NOT_SERVING), load model and index, then flip to SERVING."""
        await self._set_health(False)
        loop = asyncio.get_running_loop()
        loop.set_default_executor(worker_executor(self.config.server.worker_nice))
        self.metrics.watch(self.state, loop)
        await self.server.start()
        logger.info("listening on %s:%d; loading model and index", self.config.server.host, self.port)
        await self.state.start()
        heap.settle()
        await self._set_health(True)
        logger.info("SERVING on port %d", self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Health flips to NOT_SERVING first, in-flight streams get `grace_s` to finish."""
        began = time.monotonic()
        await self._set_health(False)
        await self.server.stop(self.config.server.grace_s if grace_s is None else grace_s)
        drained = time.monotonic()
        await self.state.close()
        await asyncio.to_thread(self.metrics.close)
        logger.info("stopped: drained in %.2fs, closed in %.2fs", drained - began, time.monotonic() - drained)


def create_server(config: Config) -> tuple[BertrecServer, int]:
    server = BertrecServer(config)
    return server, server.port


async def serve(config: Config, ready_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    logger.info("effective config: %s", json.dumps(config.to_dict()))
    server, port = create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def install_signal_handlers() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    install_signal_handlers()
    starting = asyncio.ensure_future(server.start())
    waiting = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, waiting], return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        waiting.cancel()
        await server.server.stop(0)
        raise starting.exception()
    if starting.done():
        install_signal_handlers()  # ray.init replaced them with its own exit-on-SIGTERM
        print(f"bertrec serving on {config.server.host}:{port}", flush=True)
        if ready_file:
            Path(ready_file).write_text(str(port))
        await waiting
    else:
        starting.cancel()
    logger.info("shutting down: draining for up to %.1fs", config.server.grace_s)
    await server.stop()
