"""A stand-in OpenTelemetry Collector: an OTLP receiver over gRPC and over HTTP/protobuf.

No OpenTelemetry Collector with an OTLP receiver can be installed from the registries
reachable here, so the tests send to this instead. It speaks the real wire protocol:
- gRPC: the opentelemetry.proto.collector TraceService/Export and MetricsService/Export
  RPCs (the stubs generated from opentelemetry-proto, served by grpcio), in the clear or
  with TLS from a certificate and key;
- HTTP: POST /v1/traces and /v1/metrics with application/x-protobuf bodies (gzip
  accepted), answered with the Export*ServiceResponse message, as the OTLP/HTTP spec says.

It records every request with its headers (gRPC metadata, HTTP headers) and can be told
to answer late (`delay`), to fail (`fail_grpc`, `fail_http`), or, over HTTP, to answer
garbage: what bpfnfs must survive when the collector is slow, down or broken.
"""

from __future__ import annotations

import gzip
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

REQUESTS = {"traces": tpb.ExportTraceServiceRequest, "metrics": mpb.ExportMetricsServiceRequest}
RESPONSES = {"traces": tpb.ExportTraceServiceResponse, "metrics": mpb.ExportMetricsServiceResponse}


@dataclass
class Received:
    signal: str  # "traces" | "metrics"
    transport: str  # "grpc" | "http"
    headers: dict[str, str]
    body: Any  # ExportTraceServiceRequest | ExportMetricsServiceRequest
    at: float = field(default_factory=time.monotonic)


class Receiver:
    """Both transports on 127.0.0.1, on ports of their own (grpc_endpoint, http_endpoint)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        """tls: (certificate, key) in PEM for the gRPC port (and https for the HTTP one)."""
        self.received: list[Received] = []
        self.delay = 0.0  # seconds before each answer
        self.fail_grpc: grpc.StatusCode | None = None  # answer every RPC with this status
        self.fail_http: int | None = None  # answer every POST with this HTTP status
        self.garbage = False  # HTTP: 200 with a body that is no protobuf message
        self._lock = threading.Lock()
        self.tls = tls

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        tgrpc.add_TraceServiceServicer_to_server(_Traces(self), self._grpc)
        mgrpc.add_MetricsServiceServicer_to_server(_Metrics(self), self._grpc)
        if tls is None:
            port = self._grpc.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([(tls[1].read_bytes(), tls[0].read_bytes())])
            port = self._grpc.add_secure_port("127.0.0.1:0", creds)
        self._grpc.start()
        self.grpc_endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        if tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self._http.socket = ctx.wrap_socket(self._http.socket, server_side=True)
        self.http_endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True).start()

    def record(self, r: Received) -> None:
        with self._lock:
            self.received.append(r)

    def of(self, signal: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.signal == signal]

    def spans(self) -> list[Any]:
        """Every span received, flattened out of resource and scope."""
        return [
            s
            for r in self.of("traces")
            for rs in r.body.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]

    def metrics(self) -> list[Any]:
        return [
            m
            for r in self.of("metrics")
            for rm in r.body.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        ]

    def close(self) -> None:
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()


class _Traces(tgrpc.TraceServiceServicer):
    def __init__(self, rx: Receiver) -> None:
        self.rx = rx

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_export(self.rx, "traces", request, context)


class _Metrics(mgrpc.MetricsServiceServicer):
    def __init__(self, rx: Receiver) -> None:
        self.rx = rx

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_export(self.rx, "metrics", request, context)


def _grpc_export(rx: Receiver, signal: str, request: Any, context: grpc.ServicerContext) -> Any:
    headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    if rx.delay:
        time.sleep(rx.delay)
    if rx.fail_grpc is not None:
        context.abort(rx.fail_grpc, "stand-in receiver told to fail")
    rx.record(Received(signal, "grpc", headers, request))
    return RESPONSES[signal]()


def _handler(rx: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if rx.delay:
                time.sleep(rx.delay)
            if signal is None:
                return self._answer(404, b"")
            if rx.fail_http is not None:
                return self._answer(rx.fail_http, b"stand-in receiver told to fail")
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            msg = REQUESTS[signal]()
            try:
                msg.ParseFromString(body)
            except Exception:
                return self._answer(400, b"not an OTLP protobuf message")
            rx.record(Received(signal, "http", {k.lower(): v for k, v in self.headers.items()}, msg))
            if rx.garbage:
                return self._answer(200, b"\xff\xfe not protobuf")
            self._answer(200, RESPONSES[signal]().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def self_signed(directory: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A CA-less self-signed certificate for 127.0.0.1 (openssl), as (certificate, key)."""
    import subprocess

    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-addext", f"subjectAltName=IP:{name}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


__all__ = ["Received", "Receiver", "self_signed"]
