"""Span trees over OTLP (export/otlp.py) against the stand-in receiver (lab/otlp.py), which
speaks OTLP over gRPC and HTTP/protobuf as a collector does (no collector with an OTLP
receiver is installable here): ids and parent links as the kernel made them, semantic
convention attributes, headers, TLS, the settings' errors, and every drop counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from bpfnfs.config import Config
from bpfnfs.enrich.identity import Identity
from bpfnfs.export import otlp
from lab.otlp import Receiver, self_signed

TRACE = "0123456789abcdef00000000000000a1"


def _view(span: str, parent: str | None, op: str, kind: str = "vfs", **kw: Any) -> SimpleNamespace:
    base = {
        "kind": kind,
        "op": op,
        "comm": "dd",
        "pid": 77,
        "tid": 78,
        "latency_ns": 1000,
        "bytes": 4096,
        "errno": None,
        "mount": "/mnt/a",
        "file": "/mnt/a/f" if kind == "vfs" else None,
        "queue_ns": 5,
        "rtt_ns": 700,
        "xid": 0xABC,
        "rpc_version": 3,
        "trace_id": TRACE,
        "span_id": span,
        "parent_span_id": parent,
        "keep": () if parent else ("slow",),
        "start_ns": 1_000_000,
        "end_ns": 2_000_000,
        "cgroup_id": 9,
    }
    return SimpleNamespace(**(base | kw))


def _tree() -> list[SimpleNamespace]:
    root = _view("00000000000000a1", None, "read", latency_ns=1_000_000)
    kids = [
        _view(
            f"00000000000000b{i}",
            "00000000000000a1",
            "READ",
            kind="rpc",
            start_ns=1_100_000 + i,
            end_ns=1_900_000,
        )
        for i in range(8)
    ]
    return [*kids, root]


IDENT = Identity(9, "/kubepods/pod1/c", namespace="shop", pod="web-0", pod_uid="u-1", container="app")


def _sink(cfg: Config, **kw: Any) -> otlp.SpanSink:
    logs: list[str] = []
    sink = otlp.SpanSink(
        otlp.resolve(cfg, env={}),
        describe=lambda r: r,
        identity=lambda _cg: IDENT,
        server=lambda _m: ("nfs.example", 2049),
        node_name="node-1",
        log=logs.append,
        **kw,
    )
    sink.logs = logs  # type: ignore[attr-defined]
    return sink


@pytest.fixture
def rx() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_tree_arrives_whole_with_the_kernels_ids(rx: Receiver, protocol: str) -> None:
    endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint  # bare: /v1/traces is added
    cfg = Config(output={"otlp": {"endpoint": endpoint, "protocol": protocol, "headers": {"x-tenant": "t1"}}})
    sink = _sink(cfg)
    sink(_tree())
    assert sink.flush(5)
    sink.close()
    spans = rx.spans()
    assert len(spans) == 9 and sink.exported == 9 and not any(sink.dropped.values())
    assert rx.of("traces")[0].headers["x-tenant"] == "t1"
    root = next(s for s in spans if s.name == "read")
    kids = [s for s in spans if s.name == "READ"]
    assert (
        root.trace_id.hex() == TRACE and root.span_id.hex() == "00000000000000a1" and not root.parent_span_id
    )
    assert all(k.parent_span_id == root.span_id and k.trace_id == root.trace_id for k in kids)
    assert root.start_time_unix_nano == 1_000_000 and root.end_time_unix_nano == 2_000_000
    attrs = {a.key: a.value for a in kids[0].attributes}
    assert attrs["rpc.system.name"].string_value == "onc_rpc"
    assert attrs["onc_rpc.procedure.name"].string_value == "READ"
    assert attrs["onc_rpc.version"].int_value == 3
    assert attrs["server.address"].string_value == "nfs.example" and attrs["server.port"].int_value == 2049
    assert (
        attrs["k8s.pod.name"].string_value == "web-0" and attrs["k8s.namespace.name"].string_value == "shop"
    )
    rattrs = {a.key: a.value for a in root.attributes}
    assert rattrs["file.path"].string_value == "/mnt/a/f" and rattrs["process.pid"].int_value == 77
    assert kids[0].kind == 3 and root.kind == 1  # CLIENT, INTERNAL
    res = {a.key: a.value.string_value for a in rx.of("traces")[0].body.resource_spans[0].resource.attributes}
    assert res["service.name"] == "bpfnfs" and res["k8s.node.name"] == "node-1"


def test_tls_with_a_self_signed_ca_and_a_wrong_one(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")
    r = Receiver(tls=(cert, key))
    try:
        good = _sink(
            Config(output={"otlp": {"endpoint": r.grpc_endpoint, "ca_file": str(cert), "timeout": 2}})
        )
        good(_tree())
        good.flush(5)
        good.close()
        assert good.exported == 9
        bad = _sink(
            Config(output={"otlp": {"endpoint": r.grpc_endpoint, "ca_file": str(other), "timeout": 1}})
        )
        bad(_tree())
        bad.flush(5)
        t0 = time.monotonic()
        bad.close()
        assert time.monotonic() - t0 < 3  # within the exporter timeout
        assert bad.dropped["export_failed"] == 9 and bad.exported == 0
        # One line naming the endpoint, the SDK's reason and the count.
        (line,) = [ln for ln in bad.logs if "failed" in ln]  # type: ignore[attr-defined]
        assert r.grpc_endpoint in line and "StatusCode." in line and "9 spans dropped" in line, line
    finally:
        r.close()


def test_a_failing_or_garbage_collector_is_counted_never_raised(rx: Receiver) -> None:
    rx.fail_grpc = grpc.StatusCode.PERMISSION_DENIED
    sink = _sink(Config(output={"otlp": {"endpoint": rx.grpc_endpoint, "timeout": 2}}))
    sink(_tree())
    sink.flush(5)
    assert sink.dropped["export_failed"] == 9
    rx.fail_grpc = None
    sink(_tree())
    sink.flush(5)
    sink.close()
    assert sink.exported == 9
    assert any("works again" in ln for ln in sink.logs)  # type: ignore[attr-defined]
    rx.garbage = True
    h = _sink(
        Config(output={"otlp": {"endpoint": rx.http_endpoint, "protocol": "http/protobuf", "timeout": 2}})
    )
    h(_tree())
    h.flush(5)
    h.close()
    assert h.exported + h.dropped["export_failed"] == 9


def test_rate_limit_keeps_trees_whole() -> None:
    class Mem:
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans: Any) -> Any:
            from opentelemetry.sdk.trace.export import SpanExportResult

            self.spans += spans
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, _t: int = 0) -> bool:
            return True

    now = [0.0]
    mem = Mem()
    cfg = Config(output={"otlp": {"endpoint": "localhost:4317", "max_spans_per_second": 10}})
    sink = _sink(cfg, exporter=mem, clock=lambda: now[0])
    trees = []
    for t in range(3):
        tree = _tree()
        for v in tree:
            v.trace_id = f"{t:032x}"
        trees += tree
    sink(trees)  # 27 spans, 10 tokens: the first tree (9) fits, the second starts with 1 token and is
    sink.flush(5)  # admitted whole (its first record decides), the third finds none
    sink.close()
    assert len(mem.spans) == 18 and sink.dropped["rate_limited"] == 9
    assert {s.context.trace_id for s in mem.spans} == {0, 1}


@pytest.mark.parametrize(
    ("otlp_cfg", "env", "culprit"),
    [
        ({"endpoint": "localhost"}, {}, "output.otlp.endpoint"),
        ({"endpoint": "localhost:99999"}, {}, "output.otlp.endpoint"),
        ({"endpoint": "ftp://x:1"}, {}, "output.otlp.endpoint"),
        ({"endpoint": "localhost:4318", "protocol": "http/protobuf"}, {}, "http/protobuf needs a URL"),
        (
            {"endpoint": "localhost:4317"},
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({"endpoint": "localhost:4317", "ca_file": "/nonexistent/ca.pem"}, {}, "output.otlp.ca_file"),
        (
            {"endpoint": "localhost:4317", "client_key": "/etc/hostname"},
            {},
            "client_certificate and client_key",
        ),
    ],
)
def test_bad_settings_name_the_key(otlp_cfg: dict[str, Any], env: dict[str, str], culprit: str) -> None:
    with pytest.raises(otlp.OtlpSettingsError, match=culprit.replace(".", r"\.")):
        otlp.resolve(Config(output={"otlp": otlp_cfg}), env=env)


def test_otel_variables_fill_what_the_config_leaves_unset(
    rx: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20env")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nfs-agent")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=lab")
    s = otlp.resolve(Config(), env=dict(__import__("os").environ))
    assert s.protocol == "http/protobuf" and s.endpoint is None  # the SDK reads the endpoint itself
    sink = otlp.SpanSink(s, describe=lambda r: r, identity=lambda _c: None, log=lambda _m: None)
    sink(_tree())
    sink.flush(5)
    sink.close()
    got = rx.of("traces")
    assert got and got[0].headers["authorization"] == "Bearer env"
    res = {a.key: a.value.string_value for a in got[0].body.resource_spans[0].resource.attributes}
    assert res["service.name"] == "nfs-agent" and res["deployment.environment.name"] == "lab"


def test_a_bad_otlp_setting_stops_run_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bpfnfs.cli.main import main

    monkeypatch.setenv("BPFNFS_OUTPUT__TYPE", "otlp")
    monkeypatch.setenv("BPFNFS_OUTPUT__OTLP__ENDPOINT", "collector")
    assert main(["run", "--count", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output.otlp.endpoint: 'collector' is not HOST:PORT" in err[0], err


def test_a_slow_or_absent_collector_costs_bounded_memory_and_a_bounded_shutdown(rx: Receiver) -> None:
    """Responses 5 s late against a 1 s timeout, then no collector at all: spans are dropped and
    counted (export_failed, queue_full), the sink never holds more than its queue, and close()
    returns within the exporter timeout."""
    import gc
    import tracemalloc

    rx.delay = 5.0
    sink = _sink(
        Config(output={"otlp": {"endpoint": rx.grpc_endpoint, "timeout": 1, "max_spans_per_second": 0}})
    )
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tree = _tree()
    for t in range(5_000):  # 45,000 spans, over five times the queue
        for v in tree:
            v.trace_id = f"{t + 1:032x}"
        sink(tree)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert sink.in_flight <= otlp.MAX_QUEUE and sink.dropped["queue_full"] > 45_000 - 2 * otlp.MAX_QUEUE
    t0 = time.monotonic()
    sink.close()
    assert time.monotonic() - t0 < 1 + 1.5  # the exporter timeout, plus the join's slack
    # Every span is accounted for: none exported, each dropped for one reason.
    assert sink.exported == 0 and sum(sink.dropped.values()) == 45_000, sink.dropped
    # What is held is the queue's spans (about 2 kB each), not the 45,000.
    print(f"held {held / 1e6:.1f} MB for {sink.in_flight + sink.dropped['shutdown']} queued spans")
    assert held < otlp.MAX_QUEUE * 4096, held
    gc.collect()

    down = _sink(Config(output={"otlp": {"endpoint": "127.0.0.1:9", "timeout": 1}}))  # discard port: closed
    down(_tree())
    down.flush(3)
    down.close()
    assert down.dropped["export_failed"] == 9
