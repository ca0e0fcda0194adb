"""The configuration model: every setting bpfnfs has, declared once, in sections.

Flags, environment and the YAML file all land here (config/sources.py merges them:
flags > environment > file > defaults); the defaults live only in this file. The
sections named like the original tool's (filter, probing, features, output, btf,
pprof) accept every key of its README and cmd/config.yaml; the others are bpfnfs's
own. docs/config.md is generated from these declarations (config/docs.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

BY = ("mount", "op", "process", "cgroup", "pod", "file")
COUNTING = ("auto", "fentry", "kprobe")
SORT = ("ops", "bytes", "latency")
TIERS = ("auto", "btf", "tracefs")
COMM_MAX = 15  # TASK_COMM_LEN - 1: the kernel truncates longer names
DEFAULT_PORT = 9763  # bpfnfs's /metrics port (the original tool's :8080 collides with everything)
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+|[A-Za-z0-9]([A-Za-z0-9_.-]{0,252}))$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
BTF_MAGIC = b"\x9f\xeb"  # 0xeB9F, little endian


def parse_duration(value: object, unit: str = "s") -> float:
    """ "10ms", "1.5s", "500us", "2m" or a bare number in `unit` -> that unit."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10ms or 1.5s, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 10ms or 1.5s, got {type(value).__name__}")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"expected a duration such as 10ms, 1.5s or 500us, got {value!r}")
    number, suffix = float(m.group(1)), m.group(2)
    return number if suffix is None else number * _UNIT_S[suffix] / _UNIT_S[unit]


def _seconds(v: object) -> object:
    return parse_duration(v, "s") if isinstance(v, str) else v


def _millis(v: object) -> object:
    return parse_duration(v, "ms") if isinstance(v, str) else v


Seconds = Annotated[float, BeforeValidator(_seconds)]
Millis = Annotated[float, BeforeValidator(_millis)]
Host = Annotated[str, StringConstraints(pattern=_HOST.pattern)]


class ConfigError(ValueError):
    """An invalid setting or file; str() names the key path, what was expected and what was found."""


