"""The stand-in OTLP receiver (lab/otlp.py) against the OpenTelemetry SDK's own exporters:
what bpfnfs's OTLP export (issue #20) will be tested with must itself speak OTLP as the
SDK does, over gRPC and HTTP/protobuf, with headers, TLS, and the failures it can fake."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lab.otlp import Receiver, self_signed

RESOURCE = Resource.create({"service.name": "bpfnfs-test"})


@pytest.fixture
def rx() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _spans() -> list:
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=RESOURCE)
    tp.add_span_processor(SimpleSpanProcessor(mem))
    with tp.get_tracer("t").start_as_current_span("read") as parent:
        parent.set_attribute("file.path", "/mnt/a/f")
        with tp.get_tracer("t").start_as_current_span("READ"):
            pass
    return list(mem.get_finished_spans())


def test_grpc_and_http_spans_with_headers(rx: Receiver) -> None:
    spans = _spans()
    g = GrpcSpans(endpoint=rx.grpc_endpoint, insecure=True, headers={"authorization": "Bearer g"}, timeout=5)
    assert g.export(spans) == SpanExportResult.SUCCESS
    h = HttpSpans(endpoint=rx.http_endpoint + "/v1/traces", headers={"x-tenant": "shop"}, timeout=5)
    assert h.export(spans) == SpanExportResult.SUCCESS
    got = rx.of("traces")
    assert [r.transport for r in got] == ["grpc", "http"]
    assert got[0].headers["authorization"] == "Bearer g" and got[1].headers["x-tenant"] == "shop"
    names = sorted(s.name for s in rx.spans())
    assert names == ["READ", "READ", "read", "read"]
    child = next(s for s in rx.spans() if s.name == "READ")
    parent = next(s for s in rx.spans() if s.name == "read")
    assert child.parent_span_id == parent.span_id and child.trace_id == parent.trace_id


def test_metrics_over_grpc(rx: Receiver) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    mp.get_meter("t").create_counter("nfs_ops").add(3, {"op": "READ"})
    data = reader.get_metrics_data()
    assert GrpcMetrics(endpoint=rx.grpc_endpoint, insecure=True, timeout=5).export(data).name == "SUCCESS"
    (m,) = rx.metrics()
    assert m.name == "nfs_ops" and m.sum.data_points[0].as_int == 3


HTTPS_CLIENT = """
import sys
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
mem = InMemorySpanExporter()
tp = TracerProvider()
tp.add_span_processor(SimpleSpanProcessor(mem))
tp.get_tracer("t").start_span("read").end()
exp = OTLPSpanExporter(endpoint=sys.argv[1], certificate_file=sys.argv[2], timeout=2)
print(exp.export(mem.get_finished_spans()).name)
"""


def test_tls_with_its_ca_and_a_wrong_ca(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")
    r = Receiver(tls=(cert, key))
    try:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        assert (
            GrpcSpans(endpoint=r.grpc_endpoint, credentials=creds, timeout=5).export(_spans()).name
            == "SUCCESS"
        )
        wrong = grpc.ssl_channel_credentials(other.read_bytes())
        assert (
            GrpcSpans(endpoint=r.grpc_endpoint, credentials=wrong, timeout=2).export(_spans()).name
            == "FAILURE"
        )
        # OTLP/HTTPS in a process of its own: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
        # (set on machines behind a TLS proxy) override the exporter's certificate_file.
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        https = r.http_endpoint + "/v1/traces"
        for ca, want in ((cert, "SUCCESS"), (other, "FAILURE")):
            out = subprocess.run(
                [sys.executable, "-c", HTTPS_CLIENT, https, str(ca)], env=env, capture_output=True, text=True
            )
            assert out.stdout.strip() == want, out.stderr[-800:]
        assert [x.transport for x in r.of("traces")] == ["grpc", "http"]
    finally:
        r.close()


def test_failures_it_can_fake(rx: Receiver) -> None:
    rx.fail_http = 503
    assert (
        HttpSpans(endpoint=rx.http_endpoint + "/v1/traces", timeout=2).export(_spans())
        == SpanExportResult.FAILURE
    )
    rx.fail_http = None
    rx.garbage = True  # recorded, but the answer is no protobuf message
    HttpSpans(endpoint=rx.http_endpoint + "/v1/traces", timeout=2).export(_spans())
    assert len(rx.of("traces")) == 1
    rx.fail_grpc = grpc.StatusCode.PERMISSION_DENIED  # not retried by the SDK
    assert (
        GrpcSpans(endpoint=rx.grpc_endpoint, insecure=True, timeout=2).export(_spans())
        == SpanExportResult.FAILURE
    )
