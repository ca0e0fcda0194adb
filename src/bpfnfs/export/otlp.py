"""OpenTelemetry over OTLP: the kernel's span trees as spans.

The event path hands decoded records of kept trees (bpf/bpfnfs.h, op_event) to
SpanSink, which turns each into an SDK ReadableSpan with the kernel's own ids and
times and gives it to the SDK's BatchSpanProcessor and OTLP exporter (gRPC or
HTTP/protobuf). What the sink refuses or the collector does not take is counted by
reason (`dropped`), never lost silently:

  rate_limited   a tree over output.otlp.max_spans_per_second (decided per trace, so
                 trees stay whole)
  queue_full     the processor's queue is full (the collector is slow or down)
  export_failed  the exporter gave up on a batch (refused, unreachable, garbage, TLS)
  shutdown       still queued when bpfnfs stopped and the exporter timeout ran out

Settings come from output.otlp (and the original's output.otel), then the
standard OTEL_EXPORTER_OTLP_* variables, which the SDK's exporters read for what
the configuration leaves unset. docs/traces.md lists every attribute.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from bpfnfs.config import Config
from bpfnfs.enrich.identity import Identity

PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "grpc"  # the original tool's only transport
SCOPE = "bpfnfs"
MAX_QUEUE = 8192  # spans waiting for the exporter (BatchSpanProcessor's max_queue_size)
BATCH = 512
RECENT_TRACES = 4096  # trace ids whose rate decision is remembered (a tree's records arrive together)
# Identity fields -> resource-style span attributes (OpenTelemetry semantic conventions).
K8S_ATTRIBUTES = (
    ("namespace", "k8s.namespace.name"),
    ("pod", "k8s.pod.name"),
    ("pod_uid", "k8s.pod.uid"),
    ("container", "k8s.container.name"),
    ("container_id", "container.id"),
)


class OtlpSettingsError(ValueError):
    """A person's OTLP setting is wrong: the message names the key (exit 2)."""


@dataclass(frozen=True)
class OtlpSettings:
    protocol: str
    endpoint: str | None  # None: the SDK's OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT or its default
    insecure: bool | None
    timeout: float
    headers: dict[str, str] | None
    compression: str | None
    ca_file: Path | None
    client_certificate: Path | None
    client_key: Path | None
    max_spans_per_second: float

    @property
    def target(self) -> str:
        return self.endpoint or f"the {self.protocol} default endpoint"


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        v = env.get(n, "").strip()
        if v:
            return v
    return None


def resolve(cfg: Config, env: Mapping[str, str] | None = None) -> OtlpSettings:
    """The exporter's settings: configuration first, then OTEL_* variables. Raises
    OtlpSettingsError naming the key for a value no exporter could use."""
    env = os.environ if env is None else env
    o = cfg.output.otlp
    endpoint = o.endpoint or (cfg.output.otel.endpoint if cfg.output.otel.enable else "") or None
    key = "output.otlp.endpoint" if o.endpoint else "output.otel.endpoint"
    protocol = (
        o.protocol
        or _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        or DEFAULT_PROTOCOL
    )
    if protocol not in PROTOCOLS:
        src = "output.otlp.protocol" if o.protocol else "OTEL_EXPORTER_OTLP_PROTOCOL"
        raise OtlpSettingsError(f"{src}: unknown protocol {protocol!r}; choose grpc or http/protobuf")
    if endpoint is not None:
        endpoint = _check_endpoint(key, endpoint, protocol)
    for name in ("ca_file", "client_certificate", "client_key"):
        p = getattr(o, name)
        if p is not None and not os.access(p, os.R_OK):
            raise OtlpSettingsError(f"output.otlp.{name}: cannot read {p}")
    if (o.client_certificate is None) != (o.client_key is None):
        raise OtlpSettingsError("output.otlp.client_certificate and client_key go together")
    return OtlpSettings(
        protocol=protocol,
        endpoint=endpoint,
        insecure=True if o.insecure else None,
        timeout=o.timeout,
        headers=dict(o.headers) or None,
        compression=o.compression or None,
        ca_file=o.ca_file,
        client_certificate=o.client_certificate,
        client_key=o.client_key,
        max_spans_per_second=o.max_spans_per_second,
    )


