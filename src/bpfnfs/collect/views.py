"""Per-mount reports: the kernel's per-client aggregates folded onto mounts,
the way /proc/self/mountstats presents them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bpfnfs.collect.snapshot import IoStats, RpcOpStats, Snapshot
from bpfnfs.enrich.mounts import NfsMount, client_chains


@dataclass
class MountReport:
    mount_point: str
    server: str | None
    export: str | None
    nfs_version: str | None
    fstype: str
    dev: str
    clients: list[int]
    io: IoStats = field(default_factory=IoStats)
    ops: dict[str, RpcOpStats] = field(default_factory=dict)

    def blank(self) -> MountReport:
        """The same mount with every counter at zero (what a new mount diffs against)."""
        return MountReport(
            self.mount_point, self.server, self.export, self.nfs_version, self.fstype, self.dev, self.clients
        )

    def __sub__(self, prev: MountReport) -> MountReport:
        ops = {name: s - prev.ops.get(name, RpcOpStats()) for name, s in self.ops.items()}
        return MountReport(
            self.mount_point,
            self.server,
            self.export,
            self.nfs_version,
            self.fstype,
            self.dev,
            self.clients,
            self.io - prev.io,
            ops,
        )

    def moving_ops(self) -> dict[str, RpcOpStats]:
        return {k: v for k, v in self.ops.items() if v.ops}


@dataclass
class Report:
    snapshot: Snapshot
    mounts: list[MountReport]
    unattributed_clients: list[int]


def build_report(snap: Snapshot, mounts: list[NfsMount], transports: dict[int, str] | None = None) -> Report:
    """transports: rpc_clnt -> rpc_xprt ids (enrich.mounts.client_transports), needed only
    where the kernel gave no parent pointers (tier tracefs)."""
    chains, unattributed = client_chains(mounts, snap.clients, transports)
    by_clid: dict[int, dict[str, RpcOpStats]] = {}
    for (clid, _vers, proc), s in snap.rpc.items():
        per = by_clid.setdefault(clid, {})
        per[proc] = per[proc] + s if proc in per else s
    out: list[MountReport] = []
    for nm in mounts:
        m = nm.mount
        chain = chains.get(nm.key, [])
        ops: dict[str, RpcOpStats] = {}
        for clid in chain:
            for proc, s in by_clid.get(clid, {}).items():
                ops[proc] = ops[proc] + s if proc in ops else s
        out.append(
            MountReport(
                m.mount_point,
                m.server,
                m.export,
                m.nfs_version,
                m.fstype,
                nm.dev_str,
                chain,
                snap.io.get(m.dev, IoStats()),
                ops,
            )
        )
    return Report(snap, out, unattributed)


def diff_report(cur: Report, prev: Report | None) -> list[MountReport]:
    """Per-interval figures for each mount; a new mount diffs against zero."""
    if prev is None:
        return cur.mounts
    before = {m.mount_point: m for m in prev.mounts}
    out = []
    for m in cur.mounts:
        p = before.get(m.mount_point)
        if p is None or p.dev != m.dev:
            p = m.blank()
        out.append(m - p)
    return out


def op_dict(s: RpcOpStats, seconds: float | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(s, k) for k in RpcOpStats.SCALARS}
    d["queue_hist_us_log2"] = s.queue.counts
    d["rtt_hist_us_log2"] = s.rtt.counts
    d["execute_hist_us_log2"] = s.execute.counts
    if seconds:
        d["ops_per_second"] = s.ops / seconds
    return d


def mount_dict(m: MountReport, seconds: float | None = None) -> dict[str, Any]:
    return {
        "mount_point": m.mount_point,
        "server": m.server,
        "export": m.export,
        "nfs_version": m.nfs_version,
        "fstype": m.fstype,
        "dev": m.dev,
        "rpc_clients": m.clients,
        "io": m.io.as_dict(),
        "ops": {name: op_dict(s, seconds) for name, s in sorted(m.ops.items()) if s.ops},
    }
