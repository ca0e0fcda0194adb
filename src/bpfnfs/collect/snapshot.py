"""Reading the kernel's per-CPU aggregates into cumulative snapshots.

A Snapshot holds totals since the programs were attached. Rates and per-interval
figures are differences of two snapshots; nothing in the kernel is reset, so a
slow reader never loses counts.
"""

from __future__ import annotations

import operator
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from bpfnfs.collect import records as R
from bpfnfs.collect.histogram import Log2Hist
from bpfnfs.loader.maps import Map
from bpfnfs.loader.object import global_map


class LayoutError(Exception):
    """User space and the BPF object disagree on a record layout."""


def check_layouts(maps: dict[str, Map]) -> None:
    for name, (ksize, vsize) in R.LAYOUTS.items():
        m = maps.get(name)
        if m is None:
            raise LayoutError(f"BPF object lacks map {name}")
        if (m.key_size, m.value_size) != (ksize, vsize):
            raise LayoutError(
                f"map {name}: object has key/value {m.key_size}/{m.value_size} bytes, user space expects "
                f"{ksize}/{vsize}; rebuild with `make setup`"
            )
    for section, size in R.GLOBALS.items():
        m = global_map(maps, section)
        if m is None:
            raise LayoutError(f"BPF object lacks its {section} section; rebuild with `make setup`")
        if m.value_size != size:
            raise LayoutError(
                f"{section}: object has {m.value_size} bytes, user space expects {size}; "
                "rebuild with `make setup`"
            )