def listen_address(text: str) -> tuple[str, int]:
    """ "HOST:PORT", "[V6]:PORT", ":PORT" (all addresses) or "PORT" -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]")
    if not port.isdigit() or not (1 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT, :PORT or PORT with a port from 1 to 65535, got {text!r}")
    if host and not _HOST.match(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return host or "0.0.0.0", int(port)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ---- the original tool's sections ------------------------------------------------------------


class Pprof(Section):
    """Profiling of the agent itself (the original's net/http/pprof on :6060)."""

    enable: bool = Field(
        False,
        description="Serve a stack dump of every thread at http://LISTEN/debug/stacks (`kill -USR1` "
        "prints the same to stderr at any time).",
    )
    listen: str = Field("127.0.0.1:6060", description="Address of the stack dump server.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        listen_address(v)
        return v


class Filter(Section):
    """Which tasks and mounts are counted and shown. pid, comm and cgroup are applied in the kernel
    (and can change on SIGHUP without re-attaching); mount and server in user space."""

    func: str = Field(
        "",
        description="Regular expression over kernel function names for custom function probes "
        "(whole-name match, as the original). Validated; the probes themselves are not built yet.",
    )
    struct: str = Field(
        "",
        description="Custom function probes: functions taking a pointer to this struct (e.g. kiocb). "
        "Validated; not built yet.",
    )
    pid: int | None = Field(None, ge=1, le=4194304, description="Only this process (thread group id).")
    comm: str | None = Field(
        None,
        description=f"Only processes with this command name (1 to {COMM_MAX} bytes, as the kernel keeps).",
    )
    cgroup: str | None = Field(
        None,
        min_length=1,
        description="Only this cgroup and below it (absolute, or below the root of the cgroup hierarchy "
        "that collection.cgroup_hierarchy chose).",
    )
    mount: str | None = Field(None, description="Only this mount point.")
    server: Host | None = Field(None, description="Only mounts of this NFS server (host name or address).")

    @field_validator("func")
    @classmethod
    def _func(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression {v!r}: {e}") from None
        return v

    @field_validator("struct")
    @classmethod
    def _struct(cls, v: str) -> str:
        if v and not _IDENT.match(v):
            raise ValueError(f"expected a C struct name such as kiocb, got {v!r}")
        return v

    @field_validator("comm")
    @classmethod
    def _comm(cls, v: str | None) -> str | None:
        if v is not None and not (1 <= len(v.encode()) <= COMM_MAX):
            raise ValueError(f"expected 1 to {COMM_MAX} bytes (the kernel keeps only {COMM_MAX}), got {v!r}")
        return v

    @field_validator("mount")
    @classmethod
    def _mount(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("/"):
            raise ValueError(f"expected an absolute mount point path, got {v!r}")
        return v.rstrip("/") or "/"


def _add_funcs(v: object) -> object:
    """ "f:1,g:2" (the original's form), or a list of "f:1" strings."""
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


class Probing(Section):
    """How custom function probes are found (a later issue builds them; validated now)."""

    all_kmods: bool = Field(False, description="Also search module BTF (the nfs_* functions live in nfs.ko).")
    skip_attach: bool = Field(False, description="Discover and print the functions, then exit (dry run).")
    add_funcs: Annotated[list[str], BeforeValidator(_add_funcs)] = Field(
        default_factory=list,
        description='Extra functions as "name:argument index" (1 to 5), e.g. '
        '"nfs_file_read:1,nfs_file_write:1" or a list.',
    )

    @field_validator("add_funcs")
    @classmethod
    def _entries(cls, v: list[str]) -> list[str]:
        for entry in v:
            name, sep, idx = entry.partition(":")
            if not sep or not _IDENT.match(name) or not idx.isdigit() or not 1 <= int(idx) <= 5:
                raise ValueError(f'expected "function:index" with an index from 1 to 5, got {entry!r}')
        return v

    def funcs(self) -> list[tuple[str, int]]:
        return [(e.partition(":")[0], int(e.partition(":")[2])) for e in self.add_funcs]


class Features(Section):
    debug: bool = Field(
        False, description="Debug logging, with libbpf's own log and the verifier's log of a failing program."
    )
    nfs_metrics: bool = Field(
        True, description="The NFS metric families on /metrics (off: only bpfnfs's own health metrics)."
    )
    nfs_tracer: bool = Field(
        False,
        description="Spans over OTLP (as output.type otlp): one tree per NFS operation (docs/traces.md).",
    )
    dns: bool = Field(
        False,
        description="Resolve NFS server addresses to names and names to addresses for the mount's labels "
        "(cached, off the collection path; see the dns section).",
    )


class OutputFile(Section):
    path: str | None = Field(
        None,
        description="output.type file: append the reports to this file (in a directory: its bpfnfs.log, "
        'as the original\'s "./log").',
    )


class OutputKafka(Section):
    brokers: list[str] = Field(
        default_factory=list, description="Kafka brokers. Not built (nor in the original)."
    )
    topic: str = Field("", description="Kafka topic. Not built (nor in the original).")


class OutputOtel(Section):
    enable: bool = Field(False, description="Spans over OTLP (the original's key; as output.type otlp).")
    endpoint: str = Field(
        "", description="OTLP gRPC HOST:PORT, e.g. localhost:4317 (output.otlp.endpoint wins)."
    )


class OutputOtlp(Section):
    endpoint: str = Field(
        "",
        description="OTLP endpoint: gRPC HOST:PORT or http(s)://HOST:PORT; http/protobuf: a URL (/v1/traces "
        "is added to a bare one). Empty: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else the SDK's default.",
    )
    protocol: Literal["", "grpc", "http/protobuf"] = Field(
        "", description="grpc or http/protobuf. Empty: OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, else grpc."
    )
    insecure: bool = Field(False, description="Plain text instead of TLS (gRPC).")
    timeout: Seconds = Field(10.0, gt=0, le=600, description="Export timeout (seconds, or 10s / 500ms).")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers (e.g. authorization). Empty: OTEL_EXPORTER_OTLP_(TRACES_)HEADERS.",
    )
    compression: Literal["", "gzip", "none"] = Field(
        "", description="gzip or none. Empty: OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION, else none."
    )
    ca_file: Path | None = Field(None, description="CA certificate(s) to verify the collector's (PEM).")
    client_certificate: Path | None = Field(None, description="Client certificate for mutual TLS (PEM).")
    client_key: Path | None = Field(None, description="Its private key (PEM).")
    max_spans_per_second: float = Field(
        1000.0,
        ge=0,
        description="Rate limit, per trace (a tree is sent whole or not at all); 0: none. Dropped spans are "
        "counted by reason.",
    )


class Output(Section):
    type: Literal["", "stdout", "file", "otlp", "kafka"] = Field(
        "", description='Where reports go: "" or stdout, file (output.file.path), otlp, kafka.'
    )
    file: OutputFile = OutputFile()
    stdout: dict[str, Any] = Field(
        default_factory=dict, description="No settings (the original's empty struct)."
    )
    kafka: OutputKafka = OutputKafka()
    otel: OutputOtel = OutputOtel()
    otlp: OutputOtlp = OutputOtlp()


class Btf(Section):
    """BTF for kernels whose own is missing or unusable (no CONFIG_DEBUG_INFO_BTF)."""

    kernel: Path | None = Field(
        None,
        description="A vmlinux BTF file (pahole --btf_encode_detached, or BTFHub), handed to libbpf for "
        "CO-RE and used by bpfnfs's own BTF reads.",
    )
    model_dir: Path = Field(
        Path("/sys/kernel/btf"), description="Directory of module BTF files (sunrpc, nfs, ...)."
    )

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        from bpfnfs.probes.btf import file_problem  # the loader's own check: raw BTF, whole

        if v.is_dir():
            raise ValueError(f"{str(v)!r} is a directory; expected a vmlinux BTF file")
        problem = file_problem(v)
        if problem is not None:
            raise ValueError(f"{str(v)!r}: {problem}")
        return v

    @field_validator("model_dir")
    @classmethod
    def _model_dir(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"{str(v)!r} is not a directory")
        return v


# ---- bpfnfs's own sections -------------------------------------------------------------------


_CGROUP_HIERARCHY = re.compile(r"^(auto|v2|v1(:[a-z_]+)?)$")


class Collection(Section):
    """What the kernel side collects; tier, counting, max_files, proc and cgroup_hierarchy need a restart."""

    interval: Seconds = Field(1.0, ge=0.05, le=3600, description="Seconds between reports (or 500ms, 1m).")
    tier: Literal["auto", "btf", "tracefs"] = Field(
        "auto", description="Hook tier: btf (module BTF: tp_btf, fentry) or tracefs (offsets, kprobes)."
    )
    counting: Literal["auto", "fentry", "kprobe"] = Field(
        "auto",
        description="Programs that count: fentry (cheapest) or kprobe (runs with preemption disabled); "
        "auto: kprobe on preemptible kernels.",
    )
    max_files: int = Field(131072, ge=1024, le=1 << 24, description="Files the kernel tracks at once (LRU).")
    proc: str = Field("/proc", description="procfs to read (a host /proc mounted in a container).")
    retire_interval: Seconds = Field(
        10.0,
        ge=1,
        le=3600,
        description="Seconds between folds of exited processes' and removed cgroups' kernel entries "
        "into retained totals (keeps maps, memory and series flat under pod churn).",
    )
    cgroup_hierarchy: str = Field(
        "auto",
        description="Whose cgroup ids attribute processes: v2, or v1[:CONTROLLER] on hosts with only "
        "cgroup v1 controller hierarchies (kernfs id of the cgroup in that controller's hierarchy, "
        "memory first); auto: v1 when /sys/fs/cgroup is not cgroup2 (kubelet's rule).",
    )
    per_pid: bool = Field(
        False,
        description="Key syscall-side stats by process id too. On by itself with view.by process, "
        "filter.pid or metrics.pid_labels.",
    )

    @field_validator("cgroup_hierarchy")
    @classmethod
    def _cgroup_hierarchy(cls, v: str) -> str:
        if not _CGROUP_HIERARCHY.match(v):
            raise ValueError(f"expected auto, v2, v1 or v1:CONTROLLER (e.g. v1:memory), got {v!r}")
        return v


class Metrics(Section):
    """The Prometheus exporter (docs/metrics.md); budgets apply on SIGHUP, listen needs a restart."""

    listen: str | None = Field(
        None, description=f"Serve /metrics, /healthz and /readyz on [HOST]:PORT (e.g. :{DEFAULT_PORT})."
    )
    compat: bool = Field(False, description="Also the original bpfnfs's six per-file series.")
    top_files: int = Field(10, ge=0, le=1000, description="File series per mount, the busiest recently.")
    max_identities: int = Field(
        500, ge=1, le=100000, description="(comm, cgroup) series per mount before folding into _other."
    )
    pid_labels: bool = Field(False, description="Add a pid label to per-process series.")
    pod_labels: bool = Field(
        True,
        description="namespace, pod and container labels on per-process series, and pod, namespace and "
        "persistentvolumeclaim on the mounts of pod volumes (from the cgroup and the Kubernetes API).",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            listen_address(v)
        return v

    @property
    def listen_address(self) -> tuple[str, int] | None:
        return listen_address(self.listen) if self.listen is not None else None


class View(Section):
    """The table and JSON reports of run and stat, and top's starting view."""

    by: Literal["mount", "op", "process", "cgroup", "pod", "file"] = Field(
        "mount",
        description="Group by mount (RPC ops), op (syscall side), process, cgroup, pod (Kubernetes, "
        "from the cgroup) or file.",
    )
    sort: Literal["ops", "bytes", "latency"] = Field("ops", description="Order of rows.")
    top: int = Field(20, ge=1, le=10000, description="Files per mount with by: file.")
    all_ops: bool = Field(False, description="Table: every op, not only the ones that moved.")
    format: Literal["table", "json"] = Field(
        "table", description="table, or json: one JSON document per interval (trace: per line) on stdout."
    )
    count: int | None = Field(None, ge=1, description="Stop after this many reports (trace: lines).")
    quiet: bool = Field(False, description="No per-interval output (with metrics.listen).")


class Trace(Section):
    """bpfnfs trace."""

    min_latency: Millis = Field(
        10.0,
        ge=0,
        le=3_600_000,
        description="Operations at least this slow (ms, or 10ms, 1.5s, 500us); 0: all. With spans (and OTLP "
        "spans): the root's threshold.",
    )
    rpc: bool = Field(False, description="Also slow RPCs (queue, RTT and execute times).")
    duration: Seconds | None = Field(None, gt=0, description="Stop after this long.")
    spans: bool = Field(
        False,
        description="Whole operation trees: an operation with the RPCs it started (its children), with "
        "trace and span ids. A tree is kept, in the kernel, when its root took min_latency or longer, "
        "failed, or is sampled (sample_ratio); RPCs no operation started (writeback) are roots.",
    )
    sample_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        description="With spans (and OTLP spans): the share of the other trees kept too (0 to 1).",
    )


class Dns(Section):
    """features.dns: the resolver cache."""

    ttl: Seconds = Field(300.0, gt=0, le=86400, description="How long an answer is kept.")
    negative_ttl: Seconds = Field(30.0, gt=0, le=86400, description="How long a failure is kept.")
    timeout: Seconds = Field(2.0, gt=0, le=60, description="A lookup slower than this counts as failed.")


class Kubernetes(Section):
    """Pod, container and volume names from the Kubernetes API (pods of this node, watched)."""

    enable: bool | Literal["auto"] = Field(
        "auto",
        description="Watch this node's pods: auto = when running in a pod (KUBERNETES_SERVICE_HOST) "
        "or kubeconfig is set. Without the API, pods are labelled with the UID and container id "
        "their cgroup path gives.",
    )
    kubeconfig: Path | None = Field(
        None, description="A kubeconfig file (default: in-cluster configuration)."
    )
    node_name: str | None = Field(
        None, description="This node's name (NODE_NAME in the environment; default: the host name)."
    )

    def enabled(self, env: Mapping[str, str]) -> bool:
        if self.enable == "auto":
            return self.kubeconfig is not None or bool(env.get("KUBERNETES_SERVICE_HOST"))
        return bool(self.enable)

    @field_validator("enable", mode="before")
    @classmethod
    def _enable(cls, v: Any) -> Any:
        if isinstance(v, bool) or v == "auto":
            return v
        s = str(v).strip().lower()
        if s in ("true", "yes", "on", "1"):
            return True
        if s in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"expected true, false or auto, got {v!r}")

    @field_validator("kubeconfig")
    @classmethod
    def _kubeconfig(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v


class Config(Section):
    """The whole configuration."""

    collection: Collection = Collection()
    filter: Filter = Filter()
    view: View = View()
    metrics: Metrics = Metrics()
    trace: Trace = Trace()
    dns: Dns = Dns()
    features: Features = Features()
    btf: Btf = Btf()
    probing: Probing = Probing()
    output: Output = Output()
    pprof: Pprof = Pprof()
    kubernetes: Kubernetes = Kubernetes()

    @model_validator(mode="before")
    @classmethod
    def _per_pid(cls, data: Any) -> Any:
        """per_pid follows the settings that need it unless set explicitly."""
        if not isinstance(data, dict):
            return data
        col = data.get("collection")
        if isinstance(col, BaseModel):
            return data
        if isinstance(col, dict) and "per_pid" in col:
            return data

        def get(section: str, key: str) -> Any:
            s = data.get(section)
            if isinstance(s, BaseModel):
                return getattr(s, key, None)
            return s.get(key) if isinstance(s, dict) else None

        if get("view", "by") == "process" or get("filter", "pid") is not None or get("metrics", "pid_labels"):
            data = {**data, "collection": {**(col if isinstance(col, dict) else {}), "per_pid": True}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.view.quiet and self.metrics.listen is None:
            raise ValueError("view.quiet needs metrics.listen (otherwise bpfnfs would show nothing)")
        return self

    @property
    def otlp_spans(self) -> bool:
        """Spans over OTLP: output.type otlp, or the original's features.nfs_tracer / output.otel.enable."""
        return self.output.type == "otlp" or self.features.nfs_tracer or self.output.otel.enable

    def replace(self, **sections: dict[str, Any]) -> Config:
        """A copy with some keys changed, validated: replace(filter={"pid": 1})."""
        data = self.model_dump()
        for name, values in sections.items():
            data[name] = {**data[name], **values}
        return Config.model_validate(data)


# Keys whose change needs a restart (SIGHUP keeps the old value and says so).
RESTART_KEYS = (
    "collection.tier",
    "collection.counting",
    "collection.max_files",
    "collection.proc",
    "collection.cgroup_hierarchy",
    "btf.kernel",
    "btf.model_dir",
    "metrics.listen",
    "metrics.compat",
    "metrics.pid_labels",  # the label set of every per-process family
    "metrics.pod_labels",
    "kubernetes.enable",
    "kubernetes.kubeconfig",
    "kubernetes.node_name",
    "pprof.enable",
    "pprof.listen",
    "probing.all_kmods",
    "probing.skip_attach",
    "probing.add_funcs",
    "filter.func",
    "filter.struct",
    "output.type",
    "output.file.path",
    # spans over OTLP: the exporter and the kernel's tree settings are made once, at start
    "features.nfs_tracer",
    "output.otel.enable",
    "output.otel.endpoint",
    "output.otlp.endpoint",
    "output.otlp.protocol",
    "output.otlp.insecure",
    "output.otlp.timeout",
    "output.otlp.headers",
    "output.otlp.compression",
    "output.otlp.ca_file",
    "output.otlp.client_certificate",
    "output.otlp.client_key",
    "output.otlp.max_spans_per_second",
    "trace.rpc",
    "trace.min_latency",
    "trace.spans",
    "trace.sample_ratio",
)
