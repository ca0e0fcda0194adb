"""Prometheus exposition of the agent's reports (docs/metrics.md lists every series).

The collection loop calls `update()` once per interval; it builds the whole set
of metric families from that interval's report and swaps it in with a single
reference assignment. A scrape only serialises the set it finds, so it never
waits for the kernel, never blocks collection and never sees a half-built set.
Series exist only for what the latest report holds: a mount that went away,
a process or cgroup that exited, a file that fell out of the top N, all stop
being exported.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bpfnfs.collect.histogram import Log2Hist, upper_bound_us
from bpfnfs.collect.records import HIST_SLOTS
from bpfnfs.collect.snapshot import FileStats
from bpfnfs.collect.views import MountReport, Report
from bpfnfs.config import Config
from bpfnfs.enrich.identity import Identity

MOUNT_LABELS = ("mount", "server", "export", "nfs_version")
# Kernel slot k holds (2^k, 2^(k+1)] µs, so it is exactly the bucket le=2^(k+1) µs.
# The last slot also takes everything slower (the kernel clamps), so it maps to +Inf.
BUCKET_BOUNDS = tuple(floatToGoString(upper_bound_us(k) / 1e6) for k in range(HIST_SLOTS - 1))
POD_LABELS = ["namespace", "pod", "container"]  # Kubernetes' own label names (kube-state-metrics)
VOLUME_LABELS = ["namespace", "pod", "pod_uid", "volume", "persistentvolume", "persistentvolumeclaim"]
OTHER = "_other"  # identities beyond the budget, folded together
UNATTRIBUTED = "_unattributed"  # wire I/O with no known issuer (e.g. writeback of an evicted file)
# Files: activity score half-life, in collection intervals' worth of decay per second.
FILE_SCORE_HALF_LIFE_S = 30.0

# (self-accounting counter, map it is about) for bpfnfs_map_full_total.
# bpfnfs_spans_dropped_total's reasons -> counters (the kernel's span_*, the sink's spans_*).
SPAN_DROPS = (
    ("unsampled", "span_unsampled"),
    ("parent_dropped", "span_parent_dropped"),
    ("tree_full", "span_tree_full"),
    ("pending_full", "span_pending_full"),
    ("tree_lost", "span_tree_lost"),
    ("ringbuf_full", "ringbuf_drops"),
    ("rate_limited", "spans_rate_limited"),
    ("queue_full", "spans_queue_full"),
    ("export_failed", "spans_export_failed"),
    ("shutdown", "spans_shutdown"),
)
MAP_FULL = (
    ("rpc_map_full", "rpc_stats"),
    ("io_map_full", "io_stats"),
    ("clnt_map_full", "clients"),
    ("vfs_map_full", "vfs_stats"),
    ("owner_map_full", "owners"),
    ("err_map_full", "errors"),
)


@dataclass(frozen=True)
class Probe:
    probe: str  # the hooked function or tracepoint
    kind: str  # fentry, fexit, kprobe, kretprobe, tracepoint, raw_tp, tp_btf
    attached: bool


@dataclass
class AgentStatus:
    """What the exporter shows about the agent itself."""

    version: str
    tier: str  # "" until attached
    libbpf: str
    kernel: str
    probes: list[Probe] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    collection_seconds: float = 0.0
    collected_at: float = 0.0  # wall clock, seconds since the epoch
    mountinfo_parse_errors: int = 0
    counting: tuple[str, str] | None = None  # (counting method, preemption model)
    config_reloads: int = 0  # SIGHUP reloads read and applied (or found unchanged)
    config_reload_failures: int = 0  # invalid files on SIGHUP (the old configuration stayed)
    dns: dict[str, Any] | None = None  # DnsCache.stats() with features.dns
    kubernetes: dict[str, Any] | None = None  # PodWatcher stats with the Kubernetes API on
    unparsed_cgroups: int = 0  # kubepods cgroups whose path gave no pod UID (labelled raw)


def hist_buckets(h: Log2Hist) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets of a kernel log2 histogram: no count or sum is lost."""
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, c in zip(BUCKET_BOUNDS, h.counts, strict=False):
        acc += c
        out.append((bound, acc))
    out.append(("+Inf", h.count))
    return out


