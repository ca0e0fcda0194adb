"""Per-mount reports: the kernel's per-client aggregates folded onto mounts,
the way /proc/self/mountstats presents them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bpfnfs.collect import records as R
from bpfnfs.collect.errnames import errno_name, nfs4_op_name, nfs_status_name
from bpfnfs.collect.snapshot import (
    FileStats,
    IoStats,
    OwnerStats,
    RpcOpStats,
    Snapshot,
    VfsStats,
    accumulate,
)
from bpfnfs.enrich.identity import RETIRED_CG, RETIRED_LABEL, Identity
from bpfnfs.enrich.mounts import NfsMount, client_chains

VfsRow = tuple[str, int, int, str]  # (op, pid, cgroup_id, comm)
OwnerRow = tuple[int, int, str]  # (pid, cgroup_id, comm)
ErrRow = tuple[str, str, str]  # (layer: rpc|server|vfs, op, errno name)
LAYERS = {R.ERR_RPC: "rpc", R.ERR_XDR: "server", R.ERR_XDR4: "server", R.ERR_VFS: "vfs"}


def _sub_dict(cur: dict[Any, Any], prev: dict[Any, Any], zero: Any) -> dict[Any, Any]:
    return {k: v - prev.get(k, zero) for k, v in cur.items()}


def _folded(cur: dict[Any, Any], prev: dict[Any, Any], retired: Callable[[Any], Any]) -> dict[Any, Any]:
    """prev as if the identities retired since (collect.retire: gone from cur, their figures
    moved to the retired row) had been folded already, so an interval shows only new activity."""
    out = dict(prev)
    for k, v in prev.items():
        if k not in cur and retired(k) in cur:
            r = retired(k)
            out[r] = out[r] + v if r in out else v
            del out[k]
    return out


def path_in_mount(root: str, mount_point: str, sb_path: str | None) -> tuple[str | None, str | None]:
    """(path relative to the mount point, absolute path) of a path below the superblock root,
    for a mount of the subtree `root`; (None, None) outside it or when unknown."""
    if sb_path is None:
        return None, None
    r = root.rstrip("/")
    if r and not (sb_path == r or sb_path.startswith(r + "/")):
        return None, None  # outside this mount's subtree (another mount of the superblock)
    rel = sb_path[len(r) :] or "/"
    return rel, (mount_point.rstrip("/") + rel if rel != "/" else mount_point)


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
    vfs: dict[VfsRow, VfsStats] = field(default_factory=dict)
    owners: dict[OwnerRow, OwnerStats] = field(default_factory=dict)
    errors: dict[ErrRow, int] = field(default_factory=dict)
    files: dict[int, FileStats] = field(default_factory=dict)  # by fileid
    root: str = "/"  # the mount's root inside the superblock (mountinfo field 4)
    kdev: int = 0  # kernel dev_t (major << 20 | minor), the key of per-file data
    server_name: str | None = None  # from DNS (features.dns, enrich.dns.with_dns), once known
    server_address: str | None = None
    server_host: str | None = None  # the host as mounted (host:/export), a name or an address
    client_state: str = "mapped"  # or why its RPC client is not known yet (enrich.mounts)
    volume: dict[str, str] | None = None  # the pod volume it is (enrich.volumes), if any

    def blank(self) -> MountReport:
        """The same mount with every counter at zero (what a new mount diffs against)."""
        return replace(self, io=IoStats(), ops={}, vfs={}, owners={}, errors={}, files={})

    def __sub__(self, prev: MountReport) -> MountReport:
        pv = _folded(self.vfs, prev.vfs, lambda k: (k[0], 0, RETIRED_CG, ""))
        po = _folded(self.owners, prev.owners, lambda _k: (0, RETIRED_CG, ""))
        return replace(
            self,
            io=self.io - prev.io,
            ops=_sub_dict(self.ops, prev.ops, RpcOpStats()),
            vfs=_sub_dict(self.vfs, pv, VfsStats()),
            owners=_sub_dict(self.owners, po, OwnerStats()),
            errors=_sub_dict(self.errors, prev.errors, 0),
            files=_sub_dict(self.files, prev.files, FileStats()),
        )

    def vfs_by_op(self) -> dict[str, VfsStats]:
        out: dict[str, VfsStats] = {}
        for (op, _pid, _cg, _comm), v in self.vfs.items():
            accumulate(out, op, v)
        return out

    def errors_by_op(self) -> dict[tuple[str, str], dict[str, int]]:
        """(layer, op) -> {errno name: count}, only what moved."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for (layer, op, name), n in self.errors.items():
            if n:
                out.setdefault((layer, op), {})[name] = n
        return out

    def path_of(self, sb_path: str | None) -> tuple[str | None, str | None]:
        """(path relative to the mount point, absolute path) of a superblock-relative path."""
        return path_in_mount(self.root, self.mount_point, sb_path)

    def moving_ops(self) -> dict[str, RpcOpStats]:
        return {k: v for k, v in self.ops.items() if v.ops}


