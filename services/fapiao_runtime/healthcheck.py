"""A container health probe: `python -m fapiao_runtime.healthcheck` exits 0 when the service is SERVING.

A gRPC service is asked the standard health service (grpc.health.v1.Health/Check, overall status "")
on FAPIAO_GRPC_PORT, over TLS when FAPIAO_GRPC_CA_FILE is set (fapiao_runtime.grpc_client); the gateway
(`--http`) is asked GET /healthz on FAPIAO_HTTP_PORT. `--port` and `--host` override the environment.
Exit codes: 0 SERVING, 1 anything else (NOT_SERVING, no answer, a refused connection), 2 bad usage. One
line on stdout says what was seen, for `podman inspect` and `kubectl describe`.

Compose healthchecks and image HEALTHCHECKs use it; Kubernetes uses its own gRPC probe on the same port.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fapiao_runtime.grpc_client import internal_credentials

SERVING = "SERVING"


def grpc_status(host: str, port: int, timeout_s: float) -> str:
    """The overall status the health service on host:port reports, or "DOWN" (no answer in time)."""
    target = f"{host}:{port}"
    credentials = internal_credentials()
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError:
        return "DOWN"
    finally:
        channel.close()


def http_status(host: str, port: int, timeout_s: float) -> str:
    """SERVING when GET /healthz on host:port answers 200, NOT_SERVING for another status, else DOWN."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", "/healthz", headers={"Host": "localhost"})
        return SERVING if connection.getresponse().status == 200 else "NOT_SERVING"
    except (OSError, http.client.HTTPException):
        return "DOWN"
    finally:
        connection.close()


def _port(value: str | None, variable: str) -> int:
    if value is None or not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"no port to probe: pass --port or set {variable} (1-65535), got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fapiao_runtime.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--http", action="store_true", help="GET /healthz on FAPIAO_HTTP_PORT (the gateway)")
    parser.add_argument("--host", default="127.0.0.1", help="address to probe (default 127.0.0.1)")
    parser.add_argument("--port", help="port to probe (default FAPIAO_GRPC_PORT, or FAPIAO_HTTP_PORT with --http)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    args = parser.parse_args(argv)
    variable = "FAPIAO_HTTP_PORT" if args.http else "FAPIAO_GRPC_PORT"
    try:
        port = _port(args.port if args.port is not None else os.environ.get(variable), variable)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    probe = http_status if args.http else grpc_status
    status = probe(args.host, port, args.timeout)
    print(f"{'http' if args.http else 'grpc'} {args.host}:{port} {status}")
    return 0 if status == SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