def _mount_values(m: MountReport) -> list[str]:
    return [m.mount_point, m.server or "", m.export or "", m.nfs_version or ""]


class _Families:
    """Metric families by name, created on first use, in a stable order."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}

    def counter(self, name: str, doc: str, labels: Iterable[str]) -> CounterMetricFamily:
        f = self.by_name.get(name)
        if f is None:
            f = self.by_name[name] = CounterMetricFamily(name, doc, labels=list(labels))
        return f  # type: ignore[return-value]

    def gauge(self, name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
        f = self.by_name.get(name)
        if f is None:
            f = self.by_name[name] = GaugeMetricFamily(name, doc, labels=list(labels))
        return f  # type: ignore[return-value]

    def histogram(self, name: str, doc: str, labels: Iterable[str]) -> HistogramMetricFamily:
        f = self.by_name.get(name)
        if f is None:
            f = self.by_name[name] = HistogramMetricFamily(name, doc, labels=list(labels))
        return f  # type: ignore[return-value]


IdKey = tuple[str, ...]  # (comm, cgroup[, namespace, pod, container][, pid]) label values


@dataclass
class _IdRow:
    """One identity's cumulative figures on one mount."""

    ops: dict[str, int] = field(default_factory=dict)
    latency_ns: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    read: int = 0
    write: int = 0
    server_read: int = 0
    server_write: int = 0
    ambiguous: int = 0
    activity: int = 0

    def add_vfs(self, op: str, calls: int, latency_ns: int, errors: int, nbytes: int) -> None:
        self.ops[op] = self.ops.get(op, 0) + calls
        self.latency_ns[op] = self.latency_ns.get(op, 0) + latency_ns
        self.errors[op] = self.errors.get(op, 0) + errors
        self.activity += calls
        if op == "read":
            self.read += nbytes
        elif op == "write":
            self.write += nbytes

    def __add__(self, o: _IdRow) -> _IdRow:
        r = _IdRow(dict(self.ops), dict(self.latency_ns), dict(self.errors))
        for op in o.ops:
            r.add_vfs(op, o.ops[op], o.latency_ns[op], o.errors[op], 0)
        r.read, r.write = self.read + o.read, self.write + o.write
        r.server_read, r.server_write = self.server_read + o.server_read, self.server_write + o.server_write
        r.ambiguous, r.activity = self.ambiguous + o.ambiguous, self.activity + o.activity
        return r


@dataclass
class _IdentityBudget:
    """Per mount: which identities get their own series. Admission is sticky and in
    order of first appearance, so the folded `_other` series only ever grows; an
    admitted identity that goes away frees its slot and its series end."""

    admitted: set[IdKey] = field(default_factory=set)
    retired: set[IdKey] = field(default_factory=set)
    folded: set[IdKey] = field(default_factory=set)  # once folded, always folded


