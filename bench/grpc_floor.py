"""The gRPC floor of a Recommend call: a server that does nothing but answer.

It serves `Recommend` over grpc.aio, in its own process like `bertrec serve`, and answers every
request with the response messages and trailers captured from one real call to the service (so
the bytes on the wire are the service's), echoing the caller's request id. bench/recommend.py
drives it with the same client, requests and concurrency as the service, round by round, so its
latency is what Python gRPC alone costs one Recommend call on this machine: the part of the
service's "gRPC + pool overhead" that no front-end code can remove.

    python -m bench.grpc_floor --port PORT --sample FILE    (FILE: written by `write_sample`)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc

from bench.common import free_port

METHOD = "/bertrec.v1.Recommender/Recommend"
ROOT = Path(__file__).resolve().parent.parent


async def capture(target: str, request) -> dict:
    """One real call's raw response messages and trailers, as `write_sample` stores them."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(METHOD, request_serializer=type(request).SerializeToString)(request, timeout=60)
        messages = [message async for message in call]
        trailers = [(key, value) for key, value in await call.trailing_metadata()]
    return {"messages": [base64.b64encode(m).decode() for m in messages], "trailers": trailers}


def write_sample(path: Path, sample: dict) -> Path:
    path.write_text(json.dumps(sample))
    return path


def serve(port: int, sample: dict) -> None:
    from bertrec.server.observability import REQUEST_ID_KEY
    from bertrec.v1 import recommender_pb2 as pb

    # Parsed once; each call's copies carry its own request id and are serialized per call, as the
    # service builds and serializes its messages.
    templates = [pb.RecommendResponse.FromString(base64.b64decode(m)) for m in sample["messages"]]
    trailers = tuple((k, v) for k, v in sample["trailers"] if k != REQUEST_ID_KEY)

    async def recommend(request, context):
        request_id = dict(context.invocation_metadata()).get(REQUEST_ID_KEY)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), *trailers) if request_id else trailers)
        for template in templates:
            response = pb.RecommendResponse()
            response.CopyFrom(template)
            response.request_id = request.request_id
            yield response

    async def main() -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            recommend,
            request_deserializer=pb.RecommendRequest.FromString,
            response_serializer=pb.RecommendResponse.SerializeToString,
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bertrec.v1.Recommender", {"Recommend": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


class ServedFloor:
    """The floor server in a subprocess, ready once its port accepts a channel."""

    def __init__(self, sample_file: Path):
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "bench.grpc_floor", "--port", str(self.port), "--sample", str(sample_file)]
        self.proc = subprocess.Popen(command, cwd=ROOT)
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(self.target) as channel:
            while True:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                    break
                except grpc.FutureTimeoutError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        exit_code = self.proc.returncode
                        raise RuntimeError(f"the gRPC floor server did not start (exit {exit_code})") from None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sample", type=Path, required=True, help="captured response messages and trailers (JSON)")
    args = parser.parse_args()
    serve(args.port, json.loads(args.sample.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
