"""The event path: the one ring buffer -> records decoded once, here -> subscribers.

The kernel sends two records on the ring: a file's path the first time it is seen
(path_event), and a per-operation record (op_event) for operations the kernel judged
worth sending (cfg.slow_ns). A drain thread empties the ring in batches every
DRAIN_PERIOD; paths go into the table the views name files with, and op records are
decoded into OpRecord objects and handed, one batch at a time, to every subscriber
(`bpfnfs trace`'s queue today; spans next). Nothing runs per record when nobody
subscribes.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bpfnfs.collect import records as R
from bpfnfs.collect.errnames import errno_name
from bpfnfs.collect.snapshot import FileKey
from bpfnfs.ringbuf import RingBuffer

DRAIN_PERIOD = 0.1  # seconds between ring buffer drains
MAX_QUEUED = 65536  # op records a queue subscriber holds before it counts overflow


# Why the kernel kept a tree (op_event.keep on its root).
KEEP_REASONS = ((R.KEEP_SLOW, "slow"), (R.KEEP_ERROR, "error"), (R.KEEP_SAMPLED, "sampled"))


def trace_id_hex(salt: int, root: int) -> str:
    """The 128-bit W3C trace id of a tree: this agent's random salt, then the root's random
    64-bit span id (the kernel's trace_id), whose randomness ends the id as W3C asks."""
    return f"{salt:016x}{root:016x}"


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One op_event: a syscall-side operation (kind "vfs") or an RPC (kind "rpc")."""

    kind: str  # "vfs" | "rpc" | "unknown"
    op: str  # the VFS operation (read, write, open, ...) or the RPC procedure (READ, GETATTR, ...)
    ts_ns: int  # bpf_ktime_get_ns() at completion (CLOCK_MONOTONIC)
    latency_ns: int  # call time for VFS, execute time for RPCs
    queue_ns: int
    rtt_ns: int
    cgroup_id: int
    fileid: int
    bytes: int
    pid: int  # tgid; the task's owner for RPCs on the BTF tier
    tid: int
    dev: int  # kernel dev_t (major << 20 | minor)
    clid: int  # RPC client id
    task_id: int
    xid: int
    status: int  # negative errno, or 0
    vers: int  # RPC program version (VFS: the op's index)
    comm: str
    span_id: int = 0  # span trees (else 0): random, never 0
    parent_id: int = 0  # 0 for a root
    trace_id: int = 0  # the root's span_id (64 bits; the exporter widens it)
    keep: int = 0  # a kept root's reasons (R.KEEP_*)

    @property
    def errno(self) -> str | None:
        return errno_name(-self.status) if self.status < 0 else None


def decode_ops(buf: bytes) -> list[OpRecord]:
    """Concatenated op_event records -> OpRecords (the one place they are decoded)."""
    out = []
    for rec in R.OP_EVENT.iter_unpack(buf):
        # The header (kind, version, size: the sink sorted by it), ts, latency, queue, rtt, cgroup,
        # fileid, bytes, span, parent, trace, pid, tid, dev, clid, task_id, xid, status, kind,
        # vers, keep, pad, comm, proc.
        f = rec[3:]
        span, parent, trace = f[7:10]
        kind, vers, keep, _pad, comm, proc = f[17:]
        if kind == R.OP_VFS:
            k, op = "vfs", R.VFS_OPS[vers] if vers < len(R.VFS_OPS) else f"op{vers}"
        elif kind == R.OP_RPC:
            k, op = "rpc", R.cstr(proc)
        else:
            k, op = "unknown", f"kind{kind}"
        out.append(OpRecord(k, op, *f[:7], *f[10:17], vers, R.cstr(comm), span, parent, trace, keep))
    return out


def decode_paths(buf: bytes) -> dict[FileKey, tuple[str, bool]]:
    """Concatenated path_event records -> {(dev, fileid): (path below the superblock root, truncated)}."""
    out: dict[FileKey, tuple[str, bool]] = {}
    for _kind, _version, _size, fileid, dev, flags, length, _depth, raw in R.PATH_EVENT.iter_unpack(buf):
        parts = [p.decode("utf-8", "replace") for p in raw[:length].split(b"\0") if p]  # leaf first
        out[(dev, fileid)] = ("/" + "/".join(reversed(parts)), bool(flags & R.PATH_F_TRUNCATED))
    return out


class OpQueue:
    """A subscriber that keeps op records for a reader polling at its own pace (bpfnfs trace),
    bounded: what arrives while it is full is counted in `overflow`, never kept."""

    def __init__(self, maxlen: int = MAX_QUEUED) -> None:
        self._q: deque[OpRecord] = deque()
        self.maxlen = maxlen
        self.overflow = 0
        self._lock = threading.Lock()

    def __call__(self, ops: Sequence[OpRecord]) -> None:
        with self._lock:
            room = self.maxlen - len(self._q)
            self._q.extend(ops[: max(room, 0)])
            self.overflow += max(len(ops) - max(room, 0), 0)

    def take(self, n: int | None = None) -> list[OpRecord]:
        """Up to n records (all without n), oldest first."""
        with self._lock:
            k = len(self._q) if n is None else min(n, len(self._q))
            return [self._q.popleft() for _ in range(k)]

    def __len__(self) -> int:
        return len(self._q)


Subscriber = Callable[[Sequence[OpRecord]], None]


class EventPath:
    """Owns the ring buffer once it exists (the BPF object loads when NFS appears), its drain
    thread, and the file path table."""

    def __init__(self) -> None:
        self.ring: RingBuffer | None = None
        self.paths: dict[FileKey, tuple[str, bool]] = {}  # (path below the superblock root, truncated)
        self.trace_salt = secrets.randbits(64)  # the high half of this agent's trace ids
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()  # the ring and paths: drain thread vs collection
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def start(self, ring: RingBuffer) -> None:
        self.ring = ring
        self._thread = threading.Thread(target=self._loop, name="bpfnfs-ring", daemon=True)
        self._thread.start()

    @property
    def unknown_records(self) -> int:
        return self.ring.unknown_records if self.ring is not None else 0

    def _loop(self) -> None:
        # Between collections too: a burst of new files (one path record each) must not
        # outgrow the ring while the main loop sleeps through its interval.
        while not self._stop.wait(DRAIN_PERIOD):
            self.drain()

    def drain(self) -> None:
        """Empty the ring: paths into the table, op records to the subscribers."""
        with self._lock:
            if self.ring is None:
                return
            got = self.ring.drain()
            self.paths.update(decode_paths(got[(R.REC_PATH, R.REC_PATH_VERSION)]))
            raw = got[(R.REC_OP, R.REC_OP_VERSION)]
        if raw and self._subscribers:
            ops = decode_ops(raw)
            for fn in self._subscribers:
                fn(ops)

    def forget_devs(self, gone: set[int]) -> None:
        """Paths of unmounted superblocks."""
        with self._lock:
            for fk in [fk for fk in self.paths if fk[0] in gone]:
                del self.paths[fk]

    def paths_for(
        self, files: Sequence[FileKey] | set[FileKey] | dict[FileKey, object]
    ) -> dict[FileKey, tuple[str, bool]]:
        """A copy of the table, first pruned to `files` (the kernel's file LRU) once it has
        grown well past them: the paths of evicted files are no longer needed."""
        with self._lock:
            if len(self.paths) > len(files) + 1024:
                for fk in [fk for fk in self.paths if fk not in files]:
                    del self.paths[fk]
            return dict(self.paths)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * DRAIN_PERIOD)
        with self._lock:
            if self.ring is not None:
                self.ring.close()
                self.ring = None


__all__ = [
    "DRAIN_PERIOD",
    "KEEP_REASONS",
    "EventPath",
    "OpQueue",
    "OpRecord",
    "decode_ops",
    "decode_paths",
    "trace_id_hex",
]