class BpfnfsCollector(Collector):
    def __init__(
        self,
        cfg: Config,
        identity: Callable[[int], Identity],
        pid_alive: Callable[[int], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.identity = identity  # enrich.identity.IdentityResolver.of: the one resolver
        self.pid_alive = pid_alive or (lambda pid: os.path.exists(f"{cfg.collection.proc}/{pid}"))
        # What a scrape serves: the per-mount families are rendered from the last report only
        # when scraped (most of the rendering cost, and Prometheus scrapes every 15-60 s while
        # the agent collects every second); everything with state across intervals (identity
        # budget, file activity) is built at every update. One reference swap per update.
        self._state: tuple[tuple[MountReport, ...], list[Metric]] = ((), [])
        self._rendered: tuple[object, list[Metric]] | None = None
        self._render_lock = threading.Lock()
        self._budgets: dict[str, _IdentityBudget] = {}
        self._file_scores: dict[tuple[int, int], float] = {}
        self._file_prev: dict[tuple[int, int], FileStats] = {}
        self._labels: dict[IdKey, IdKey] = {}  # identity key -> label values, fixed at first sight
        self._seen: set[IdKey] = set()
        self._provisional: set[IdKey] = set()  # pods whose names the API has not given yet
        self.folded = 0

    # The registry calls describe() at registration; returning nothing keeps it
    # from calling collect() before the first report exists.
    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        state = self._state
        with self._render_lock:  # concurrent scrapes render once
            done = self._rendered
            if done is None or done[0] is not state:
                fams = _Families()
                for m in state[0] if self.cfg.features.nfs_metrics else ():
                    self._mount(fams, m)
                done = self._rendered = (state, list(fams.by_name.values()))
        return iter(done[1] + state[1])

    # ---- building -------------------------------------------------------------------------

    def update(self, rep: Report | None, status: AgentStatus, seconds: float = 1.0) -> None:
        """Rebuild every family from `rep` (cumulative figures); `seconds` since the last update."""
        fams = _Families()
        exported = folded = retired = 0
        self._seen = set()
        if rep is not None and self.cfg.features.nfs_metrics:  # off: only the agent's own families
            live = set()
            for m in rep.mounts:
                live.add(m.mount_point)
                e, f, r = self._identities(fams, m)
                exported, folded, retired = exported + e, folded + f, retired + r
            self._files(fams, rep, seconds)
            for gone in set(self._budgets) - live:
                del self._budgets[gone]
            self._labels = {k: v for k, v in self._labels.items() if k in self._seen}
            self._provisional &= self._seen
        self.folded = folded
        self._self(fams, status, rep, {"exported": exported, "folded": folded, "retired": retired})
        mounts = tuple(rep.mounts) if rep is not None else ()
        self._state = (mounts, list(fams.by_name.values()))  # one swap: scrapes see old or new

    def _mount(self, fams: _Families, m: MountReport) -> None:
        mv = _mount_values(m)
        fams.gauge(
            "bpfnfs_mount_info",
            "An NFS mount bpfnfs follows (value 1).",
            [*MOUNT_LABELS, "dev", "fstype"],
        ).add_metric([*mv, m.dev, m.fstype], 1)
        if m.server_name and m.server_address:  # a series of its own: a late DNS answer relabels no other
            fams.gauge(
                "bpfnfs_mount_server_info",
                "The server's name and address, once DNS has answered (features.dns; value 1).",
                [*MOUNT_LABELS, "server_name", "server_address"],
            ).add_metric([*mv, m.server_name, m.server_address], 1)
        if m.volume is not None and self.cfg.metrics.pod_labels:  # join on mount: group_left(pod, ...)
            v = m.volume
            fams.gauge(
                "bpfnfs_mount_volume_info",
                "The pod volume this mount is (kubelet's path, the pod and the claim from the API; value 1).",
                [*MOUNT_LABELS, *VOLUME_LABELS],
            ).add_metric([*mv, *(v.get(k, "") for k in VOLUME_LABELS)], 1)
        io = m.io
        rb = fams.counter(
            "bpfnfs_read_bytes_total",
            "Bytes applications read from the mount (mountstats normal/direct read bytes).",
            [*MOUNT_LABELS, "io"],
        )
        rb.add_metric([*mv, "buffered"], io.read_bytes)
        rb.add_metric([*mv, "direct"], io.direct_read_bytes)
        wb = fams.counter(
            "bpfnfs_write_bytes_total",
            "Bytes applications wrote to the mount (mountstats normal/direct write bytes).",
            [*MOUNT_LABELS, "io"],
        )
        wb.add_metric([*mv, "buffered"], io.write_bytes)
        wb.add_metric([*mv, "direct"], io.direct_write_bytes)
        fams.counter(
            "bpfnfs_server_read_bytes_total",
            "READ payload bytes the server returned (mountstats server read bytes).",
            MOUNT_LABELS,
        ).add_metric(mv, io.server_read_bytes)
        fams.counter(
            "bpfnfs_server_write_bytes_total",
            "WRITE payload bytes the server accepted (mountstats server write bytes).",
            MOUNT_LABELS,
        ).add_metric(mv, io.server_write_bytes)

        ol = [*MOUNT_LABELS, "op"]
        for op, s in sorted(m.ops.items()):
            if not s.ops:
                continue
            lv = [*mv, op]
            fams.counter("bpfnfs_rpc_operations_total", "RPCs completed, per NFS operation.", ol).add_metric(
                lv, s.ops
            )
            fams.counter(
                "bpfnfs_rpc_retransmissions_total", "RPC transmissions beyond the first.", ol
            ).add_metric(lv, max(0, s.ntrans - s.ops))
            fams.counter("bpfnfs_rpc_timeouts_total", "RPC major timeouts.", ol).add_metric(lv, s.timeouts)
            fams.counter("bpfnfs_rpc_sent_bytes_total", "RPC bytes sent, headers included.", ol).add_metric(
                lv, s.bytes_sent
            )
            fams.counter(
                "bpfnfs_rpc_received_bytes_total", "RPC bytes received, headers included.", ol
            ).add_metric(lv, s.bytes_recv)
            for name, h, doc in (
                ("bpfnfs_rpc_queue_seconds", s.queue, "Time RPCs waited before transmission."),
                ("bpfnfs_rpc_rtt_seconds", s.rtt, "RPC round trip time (transmission to reply)."),
                ("bpfnfs_rpc_execute_seconds", s.execute, "RPC time from start to completion."),
            ):
                fams.histogram(name, doc, ol).add_metric(lv, hist_buckets(h), h.sum_ns / 1e9)
        for op, v in sorted(m.vfs_by_op().items()):
            if not v.calls:
                continue
            fams.histogram(
                "bpfnfs_vfs_operation_duration_seconds",
                "Syscall-side NFS operations (file and inode operations) and their latency.",
                ol,
            ).add_metric([*mv, op], hist_buckets(v.latency), v.latency_ns / 1e9)
        layer_metric = {
            "rpc": ("bpfnfs_rpc_errors_total", "errno", "RPCs that ended with an error, by errno."),
            "server": (
                "bpfnfs_server_errors_total",
                "status",
                "Replies carrying an NFS error status (NFSv4: the failing operation in the COMPOUND).",
            ),
            "vfs": ("bpfnfs_vfs_errors_total", "errno", "Syscall-side operations that returned an error."),
        }
        for (layer, op, name), n in sorted(m.errors.items()):
            if not n or layer not in layer_metric:
                continue
            metric, label, doc = layer_metric[layer]
            fams.counter(metric, doc, [*MOUNT_LABELS, "op", label]).add_metric([*mv, op, name], n)

    def _identity(self, pid: int, cg: int, comm: str) -> tuple[IdKey, bool]:
        """The key of a (pid, cgroup, comm) and whether it still exists. Keys hold the cgroup
        id, not its path: a removed cgroup must stay the same identity to be retired. Label
        values are fixed at first sight, except a pod's names, which replace its UID once the
        Kubernetes API has given them (one change of series, then fixed)."""
        pid = pid if self.cfg.metrics.pid_labels else 0
        key = (comm, str(cg), str(pid))
        ident = self.identity(cg)
        if key not in self._labels or key in self._provisional:
            if not cg and not comm:
                labels: IdKey = (UNATTRIBUTED, UNATTRIBUTED)
            else:
                labels = (comm, ident.cgroup_label)
            if self.cfg.metrics.pod_labels:
                labels = (
                    *labels,
                    ident.namespace or "",
                    ident.pod or ident.pod_uid or "",
                    ident.container or "",
                )
                if ident.pod_uid is not None and ident.pod is None and not ident.removed:
                    self._provisional.add(key)
                else:
                    self._provisional.discard(key)
            self._labels[key] = (*labels, str(pid) if pid else "") if self.cfg.metrics.pid_labels else labels
        self._seen.add(key)
        alive = not cg or not ident.removed
        if pid:
            alive = alive and self.pid_alive(pid)
        return key, alive

    def _id_labels(self) -> list[str]:
        m = self.cfg.metrics
        return ["comm", "cgroup"] + (POD_LABELS if m.pod_labels else []) + (["pid"] if m.pid_labels else [])

    def _identities(self, fams: _Families, m: MountReport) -> tuple[int, int, int]:
        rows: dict[IdKey, _IdRow] = {}
        alive: dict[IdKey, bool] = {}

        def row(pid: int, cg: int, comm: str) -> _IdRow:
            ident, ok = self._identity(pid, cg, comm)
            alive[ident] = alive.get(ident, True) and ok
            return rows.setdefault(ident, _IdRow())

        for (op, pid, cg, comm), v in m.vfs.items():
            if v.calls:
                row(pid, cg, comm).add_vfs(op, v.calls, v.latency_ns, v.errors, v.bytes)
        for (pid, cg, comm), o in m.owners.items():
            if o.read_rpcs or o.write_rpcs or o.commit_rpcs:
                r = row(pid, cg, comm)
                r.server_read += o.read_bytes
                r.server_write += o.write_bytes
                r.ambiguous += o.ambiguous_write_bytes
                r.activity += o.read_rpcs + o.write_rpcs

        budget = self._budgets.setdefault(m.mount_point, _IdentityBudget())
        # Admitted identities that went away: their series end, their slot frees up.
        for ident in [i for i in budget.admitted if i in rows and not alive[i]]:
            budget.admitted.discard(ident)
            budget.retired.add(ident)
        present = set(rows)
        budget.admitted &= present
        budget.retired &= present
        budget.folded &= present
        room = self.cfg.metrics.max_identities - len(budget.admitted)
        fresh = [i for i in rows if i not in budget.admitted | budget.retired | budget.folded and alive[i]]
        fresh.sort(key=lambda i: (-rows[i].activity, i))
        budget.admitted.update(fresh[: max(0, room)])
        budget.folded |= present - budget.admitted - budget.retired

        out: dict[IdKey, _IdRow] = {}
        other = (OTHER,) * len(self._id_labels())
        folded = 0
        for ident, r in rows.items():
            if ident in budget.admitted:
                out[self._labels[ident]] = r
            elif ident not in budget.retired:
                folded += 1
                out[other] = out[other] + r if other in out else r

        mv = _mount_values(m)
        il = [*MOUNT_LABELS, *self._id_labels()]
        ops = fams.counter(
            "bpfnfs_process_operations_total",
            "Syscall-side operations per process (comm) and cgroup.",
            [*il, "op"],
        )
        secs = fams.counter(
            "bpfnfs_process_operation_seconds_total",
            "Time spent in syscall-side operations per process and cgroup.",
            [*il, "op"],
        )
        errs = fams.counter(
            "bpfnfs_process_errors_total",
            "Syscall-side operations that failed, per process and cgroup.",
            [*il, "op"],
        )
        for ident, r in sorted(out.items()):
            lv = [*mv, *ident]
            for op in sorted(r.ops):
                ops.add_metric([*lv, op], r.ops[op])
                secs.add_metric([*lv, op], r.latency_ns[op] / 1e9)
                errs.add_metric([*lv, op], r.errors[op])
            for value, name, doc in (
                (r.read, "bpfnfs_process_read_bytes_total", "Bytes read through read(2) and friends."),
                (r.write, "bpfnfs_process_write_bytes_total", "Bytes written through write(2) and friends."),
                (
                    r.server_read,
                    "bpfnfs_process_server_read_bytes_total",
                    "READ RPC payload billed to the task that issued it (readahead included).",
                ),
                (
                    r.server_write,
                    "bpfnfs_process_server_write_bytes_total",
                    "WRITE RPC payload billed to the file's last dirtier (writeback included).",
                ),
                (
                    r.ambiguous,
                    "bpfnfs_process_ambiguous_write_bytes_total",
                    "Part of the billed WRITE bytes of files several cgroups dirtied before a flush.",
                ),
            ):
                fams.counter(name, doc, il).add_metric(lv, value)
        return len(out) - (1 if folded else 0), folded, len(budget.retired)

    def _files(self, fams: _Families, rep: Report, seconds: float) -> None:
        n = self.cfg.metrics.top_files
        decay = 0.5 ** (max(seconds, 0.0) / FILE_SCORE_HALF_LIFE_S)
        scores: dict[tuple[int, int], float] = {}
        prev: dict[tuple[int, int], FileStats] = {}
        for m in rep.mounts:
            for fid, f in m.files.items():
                key = (m.kdev, fid)
                if key in prev:
                    continue  # several mounts of one superblock: score the file once
                p = self._file_prev.get(key, FileStats())
                d = f - p
                moved = max(0, d.ops) + max(0, d.bytes + d.wire_read_bytes + d.wire_write_bytes) / 65536
                score = self._file_scores.get(key, 0.0) * decay + moved
                prev[key] = f
                if score > 1e-3:
                    scores[key] = score
        self._file_prev, self._file_scores = prev, scores
        if not n:
            return
        fl = [*MOUNT_LABELS, "fileid", "path"]
        for m in rep.mounts:
            ranked = sorted(
                ((scores[(m.kdev, fid)], fid) for fid in m.files if (m.kdev, fid) in scores), reverse=True
            )
            for _score, fid in ranked[:n]:
                f = m.files[fid]
                sb_path = rep.paths.get((m.kdev, fid), (None, False))[0]
                path = m.path_of(sb_path)[1]
                if sb_path is not None and path is None:
                    continue  # outside this mount's subtree
                lv = [*_mount_values(m), str(fid), path or ""]
                for name, value, doc in (
                    ("bpfnfs_file_operations_total", f.ops, "Syscall-side operations on the file."),
                    ("bpfnfs_file_read_bytes_total", f.read_bytes, "Bytes read from the file."),
                    ("bpfnfs_file_write_bytes_total", f.write_bytes, "Bytes written to the file."),
                    ("bpfnfs_file_server_read_bytes_total", f.wire_read_bytes, "READ RPC payload."),
                    ("bpfnfs_file_server_write_bytes_total", f.wire_write_bytes, "WRITE RPC payload."),
                    ("bpfnfs_file_errors_total", f.errors, "Failed syscall-side operations on the file."),
                ):
                    fams.counter(name, doc + " Top files per mount only.", fl).add_metric(lv, value)
                fams.counter(
                    "bpfnfs_file_operation_seconds_total",
                    "Time in syscall-side operations on the file. Top files per mount only.",
                    fl,
                ).add_metric(lv, f.latency_ns / 1e9)

    def _programs(self, fams: _Families, rep: Report) -> None:
        """Per counting hook and per BPF program: what the kernel skipped. Series of a figure the
        kernel does not keep (recursion_misses before 5.12) are absent, never 0."""
        hl = fams.counter(
            "bpfnfs_hook_events_lost_total",
            "Events of a counting hook that bpfnfs missed: the kernel skipped its program there, "
            "which was already running on that CPU.",
            ["hook"],
        )
        for h, x in sorted(rep.snapshot.hooks.items()):
            if x.lost is not None:
                hl.add_metric([h], x.lost)
        rm = fams.counter(
            "bpfnfs_bpf_program_recursion_misses_total",
            "Runs the kernel skipped because the program (or, for kprobes and classic tracepoints, any "
            "such program or a BPF map syscall) was already running on that CPU.",
            ["program"],
        )
        rc = fams.counter(
            "bpfnfs_bpf_program_runs_total",
            "Runs of the program (while kernel.bpf_stats_enabled=1).",
            ["program"],
        )
        rt = fams.counter(
            "bpfnfs_bpf_program_run_seconds_total",
            "Time spent in the program (while kernel.bpf_stats_enabled=1).",
            ["program"],
        )
        for name, ps in sorted(rep.snapshot.programs.items()):
            if ps.recursion_misses is not None:
                rm.add_metric([name], ps.recursion_misses)
            if ps.run_cnt is not None:
                rc.add_metric([name], ps.run_cnt)
            if ps.run_time_ns is not None:
                rt.add_metric([name], ps.run_time_ns / 1e9)

    def _self(self, fams: _Families, st: AgentStatus, rep: Report | None, identities: dict[str, int]) -> None:
        c = rep.snapshot.counters if rep is not None else st.counters
        fams.gauge(
            "bpfnfs_build_info",
            "bpfnfs version, hook tier, libbpf and kernel release (value 1).",
            ["version", "tier", "libbpf", "kernel"],
        ).add_metric([st.version, st.tier, st.libbpf, st.kernel], 1)
        pa = fams.gauge(
            "bpfnfs_probe_attached", "1 if the probe is attached, 0 if it could not be.", ["probe", "kind"]
        )
        for p in sorted({(p.probe, p.kind): p for p in st.probes}.values(), key=lambda p: (p.probe, p.kind)):
            pa.add_metric([p.probe, p.kind], 1 if p.attached else 0)
        lost = fams.counter(
            "bpfnfs_events_lost_total", "Per-op records lost, by where they were lost.", ["reason"]
        )
        lost.add_metric(["ringbuf_full"], c.get("ringbuf_drops", 0))
        lost.add_metric(["queue_full"], c.get("events_overflow", 0))
        if "spans_exported" in c:  # spans over OTLP
            fams.counter("bpfnfs_spans_exported_total", "Spans the OTLP collector accepted.", []).add_metric(
                [], c["spans_exported"]
            )
            sd = fams.counter(
                "bpfnfs_spans_dropped_total",
                "Spans not sent, by reason: unsampled and parent_dropped by design (a tree neither slow, "
                "failed nor sampled), the others lost.",
                ["reason"],
            )
            for reason, key in SPAN_DROPS:
                sd.add_metric([reason], c.get(key, 0))
        fams.counter(
            "bpfnfs_map_evictions_total", "Entries an LRU map evicted (their counts restart).", ["map"]
        ).add_metric(["files"], c.get("file_evictions", 0))
        fams.counter(
            "bpfnfs_retired_entries_total",
            "Kernel entries of exited processes and removed cgroups folded into retained totals and deleted.",
            [],
        ).add_metric([], c.get("retired_entries", 0))
        full = fams.counter("bpfnfs_map_full_total", "Updates lost because a kernel map was full.", ["map"])
        for counter, m in MAP_FULL:
            full.add_metric([m], c.get(counter, 0))
        fams.counter(
            "bpfnfs_kretprobe_missed_total", "Function returns a kretprobe missed (tier tracefs).", []
        ).add_metric([], c.get("kretprobe_missed", 0))
        if st.counting is not None:
            fams.gauge(
                "bpfnfs_counting_info",
                "Which programs count (fentry: tp_btf and fentry/fexit; kprobe: classic tracepoints and "
                "kprobes) and the kernel's preemption model that decided it (value 1).",
                ["method", "preemption"],
            ).add_metric(list(st.counting), 1)
        if rep is not None:
            self._programs(fams, rep)
        un = fams.counter(
            "bpfnfs_unattributed_rpcs_total", "READ/WRITE RPCs with no known issuing task.", ["op"]
        )
        un.add_metric(["READ"], c.get("unattributed_reads", 0))
        un.add_metric(["WRITE"], c.get("unattributed_writes", 0))
        fams.counter(
            "bpfnfs_filtered_operations_total", "Syscall-side ops skipped by --pid/--comm/--cgroup.", []
        ).add_metric([], c.get("filtered", 0))
        fams.counter(
            "bpfnfs_mountinfo_parse_errors_total", "mountinfo lines bpfnfs could not parse.", []
        ).add_metric([], st.mountinfo_parse_errors)
        if st.dns is not None:
            fams.counter(
                "bpfnfs_dns_lookups_total", "Server name/address lookups (answered from the cache).", []
            ).add_metric([], st.dns.get("lookups", 0))
            fams.counter(
                "bpfnfs_dns_resolutions_total", "Resolver calls made in the background (features.dns).", []
            ).add_metric([], st.dns.get("resolutions", 0))
            df = fams.counter(
                "bpfnfs_dns_failures_total",
                "Resolver calls that failed: timeout (slower than dns.timeout), not_found, error.",
                ["reason"],
            )
            for reason, n in sorted(st.dns.get("failures", {}).items()):
                df.add_metric([reason], n)
            fams.gauge("bpfnfs_dns_in_flight", "Resolver calls under way.", []).add_metric(
                [], st.dns.get("in_flight", 0)
            )
        if st.kubernetes is not None:
            k = st.kubernetes
            up = fams.gauge(
                "bpfnfs_kubernetes_watch_state",
                "The pod watch: 1 for its state (synced, starting, unreachable, forbidden, misconfigured).",
                ["state"],
            )
            for state in ("synced", "starting", "unreachable", "forbidden", "misconfigured"):
                up.add_metric([state], 1.0 if k.get("state") == state else 0.0)
            fams.gauge("bpfnfs_kubernetes_pods", "Pods of this node known from the API.", []).add_metric(
                [], k.get("pods", 0)
            )
            for key, name, doc in (
                ("lists", "bpfnfs_kubernetes_lists_total", "Full lists of this node's pods."),
                ("events", "bpfnfs_kubernetes_watch_events_total", "Watch events received."),
                (
                    "expired",
                    "bpfnfs_kubernetes_watch_expired_total",
                    "Watches that expired (410 Gone): listed again.",
                ),
                (
                    "errors",
                    "bpfnfs_kubernetes_errors_total",
                    "API requests that failed (the watch backs off).",
                ),
            ):
                fams.counter(name, doc, []).add_metric([], k.get(key, 0))
        fams.counter(
            "bpfnfs_identity_unparsed_cgroups_total",
            "cgroups under kubepods whose path gave no pod UID: labelled with the raw path.",
            [],
        ).add_metric([], st.unparsed_cgroups)
        fams.counter(
            "bpfnfs_config_reloads_total", "Configuration reloads (SIGHUP) that were read and validated.", []
        ).add_metric([], st.config_reloads)
        fams.counter(
            "bpfnfs_config_reload_failures_total",
            "Configuration reloads (SIGHUP) refused as invalid; the running configuration stayed.",
            [],
        ).add_metric([], st.config_reload_failures)
        if rep is not None:
            fams.gauge("bpfnfs_files_tracked", "Files in the kernel's per-file LRU.", []).add_metric(
                [], len(rep.snapshot.files)
            )
            fams.gauge("bpfnfs_files_capacity", "Size of the per-file LRU (--max-files).", []).add_metric(
                [], rep.snapshot.files_capacity
            )
        ig = fams.gauge(
            "bpfnfs_identities",
            "Per-process series: exported, folded into _other (over budget), retired (gone).",
            ["state"],
        )
        for state, n in identities.items():
            ig.add_metric([state], n)
        if st.collected_at:
            fams.gauge(
                "bpfnfs_last_collection_timestamp_seconds", "When the kernel maps were last read.", []
            ).add_metric([], st.collected_at)
            fams.gauge(
                "bpfnfs_collection_duration_seconds", "How long the last read of the kernel maps took.", []
            ).add_metric([], st.collection_seconds)
