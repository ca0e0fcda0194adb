"""--compat-bpfnfs-metrics: the original Go bpfnfs's six per-file series, so its
dashboards keep working (names, help, labels and label order as it has them).

They are gauges holding cumulative values, as in the original. What differs, on
purpose: `file_id` is the full 64-bit fileid (the original cut it to 32 bits),
latencies are initiate -> done per RPC matched by (file, offset) rather than by
pid, and series of files, mounts or processes that went away are removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bpfnfs.collect.views import Report

LABELS = (
    "dev_id",
    "file_id",
    "node_name",
    "nfs_server",
    "file_path",
    "mount_path",
    "nfs_pod",
    "nfs_container",
)
# (name, help, FileStats field)
SERIES = (
    ("nfs_read_count", "NFS read count", "wire_reads"),
    ("nfs_write_count", "NFS write count", "wire_writes"),
    ("nfs_read_size", "NFS read size", "wire_read_bytes"),
    ("nfs_write_size", "NFS write size", "wire_write_bytes"),
    ("nfs_read_latencies", "NFS read latencies", "wire_read_ns"),
    ("nfs_write_latencies", "NFS write latencies", "wire_write_ns"),
)


class CompatCollector(Collector):
    def __init__(self, node_name: str | None = None) -> None:
        self.node_name = node_name or os.uname().nodename  # the original used the hostname
        self._families: list[Metric] = []

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)

    def update(self, rep: Report | None) -> None:
        fams = [GaugeMetricFamily(name, doc, labels=list(LABELS)) for name, doc, _f in SERIES]
        seen: set[tuple[int, int]] = set()
        for m in rep.mounts if rep is not None else []:
            server = f"{m.server}:{m.export}" if m.server else (m.export or "")
            for fid, f in m.files.items():
                key = (m.kdev, fid)
                if key in seen:
                    continue  # one series per file, under the first mount that shows it
                sb_path = rep.paths.get(key, (None, False))[0] if rep is not None else None
                rel = m.path_of(sb_path)[0]
                if sb_path is not None and rel is None:
                    continue  # outside this mount's subtree; another mount of the superblock has it
                seen.add(key)
                labels = [
                    str(m.kdev),
                    str(fid),
                    self.node_name,
                    server,
                    (rel or "").lstrip("/"),
                    m.mount_point,
                    "",  # pods: a later issue (attribution by cgroup id)
                    "",
                ]
                for fam, (_name, _doc, attr) in zip(fams, SERIES, strict=True):
                    v = getattr(f, attr)
                    if v > 0:  # as the original: a series appears once it is non-zero
                        fam.add_metric(labels, v)
        self._families = fams  # type: ignore[assignment]