class FieldArith:
    """Field-wise + and - for the stats records (counters and Log2Hist fields alike):
    cumulative snapshots are summed over keys and differenced over intervals."""

    __slots__ = ()  # lets a subclass with slots (FileStats: one per file, 100k+) have no __dict__

    def _combine(self, other: Any, op: Callable[[Any, Any], Any]) -> Any:
        return type(self)(*(op(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))  # type: ignore[arg-type]

    def __add__(self, other: Any) -> Any:
        return self._combine(other, operator.add)

    def __sub__(self, other: Any) -> Any:
        return self._combine(other, operator.sub)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


def accumulate(d: dict[Any, Any], key: Any, value: Any) -> None:
    """d[key] += value, for keys that may not be there yet."""
    d[key] = d[key] + value if key in d else value


@dataclass
class RpcOpStats(FieldArith):
    """Cumulative per-op figures, in mountstats' own terms (times in ns)."""

    ops: int = 0
    ntrans: int = 0
    timeouts: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    queue_ns: int = 0
    rtt_ns: int = 0
    execute_ns: int = 0
    errors: int = 0
    queue: Log2Hist = field(default_factory=Log2Hist)
    rtt: Log2Hist = field(default_factory=Log2Hist)
    execute: Log2Hist = field(default_factory=Log2Hist)

    SCALARS = (
        "ops",
        "ntrans",
        "timeouts",
        "bytes_sent",
        "bytes_recv",
        "queue_ns",
        "rtt_ns",
        "execute_ns",
        "errors",
    )

    @classmethod
    def from_raw(cls, v: tuple[int, ...]) -> RpcOpStats:
        n = R.RPC_VAL_SCALARS
        h = R.HIST_SLOTS
        s = cls(*v[:n])
        s.queue = Log2Hist(list(v[n : n + h]), s.queue_ns)
        s.rtt = Log2Hist(list(v[n + h : n + 2 * h]), s.rtt_ns)
        s.execute = Log2Hist(list(v[n + 2 * h : n + 3 * h]), s.execute_ns)
        return s


@dataclass
class IoStats(FieldArith):
    read_calls: int = 0
    read_bytes: int = 0
    direct_read_bytes: int = 0
    write_calls: int = 0
    write_bytes: int = 0
    direct_write_bytes: int = 0
    server_read_bytes: int = 0
    server_write_bytes: int = 0
    read_rpcs: int = 0
    write_rpcs: int = 0


@dataclass
class VfsStats(FieldArith):
    """Syscall-side op figures (cumulative; latency in ns)."""

    calls: int = 0
    errors: int = 0
    bytes: int = 0
    latency_ns: int = 0
    latency: Log2Hist = field(default_factory=Log2Hist)


@dataclass(frozen=True)
class VfsKey:
    dev: int
    op: str
    pid: int  # 0 unless per-process keys were asked for
    cgroup_id: int
    comm: str


@dataclass(slots=True)
class FileStats(FieldArith):
    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    other_ops: int = 0
    errors: int = 0
    latency_ns: int = 0
    wire_read_bytes: int = 0
    wire_write_bytes: int = 0
    wire_reads: int = 0  # READ RPCs completed
    wire_writes: int = 0  # WRITE RPCs completed
    wire_read_ns: int = 0  # sum of initiate -> done over those
    wire_write_ns: int = 0

    @property
    def ops(self) -> int:
        return self.reads + self.writes + self.other_ops

    @property
    def bytes(self) -> int:
        return self.read_bytes + self.write_bytes


@dataclass(frozen=True)
class OwnerKey:
    dev: int
    pid: int
    cgroup_id: int
    comm: str


@dataclass
class OwnerStats(FieldArith):
    read_rpcs: int = 0
    read_bytes: int = 0
    write_rpcs: int = 0
    write_bytes: int = 0
    commit_rpcs: int = 0
    ambiguous_write_bytes: int = 0


@dataclass(frozen=True)
class ErrKey:
    kind: int  # records.ERR_*
    id: int  # clid (RPC, XDR, XDR4) or dev (VFS)
    vers: int
    op: str  # procedure or VFS op name (empty for XDR4)
    opnum: int  # NFSv4 operation number (XDR4), enum vfs_op (VFS)
    err: int  # positive errno, or an NFS4ERR_* value


FileKey = tuple[int, int]  # (dev, fileid)


@dataclass(frozen=True)
class ClientInfo:
    clid: int
    parent: int
    vers: int
    prog: str
    parent_known: bool


RpcKey = tuple[int, int, str]  # (clid, vers, proc)


@dataclass
class Snapshot:
    taken: float  # time.monotonic()
    rpc: dict[RpcKey, RpcOpStats] = field(default_factory=dict)
    clients: dict[int, ClientInfo] = field(default_factory=dict)
    io: dict[int, IoStats] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    vfs: dict[VfsKey, VfsStats] = field(default_factory=dict)
    files: dict[FileKey, FileStats] = field(default_factory=dict)
    dirtiers: dict[FileKey, tuple[int, int, str]] = field(default_factory=dict)  # cgroup, pid, comm
    owners: dict[OwnerKey, OwnerStats] = field(default_factory=dict)
    errors: dict[ErrKey, int] = field(default_factory=dict)
    files_capacity: int = 0
    # What the kernel keeps about each attached program, and each counting hook's
    # losses (collect/losses.py); filled in by the agent.
    programs: dict[str, Any] = field(default_factory=dict)  # name -> loader.progstats.ProgStats
    hooks: dict[str, Any] = field(default_factory=dict)  # hook -> collect.losses.HookLoss


def _sum_percpu(m: Map, raw: bytes, st: struct.Struct) -> tuple[int, ...]:
    total: list[int] | None = None
    for slot in m.percpu_slots(raw):
        vals = st.unpack(slot)
        total = list(vals) if total is None else [a + b for a, b in zip(total, vals, strict=True)]
    return tuple(total or ())


def read_snapshot(maps: dict[str, Map]) -> Snapshot:
    snap = Snapshot(taken=time.monotonic())
    rpc_map = maps["rpc_stats"]
    for k, v in rpc_map.items():
        clid, vers, proc = R.RPC_KEY.unpack(k)
        snap.rpc[(clid, vers, R.cstr(proc))] = RpcOpStats.from_raw(_sum_percpu(rpc_map, v, R.RPC_VAL))
    for k, v in maps["clients"].items():
        (clid,) = R.U32.unpack(k)
        parent, vers, flags, _pad, prog = R.CLNT_INFO.unpack(v)
        snap.clients[clid] = ClientInfo(clid, parent, vers, R.cstr(prog), bool(flags & R.CLNT_F_PARENT_KNOWN))
    io_map = maps["io_stats"]
    for k, v in io_map.items():
        (dev,) = R.DEV_KEY.unpack(k)
        snap.io[dev] = IoStats(*_sum_percpu(io_map, v, R.IO_VAL))
    vfs_map = maps["vfs_stats"]
    for k, v in vfs_map.items():
        dev, op, pid, _pad, cg, comm = R.VFS_KEY.unpack(k)
        raw = _sum_percpu(vfs_map, v, R.VFS_VAL)
        n = R.VFS_VAL_SCALARS
        name = R.VFS_OPS[op] if op < len(R.VFS_OPS) else f"op{op}"
        vk = VfsKey(dev, name, pid, cg, R.cstr(comm))
        vv = VfsStats(*raw[:n], latency=Log2Hist(list(raw[n:]), raw[3]))
        accumulate(snap.vfs, vk, vv)
    fmap = maps["files"]
    snap.files_capacity = fmap.max_entries
    nc = len(R.FILE_VAL_COUNTERS)
    for raw_k, raw_v, _n, _vs in fmap.batches(4096):
        for (dev, _p, fileid), val in zip(
            R.FILE_KEY.iter_unpack(raw_k), R.FILE_VAL.iter_unpack(raw_v), strict=True
        ):
            snap.files[(dev, fileid)] = FileStats(*val[:nc])
            if val[nc]:
                snap.dirtiers[(dev, fileid)] = (val[nc], val[nc + 1], R.cstr(val[nc + 3]))
    omap = maps["owners"]
    for k, v in omap.items():
        dev, pid, cg, comm = R.OWNER_KEY.unpack(k)
        # Keys are compared as decoded: sum, never overwrite, should two raw keys decode alike.
        accumulate(
            snap.owners, OwnerKey(dev, pid, cg, R.cstr(comm)), OwnerStats(*_sum_percpu(omap, v, R.OWNER_VAL))
        )
    emap = maps["errors"]
    for k, v in emap.items():
        eid, kind, vers, err, opnum, op = R.ERR_KEY.unpack(k)
        ek = ErrKey(kind, eid, vers, R.cstr(op), opnum, err)
        accumulate(snap.errors, ek, sum(R.U64.unpack(x)[0] for x in emap.percpu_slots(v)))
    cnt = maps["counters"]
    for k, v in cnt.items():
        (idx,) = R.U32.unpack(k)
        if idx < len(R.COUNTERS):
            snap.counters[R.COUNTERS[idx]] = sum(R.U64.unpack(s)[0] for s in cnt.percpu_slots(v))
    return snap
