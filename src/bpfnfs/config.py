"""The agent's configuration. The CLI builds one from flags; the YAML config file
(a later issue) will build the same object, so every consumer reads only this."""

from __future__ import annotations

import re
from dataclasses import dataclass

BY = ("mount", "op", "process", "cgroup", "file")
COUNTING = ("auto", "fentry", "kprobe")
SORT = ("ops", "bytes", "latency")
COMM_MAX = 15  # TASK_COMM_LEN - 1: the kernel truncates longer names
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+|[A-Za-z0-9]([A-Za-z0-9_.-]{0,252}))$")


class ConfigError(ValueError):
    """An invalid setting; str() names the setting and the accepted values."""


@dataclass(frozen=True)
class Config:
    interval: float = 1.0  # seconds between reports
    count: int | None = None  # stop after this many reports (None: until interrupted)
    json: bool = False  # one JSON document per interval instead of the table
    tier: str = "auto"  # auto | btf | tracefs
    all_ops: bool = False  # table: show every op, not only the ones that moved
    slow_ms: float | None = None  # per-op records for RPCs at least this slow (ring buffer)
    proc: str = "/proc"  # where to read mountinfo (a host /proc in a container)
    by: str = "mount"  # grouping of the table and JSON views
    top: int = 20  # files per interval in the file view
    sort: str = "ops"  # ops | bytes | latency
    max_files: int = 131072  # per-file LRU size in the kernel
    filter_pid: int | None = None
    filter_comm: str | None = None
    filter_cgroup: str | None = None  # path, absolute or below the cgroup2 root
    filter_mount: str | None = None
    filter_server: str | None = None
    # Prometheus exporter (bpfnfs run --listen); see docs/metrics.md for the cardinality budget.
    listen: str | None = None  # "HOST:PORT", ":PORT" or "PORT"; None: no HTTP server
    quiet: bool = False  # no per-interval output (daemon mode)
    compat_metrics: bool = False  # also the original bpfnfs's six per-file gauges
    metrics_top_files: int = 10  # file series per mount
    metrics_max_identities: int = 500  # (comm, cgroup[, pid]) series per mount before folding
    metrics_pid: bool = False  # add the pid label to per-process series
    # bpfnfs trace
    trace_rpc: bool = False  # also slow RPCs, not only syscall-side ops
    # How counting hooks are attached (docs/design.md, "Preemption"): auto picks the
    # kprobe method on preemptible kernels, fentry elsewhere.
    counting: str = "auto"

    def __post_init__(self) -> None:
        if not (0.05 <= self.interval <= 3600):
            raise ConfigError(f"interval must be between 0.05 and 3600 seconds, got {self.interval}")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"count must be at least 1, got {self.count}")
        if self.counting not in COUNTING:
            raise ConfigError(f"counting must be one of {', '.join(COUNTING)}, got {self.counting!r}")
        if self.tier not in ("auto", "btf", "tracefs"):
            raise ConfigError(f"tier must be auto, btf or tracefs, got {self.tier!r}")
        if self.slow_ms is not None and self.slow_ms < 0:
            raise ConfigError(f"slow-ms must be >= 0, got {self.slow_ms}")
        if self.by not in BY:
            raise ConfigError(f"by must be one of {', '.join(BY)}, got {self.by!r}")
        if self.sort not in SORT:
            raise ConfigError(f"sort must be one of {', '.join(SORT)}, got {self.sort!r}")
        if not (1 <= self.top <= 10000):
            raise ConfigError(f"top must be between 1 and 10000, got {self.top}")
        if not (1024 <= self.max_files <= 1 << 24):
            raise ConfigError(f"max-files must be between 1024 and 16777216, got {self.max_files}")
        if self.filter_pid is not None and not (1 <= self.filter_pid <= 4194304):
            raise ConfigError(f"pid must be a process id between 1 and 4194304, got {self.filter_pid}")
        if self.filter_comm is not None and not (1 <= len(self.filter_comm.encode()) <= COMM_MAX):
            raise ConfigError(
                f"comm must be 1 to {COMM_MAX} bytes (the kernel keeps only {COMM_MAX}), "
                f"got {self.filter_comm!r}"
            )
        if self.filter_cgroup is not None and not self.filter_cgroup:
            raise ConfigError("cgroup must be a cgroup v2 path, got an empty string")
        if self.filter_mount is not None and not self.filter_mount.startswith("/"):
            raise ConfigError(f"mount must be an absolute mount point path, got {self.filter_mount!r}")
        if self.filter_server is not None and not _HOST.match(self.filter_server):
            raise ConfigError(f"server must be a host name or IP address, got {self.filter_server!r}")
        if self.listen is not None:
            listen_address(self.listen)
        if not (0 <= self.metrics_top_files <= 1000):
            raise ConfigError(f"metrics-top-files must be between 0 and 1000, got {self.metrics_top_files}")
        if not (1 <= self.metrics_max_identities <= 100000):
            raise ConfigError(
                f"metrics-max-identities must be between 1 and 100000, got {self.metrics_max_identities}"
            )

    @property
    def listen_address(self) -> tuple[str, int] | None:
        return listen_address(self.listen) if self.listen is not None else None


DEFAULT_PORT = 9763  # bpfnfs's /metrics port (the original tool's :8080 collides with everything)


def listen_address(text: str) -> tuple[str, int]:
    """ "HOST:PORT", "[V6]:PORT", ":PORT" (all addresses) or "PORT" -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]")
    if not port.isdigit() or not (1 <= int(port) <= 65535):
        raise ConfigError(
            f"listen must be HOST:PORT, :PORT or PORT with a port from 1 to 65535, got {text!r}"
        )
    if host and not _HOST.match(host):
        raise ConfigError(f"listen: {host!r} is not a host name or IP address")
    return host or "0.0.0.0", int(port)