@dataclass
class Report:
    snapshot: Snapshot
    mounts: list[MountReport]
    unattributed_clients: list[int]
    paths: dict[tuple[int, int], tuple[str, bool]] = field(default_factory=dict)
    probe_failures: dict[str, str] = field(default_factory=dict)


def build_report(
    snap: Snapshot,
    mounts: list[NfsMount],
    transports: dict[int, str] | None = None,
    paths: dict[tuple[int, int], tuple[str, bool]] | None = None,
    probe_failures: dict[str, str] | None = None,
) -> Report:
    """transports: rpc_clnt -> rpc_xprt ids (enrich.mounts.client_transports), needed only
    where the kernel gave no parent pointers (tier tracefs)."""
    chains, unattributed = client_chains(mounts, snap.clients, transports)
    devs = {nm.mount.dev for nm in mounts}
    vfs: dict[int, dict[VfsRow, VfsStats]] = {}
    for k, v in snap.vfs.items():
        if k.dev in devs:
            vfs.setdefault(k.dev, {})[(k.op, k.pid, k.cgroup_id, k.comm)] = v
    owners: dict[int, dict[OwnerRow, OwnerStats]] = {}
    for ok, ov in snap.owners.items():
        if ok.dev in devs:
            owners.setdefault(ok.dev, {})[(ok.pid, ok.cgroup_id, ok.comm)] = ov
    files: dict[int, dict[int, FileStats]] = {}
    for (dev, fileid), fv in snap.files.items():
        if dev in devs:
            files.setdefault(dev, {})[fileid] = fv
    errs_clid: dict[int, dict[ErrRow, int]] = {}
    errs_dev: dict[int, dict[ErrRow, int]] = {}
    for ek, n in snap.errors.items():
        if ek.kind == R.ERR_XDR4:
            op = nfs4_op_name(ek.opnum)
        elif ek.kind == R.ERR_VFS:
            op = R.VFS_OPS[ek.opnum] if ek.opnum < len(R.VFS_OPS) else f"op{ek.opnum}"
        else:
            op = ek.op
        # Server layer: the reply's NFS status code itself; other layers: errno.
        name = nfs_status_name(ek.err, ek.vers) if ek.kind in (R.ERR_XDR, R.ERR_XDR4) else errno_name(ek.err)
        row = (LAYERS.get(ek.kind, "?"), op, name)
        target = errs_dev if ek.kind == R.ERR_VFS else errs_clid
        d = target.setdefault(ek.id, {})
        d[row] = d.get(row, 0) + n
    by_clid: dict[int, dict[str, RpcOpStats]] = {}
    for (clid, _vers, proc), s in snap.rpc.items():
        per = by_clid.setdefault(clid, {})
        accumulate(per, proc, s)
    out: list[MountReport] = []
    for nm in mounts:
        m = nm.mount
        chain = chains.get(nm.key, [])
        ops: dict[str, RpcOpStats] = {}
        errors: dict[ErrRow, int] = dict(errs_dev.get(m.dev, {}))
        for clid in chain:
            for proc, s in by_clid.get(clid, {}).items():
                accumulate(ops, proc, s)
            for row, n in errs_clid.get(clid, {}).items():
                errors[row] = errors.get(row, 0) + n
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
                vfs.get(m.dev, {}),
                owners.get(m.dev, {}),
                errors,
                files.get(m.dev, {}),
                m.root or "/",
                m.dev,
                server_host=m.source_host,
                client_state="mapped" if nm.clid is not None else nm.state,
            )
        )
    return Report(snap, out, unattributed, dict(paths or {}), dict(probe_failures or {}))


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
    dns = {"server_name": m.server_name, "server_address": m.server_address}
    return {
        "mount_point": m.mount_point,
        "server": m.server,
        **{k: v for k, v in dns.items() if v is not None},
        "export": m.export,
        "nfs_version": m.nfs_version,
        "fstype": m.fstype,
        "dev": m.dev,
        "rpc_clients": m.clients,
        "client_state": m.client_state,
        **({"kubernetes": m.volume} if m.volume is not None else {}),
        "io": m.io.as_dict(),
        "ops": {name: op_dict(s, seconds) for name, s in sorted(m.ops.items()) if s.ops},
        "errors": [
            {"layer": layer, "op": op, "errno": name, "count": n}
            for (layer, op, name), n in sorted(m.errors.items())
            if n
        ],
    }