def _check_endpoint(key: str, endpoint: str, protocol: str) -> str:
    if "://" in endpoint:
        u = urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise OtlpSettingsError(f"{key}: {endpoint!r} is not an http(s)://HOST[:PORT] URL")
        try:
            u.port  # noqa: B018 - a non-numeric port raises here
        except ValueError:
            raise OtlpSettingsError(f"{key}: {endpoint!r} has a bad port") from None
        if protocol == "http/protobuf" and u.path in ("", "/"):
            return endpoint.rstrip("/") + "/v1/traces"  # OTEL_EXPORTER_OTLP_ENDPOINT's rule
        return endpoint
    if protocol == "http/protobuf":
        raise OtlpSettingsError(f"{key}: {endpoint!r}: http/protobuf needs a URL (http://HOST:4318)")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise OtlpSettingsError(f"{key}: {endpoint!r} is not HOST:PORT (e.g. localhost:4317)")
    return endpoint


def span_exporter(s: OtlpSettings) -> Any:
    """The SDK's OTLP span exporter for these settings (unset ones: OTEL_* variables)."""
    if s.protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        creds = None
        if s.ca_file or s.client_certificate:
            creds = grpc.ssl_channel_credentials(
                root_certificates=s.ca_file.read_bytes() if s.ca_file else None,
                private_key=s.client_key.read_bytes() if s.client_key else None,
                certificate_chain=s.client_certificate.read_bytes() if s.client_certificate else None,
            )
        comp = {"gzip": grpc.Compression.Gzip, "none": grpc.Compression.NoCompression}.get(
            s.compression or ""
        )
        return OTLPSpanExporter(
            endpoint=s.endpoint,
            insecure=s.insecure,
            credentials=creds,
            headers=s.headers,
            timeout=s.timeout,
            compression=comp,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    comp_http = {"gzip": Compression.Gzip, "none": Compression.NoCompression}.get(s.compression or "")
    # requests prefers REQUESTS_CA_BUNDLE over a per-call CA: the configured file must win.
    session = None
    if s.ca_file is not None:
        import requests

        session = requests.Session()
        session.trust_env = False
    return HttpExporter(
        endpoint=s.endpoint,
        certificate_file=str(s.ca_file) if s.ca_file else None,
        client_certificate_file=str(s.client_certificate) if s.client_certificate else None,
        client_key_file=str(s.client_key) if s.client_key else None,
        headers=s.headers,
        timeout=s.timeout,
        compression=comp_http,
        session=session,
    )


class SpanView(Protocol):
    """What the sink needs of a decoded record (cli.trace.SlowOp is one)."""

    kind: str
    op: str
    comm: str
    pid: int
    tid: int
    latency_ns: int
    bytes: int
    errno: str | None
    mount: str | None
    file: str | None
    queue_ns: int
    rtt_ns: int
    xid: int
    rpc_version: int
    trace_id: str | None
    span_id: str | None
    parent_span_id: str | None
    keep: tuple[str, ...]
    start_ns: int
    end_ns: int


def span_attributes(
    v: SpanView, ident: Identity | None, server: tuple[str | None, int | None] = (None, None)
) -> dict[str, Any]:
    """A span's attributes (OpenTelemetry semantic conventions; bpfnfs.* for the rest)."""
    a: dict[str, Any] = {
        "process.pid": v.pid,
        "process.executable.name": v.comm,
        "thread.id": v.tid,
    }
    if v.mount:
        a["bpfnfs.mount"] = v.mount
    if server[0]:
        a["server.address"] = server[0]
        if server[1]:
            a["server.port"] = server[1]
    if v.errno:
        a["error.type"] = v.errno
    if v.kind == "rpc":
        a.update(
            {
                "rpc.system.name": "onc_rpc",
                "rpc.method": v.op,
                "onc_rpc.program.name": "nfs",
                "onc_rpc.version": v.rpc_version,
                "onc_rpc.procedure.name": v.op,
                "bpfnfs.rpc.backlog_ns": v.queue_ns,
                "bpfnfs.rpc.rtt_ns": v.rtt_ns,
                "bpfnfs.rpc.xid": f"0x{v.xid:08x}",
            }
        )
        if v.rpc_version == 4:
            a["nfs.operation.name"] = v.op
    else:
        a["bpfnfs.operation"] = v.op
        if v.file:
            a["file.path"] = v.file
        if v.op in ("read", "write"):
            a["bpfnfs.bytes"] = v.bytes
    if v.keep:
        a["bpfnfs.kept"] = list(v.keep)
    if ident is not None:
        if ident.cgroup:
            a["bpfnfs.cgroup"] = ident.cgroup
        for field, key in K8S_ATTRIBUTES:
            val = getattr(ident, field, None)
            if val:
                a[key] = val
    return a


def to_span(
    v: SpanView,
    ident: Identity | None,
    resource: Any,
    scope: Any,
    server: tuple[str | None, int | None] = (None, None),
) -> Any:
    """One ReadableSpan with the kernel's ids and times."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    assert v.trace_id and v.span_id
    tid = int(v.trace_id, 16)
    flags = TraceFlags(TraceFlags.SAMPLED)
    ctx = SpanContext(tid, int(v.span_id, 16), is_remote=False, trace_flags=flags)
    parent = (
        SpanContext(tid, int(v.parent_span_id, 16), is_remote=False, trace_flags=flags)
        if v.parent_span_id
        else None
    )
    return ReadableSpan(
        name=v.op,
        context=ctx,
        parent=parent,
        resource=resource,
        attributes=span_attributes(v, ident, server),
        kind=SpanKind.CLIENT if v.kind == "rpc" else SpanKind.INTERNAL,
        status=Status(StatusCode.ERROR, v.errno) if v.errno else Status(StatusCode.UNSET),
        start_time=v.start_ns,
        end_time=v.end_ns,
        instrumentation_scope=scope,
    )


def resource(node_name: str | None = None, env: Mapping[str, str] | None = None) -> Any:
    """service.name=bpfnfs (OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win), host.name,
    k8s.node.name when set."""
    from opentelemetry.sdk.resources import Resource

    env = os.environ if env is None else env
    attrs: dict[str, Any] = {"host.name": os.uname().nodename}
    if node_name:
        attrs["k8s.node.name"] = node_name
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attrs["service.name"] = "bpfnfs"
    return Resource.create(attrs)


class _LastError(logging.Handler):
    """Keeps the SDK exporter's last warning or error (why an export failed) for bpfnfs's own
    one-line warning, instead of letting it print its retries and tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().splitlines()[0][:300] if record.getMessage() else ""


class _Counting:
    """The exporter, counting what it sent and what it gave up on (the SDK logs why)."""

    def __init__(self, inner: Any, on_done: Callable[[int, bool], None]) -> None:
        self.inner = inner
        self.on_done = on_done

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self.inner.export(spans)
        except Exception:  # a collector answering garbage must not kill the worker
            result = SpanExportResult.FAILURE
        self.on_done(len(spans), result == SpanExportResult.SUCCESS)
        return result

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        try:
            self.inner.shutdown(timeout_millis=timeout_millis)
        except TypeError:
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class SpanSink:
    """An event path subscriber: records of kept trees -> spans over OTLP.

    describe: record -> SpanView (None: not for export, e.g. another mount); identity:
    cgroup id -> Identity; server: mount point -> (address, port)."""

    def __init__(
        self,
        settings: OtlpSettings,
        describe: Callable[[Any], SpanView | None],
        identity: Callable[[int], Identity | None],
        server: Callable[[str | None], tuple[str | None, int | None]] = lambda _m: (None, None),
        node_name: str | None = None,
        log: Callable[[str], None] = print,
        exporter: Any = None,
        clock: Callable[[], float] = time.monotonic,
        debug: bool = False,
    ) -> None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from bpfnfs import __version__

        self.settings = settings
        self.describe = describe
        self.identity = identity
        self.server = server
        self.log = log
        self.clock = clock
        self.resource = resource(node_name)
        self.scope = InstrumentationScope(SCOPE, __version__)
        self.exported = 0
        self.dropped: dict[str, int] = {"rate_limited": 0, "queue_full": 0, "export_failed": 0, "shutdown": 0}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._decided: OrderedDict[str, bool] = OrderedDict()
        self._tokens = settings.max_spans_per_second
        self._refill_at = clock()
        self._failing_since: float | None = None
        self._sdk_log = logging.getLogger("opentelemetry.exporter.otlp")
        self._why = _LastError()
        self._sdk_log.addHandler(self._why)
        self._sdk_log.propagate = debug  # else its lines come out as bpfnfs's one warning
        inner = exporter if exporter is not None else span_exporter(settings)
        self.processor = BatchSpanProcessor(
            _Counting(inner, self._done),  # type: ignore[arg-type]
            max_queue_size=MAX_QUEUE,
            max_export_batch_size=BATCH,
            schedule_delay_millis=1000,
            export_timeout_millis=settings.timeout * 1000,
        )

    def _done(self, n: int, ok: bool) -> None:
        with self._lock:
            self._in_flight -= n
            if ok:
                self.exported += n
                if self._failing_since is not None:
                    self.log(f"OTLP export to {self.settings.target} works again")
                    self._failing_since = None
                return
            self.dropped["export_failed"] += n
            first = self._failing_since is None
            if first:
                self._failing_since = self.clock()
        if first:
            why = self._why.last or "the exporter gave no reason"
            self.log(
                f"warning: OTLP export to {self.settings.target} failed: {why}; {n} spans dropped (counted "
                'in bpfnfs_spans_dropped_total{reason="export_failed"}); collection goes on'
            )

    def _admit(self, trace_id: str) -> bool:
        """Rate limit per trace: the first record of a trace decides for the whole tree."""
        rate = self.settings.max_spans_per_second
        if rate <= 0:
            return True
        now = self.clock()
        self._tokens = min(rate, self._tokens + (now - self._refill_at) * rate)
        self._refill_at = now
        ok = self._decided.get(trace_id)
        if ok is None:
            ok = self._tokens >= 1
            self._decided[trace_id] = ok
            if len(self._decided) > RECENT_TRACES:
                self._decided.popitem(last=False)
        if ok:
            self._tokens -= 1
        return ok

    def __call__(self, records: Sequence[Any]) -> None:
        for rec in records:
            v = self.describe(rec)
            if v is None or not v.span_id or not v.trace_id:
                continue
            with self._lock:
                if not self._admit(v.trace_id):
                    self.dropped["rate_limited"] += 1
                    continue
                if self._in_flight >= MAX_QUEUE:
                    self.dropped["queue_full"] += 1
                    continue
                self._in_flight += 1
            ident = self.identity(getattr(rec, "cgroup_id", 0))
            self.processor.on_end(to_span(v, ident, self.resource, self.scope, self.server(v.mount)))

    @property
    def in_flight(self) -> int:
        """Spans handed to the processor, neither exported nor failed yet."""
        return self._in_flight

    def flush(self, timeout: float | None = None) -> bool:
        return bool(self.processor.force_flush(int((timeout or self.settings.timeout) * 1000)))

    def close(self) -> None:
        """Flushes what is queued, within the exporter timeout whatever the collector does (the
        SDK's own shutdown may wait longer: its worker is a daemon thread, left behind)."""
        t = threading.Thread(target=self.processor.shutdown, name="bpfnfs-otlp-close", daemon=True)
        t.start()
        t.join(self.settings.timeout + 1)
        with self._lock:  # still queued or in an export that did not finish: not sent
            self.dropped["shutdown"] += self._in_flight
            self._in_flight = 0
        # The handler stays: an export the timeout cut short may still log its retries.


__all__ = [
    "PROTOCOLS",
    "OtlpSettings",
    "OtlpSettingsError",
    "SpanSink",
    "SpanView",
    "resolve",
    "resource",
    "span_attributes",
    "span_exporter",
    "to_span",
]