IDENTITY_VIEWS = ("process", "cgroup", "pod")
NO_POD = "(not in a pod)"


def identity_rows(m: MountReport, by: str, identity: Callable[[int], Identity]) -> list[dict[str, Any]]:
    """Syscall-side ops and billed wire bytes per process (comm, pid), cgroup or pod.
    `identity` is the one resolver of cgroup ids (enrich.identity.IdentityResolver.of)."""
    rows: dict[Any, dict[str, Any]] = {}

    def row(pid: int, cg: int, comm: str) -> dict[str, Any]:
        ident = identity(cg) if by != "process" else None
        key: Any = (comm, pid) if ident is None else cg if by == "cgroup" else ident.pod_label
        if cg == RETIRED_CG:  # collect.retire: one row for every identity folded away
            key, ident = RETIRED_CG, identity(cg)
        r = rows.get(key)
        if r is None:
            if cg == RETIRED_CG:
                r = {"name": RETIRED_LABEL, "cgroup_id": cg, "cgroup": None}
            elif ident is None:
                name = f"{comm} [{pid}]" if pid else (comm or "(unattributed)")
                r = {"name": name, "comm": comm, "pid": pid or None}
            elif by == "cgroup":
                name = ident.cgroup or f"cgroup {cg}" if cg else "(unattributed)"
                if ident.removed:
                    name += " (removed)"
                r = {"name": name, **ident.as_dict()}
            else:
                name = ident.pod_label or (NO_POD if cg else "(unattributed)")
                r = {"name": name, **{k: getattr(ident, k) for k in ("namespace", "pod", "pod_uid")}}
            r.update(dict.fromkeys(IDENTITY_COUNTERS, 0))
            rows[key] = r
        return r

    for (op, pid, cg, comm), v in m.vfs.items():
        if not v.calls:
            continue
        r = row(pid, cg, comm)
        r["calls"] += v.calls
        r["errors"] += v.errors
        r["latency_ns"] += v.latency_ns
        if op == "read":
            r["read_bytes"] += v.bytes
        elif op == "write":
            r["write_bytes"] += v.bytes
    for (pid, cg, comm), o in m.owners.items():
        if not (o.read_rpcs or o.write_rpcs or o.commit_rpcs):
            continue
        r = row(pid, cg, comm)
        r["wire_read_bytes"] += o.read_bytes
        r["wire_write_bytes"] += o.write_bytes
        r["read_rpcs"] += o.read_rpcs
        r["write_rpcs"] += o.write_rpcs
        r["commit_rpcs"] += o.commit_rpcs
        r["ambiguous_write_bytes"] += o.ambiguous_write_bytes
    return sorted(rows.values(), key=lambda r: (-r["calls"], -r["wire_write_bytes"], str(r["name"])))


IDENTITY_COUNTERS = (
    "calls",
    "errors",
    "latency_ns",
    "read_bytes",
    "write_bytes",
    "wire_read_bytes",
    "wire_write_bytes",
    "read_rpcs",
    "write_rpcs",
    "commit_rpcs",
    "ambiguous_write_bytes",
)


def file_rows(
    m: MountReport, paths: dict[tuple[int, int], tuple[str, bool]], top: int, sort: str
) -> list[dict[str, Any]]:
    """The top files of a mount by ops, bytes or latency (only files that moved)."""
    moved = [(fid, f) for fid, f in m.files.items() if f.ops or f.wire_read_bytes or f.wire_write_bytes]
    keyf: Callable[[tuple[int, FileStats]], Any] = {
        "ops": lambda t: (t[1].ops, t[1].bytes),
        "bytes": lambda t: (t[1].bytes + t[1].wire_read_bytes + t[1].wire_write_bytes, t[1].ops),
        "latency": lambda t: (t[1].latency_ns, t[1].ops),
    }[sort]
    out = []
    for fid, f in sorted(moved, key=keyf, reverse=True)[:top]:
        sb_path, truncated = paths.get((m.kdev, fid), (None, False))
        rel, absolute = m.path_of(sb_path)
        d: dict[str, Any] = {"fileid": fid, "path": absolute, "relative_path": rel}
        d["path_truncated"] = truncated
        d.update(f.as_dict())
        d["ops"] = f.ops
        out.append(d)
    return out


def vfs_dict(m: MountReport) -> dict[str, Any]:
    """Syscall-side ops of a mount, with errno counts, for JSON."""
    errs = m.errors_by_op()
    return {
        op: {
            "calls": v.calls,
            "errors": v.errors,
            "bytes": v.bytes,
            "latency_ns": v.latency_ns,
            "latency_hist_us_log2": v.latency.counts,
            "errno": errs.get(("vfs", op), {}),
        }
        for op, v in sorted(m.vfs_by_op().items())
        if v.calls
    }
