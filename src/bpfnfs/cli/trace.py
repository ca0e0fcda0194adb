"""`bpfnfs trace --min-latency 10ms`: one line per slow operation, like nfsslower.

The kernel decides what is slow (config slow_ns) and sends only those records
through the ring buffer; the event path (collect/events.py) decodes them in
batches into a queue this loop prints from every DRAIN_PERIOD.

With --spans the kernel sends whole trees instead (bpf/bpfnfs.h, op_event): an
operation that was slow, failed or sampled, with the RPCs it started, each line
with its trace id, span id and parent span id.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bpfnfs.agent import Agent, stderr_log
from bpfnfs.collect import records as R
from bpfnfs.collect.events import DRAIN_PERIOD, KEEP_REASONS, OpRecord, trace_id_hex
from bpfnfs.collect.snapshot import read_snapshot
from bpfnfs.collect.views import build_report, path_in_mount
from bpfnfs.config import Config
from bpfnfs.enrich.identity import Identity
from bpfnfs.enrich.mounts import NfsMount, client_transports

HEADER = f"{'TIME':<12} {'COMM':<16} {'PID':>7} {'OP':<12} {'LAT(ms)':>10} {'BYTES':>9} {'ERRNO':<10} FILE"


@dataclass(frozen=True)
class SlowOp:
    """One decoded op_event."""

    wall: float  # seconds since the epoch
    kind: str  # "vfs" | "rpc"
    comm: str
    pid: int
    tid: int
    op: str
    latency_ns: int
    bytes: int
    errno: str | None
    mount: str | None
    file: str | None
    fileid: int
    dev: int
    cgroup_id: int
    queue_ns: int
    rtt_ns: int
    xid: int
    task_id: int
    trace_id: str | None = None  # span trees: 32 hex digits
    span_id: str | None = None  # 16 hex digits
    parent_span_id: str | None = None  # None for a root
    keep: tuple[str, ...] = ()  # a kept root: why (slow, error, sampled)
    start_ns: int = 0  # wall clock, ns since the epoch (span trees)
    end_ns: int = 0
    rpc_version: int = 0  # RPCs: the NFS version (onc_rpc.version)

    def line(self, ident: Identity | None = None) -> str:
        t = datetime.fromtimestamp(self.wall).strftime("%H:%M:%S.%f")[:12]
        where = self.file or (f"{self.mount} fileid {self.fileid}" if self.fileid else self.mount or "?")
        nbytes = str(self.bytes) if self.kind == "vfs" and self.op in ("read", "write") else "-"
        pod = ""
        if ident is not None and ident.pod_label:  # in a pod: whose, after the file
            pod = f"  [{ident.pod_label}{'/' + ident.container if ident.container else ''}]"
        op = f"└{self.op}" if self.parent_span_id else self.op  # a child: under its parent's tree
        return (
            f"{t:<12} {self.comm[:16]:<16} {self.pid:>7} {op[:12]:<12} {self.latency_ns / 1e6:>10.3f} "
            f"{nbytes:>9} {self.errno or '-':<10} {where}{pod}"
        )

    def as_dict(self, ident: Identity | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.wall).astimezone().isoformat(timespec="microseconds"),
            "kind": self.kind,
            "comm": self.comm,
            "pid": self.pid,
            "tid": self.tid,
            "op": self.op,
            "latency_ms": round(self.latency_ns / 1e6, 6),
            "bytes": self.bytes,
            "errno": self.errno,
            "mount": self.mount,
            "file": self.file,
            "fileid": self.fileid or None,
            "cgroup_id": self.cgroup_id,
            "cgroup": ident.cgroup if ident is not None else None,
        }
        if ident is not None:  # namespace, pod, pod_uid, container, container_id when known
            d.update({k: v for k, v in ident.as_dict().items() if k not in ("cgroup_id", "cgroup")})
        if self.kind == "rpc":
            d.update(
                queue_ms=round(self.queue_ns / 1e6, 6),
                rtt_ms=round(self.rtt_ns / 1e6, 6),
                xid=f"0x{self.xid:08x}",
                task_id=self.task_id,
            )
        if self.span_id is not None:
            d.update(
                trace_id=self.trace_id,
                span_id=self.span_id,
                parent_span_id=self.parent_span_id,
                start_unix_nano=self.start_ns,
                end_unix_nano=self.end_ns,
            )
            if self.keep:
                d["kept"] = list(self.keep)
        return d


class _Terminate(Exception):
    pass


class Tracer:
    """Op records -> SlowOp views (mount, file, span ids), for trace's lines and the OTLP spans.
    rpcs: describe RPC records too (default: --rpc or --spans)."""

    def __init__(self, agent: Agent, cfg: Config, rpcs: bool | None = None) -> None:
        self.agent = agent
        self.cfg = cfg
        self.rpcs = cfg.trace.rpc or cfg.trace.spans if rpcs is None else rpcs
        # Mounts and their servers as of the last refresh_clients() (per interval), for describe().
        self._mounts: list[NfsMount] | None = None
        self._servers: dict[str, tuple[str | None, int | None]] = {}
        self.clid_mount: dict[int, str] = {}
        self.printed = 0
        self.skipped = 0

    def _mount_of_dev(self, dev: int, mounts: list[NfsMount]) -> NfsMount | None:
        for nm in mounts:
            if nm.mount.dev == dev:
                return nm
        return None

    def _wanted(self, nm: NfsMount | None, mount_point: str | None) -> bool:
        cfg = self.cfg
        if cfg.filter.mount and mount_point != cfg.filter.mount:
            return False
        if cfg.filter.server:
            server = nm.mount.server if nm else None
            return server in (cfg.filter.server, f"[{cfg.filter.server}]")
        return True

    def refresh_clients(self) -> None:
        """clid -> mount point, for slow RPCs (the kernel's rpc_clnt of each superblock)."""
        obj = self.agent.obj
        if obj is None:
            return
        snap = read_snapshot(obj.maps)
        need = any(not c.parent_known for c in snap.clients.values())
        rep = build_report(snap, self.agent.mounts.nfs_list(), client_transports() if need else None)
        self.clid_mount = {clid: m.mount_point for m in rep.mounts for clid in m.clients[:1]}
        self._mounts = self.agent.mounts.nfs_list()
        self._servers = _servers(self._mounts)

    def spans(self, ev: OpRecord, offset_ns: int) -> dict[str, Any]:
        """SlowOp's span fields of a record from a span tree (none outside tree mode)."""
        if not ev.span_id:
            return {}
        end = ev.ts_ns + offset_ns
        return {
            "trace_id": trace_id_hex(self.agent.events.trace_salt, ev.trace_id),
            "span_id": f"{ev.span_id:016x}",
            "parent_span_id": f"{ev.parent_id:016x}" if ev.parent_id else None,
            "keep": tuple(name for bit, name in KEEP_REASONS if ev.keep & bit),
            "start_ns": end - ev.latency_ns,
            "end_ns": end,
        }

    def describe(self, ev: OpRecord) -> SlowOp | None:
        """decode() with the mounts of the last refresh_clients() and the clock offset of now
        (the OTLP span sink's view, called per record: no mount table is rebuilt here)."""
        mounts = self._mounts if self._mounts is not None else self.agent.mounts.nfs_list()
        return self.decode(ev, mounts, time.time_ns() - time.monotonic_ns())

    def server_of(self, mount_point: str | None) -> tuple[str | None, int | None]:
        """A mount's server address and port (server.address, server.port)."""
        if self._mounts is None:
            self._servers = _servers(self.agent.mounts.nfs_list())
        return self._servers.get(mount_point or "", (None, None))

    def decode(self, ev: OpRecord, mounts: list[NfsMount], offset_ns: int) -> SlowOp | None:
        wall = (ev.ts_ns + offset_ns) / 1e9
        if ev.kind == "vfs":
            nm = self._mount_of_dev(ev.dev, mounts)
            mp = nm.mount.mount_point if nm else None
            if not self._wanted(nm, mp):
                return None
            sb = self.agent.paths.get((ev.dev, ev.fileid))
            path = path_in_mount(nm.mount.root or "/", nm.mount.mount_point, sb[0])[1] if nm and sb else None
            return SlowOp(
                wall,
                "vfs",
                ev.comm,
                ev.pid,
                ev.tid,
                ev.op,
                ev.latency_ns,
                ev.bytes,
                ev.errno,
                mp,
                path,
                ev.fileid,
                ev.dev,
                ev.cgroup_id,
                0,
                0,
                0,
                0,
                **self.spans(ev, offset_ns),
            )
        if ev.kind == "rpc" and self.rpcs:
            mp = self.clid_mount.get(ev.clid)
            nm = next((n for n in mounts if n.mount.mount_point == mp), None)
            if not self._wanted(nm, mp):
                return None
            # The RPC completes in rpciod; the pid is the task's owner, so name it from /proc.
            comm = ev.comm
            with contextlib.suppress(OSError):
                comm = Path(f"{self.cfg.collection.proc}/{ev.pid}/comm").read_text().strip() or comm
            return SlowOp(
                wall,
                "rpc",
                comm,
                ev.pid,
                ev.tid,
                ev.op,
                ev.latency_ns,
                0,
                ev.errno,
                mp,
                None,
                0,
                0,
                ev.cgroup_id,
                ev.queue_ns,
                ev.rtt_ns,
                ev.xid,
                ev.task_id,
                **self.spans(ev, offset_ns),
                rpc_version=ev.vers,
            )
        return None


def _servers(mounts: list[NfsMount]) -> dict[str, tuple[str | None, int | None]]:
    """Mount point -> (server address, port: port= or 2049)."""
    out: dict[str, tuple[str | None, int | None]] = {}
    for nm in mounts:
        port = nm.mount.super_options.get("port", "")
        out[nm.mount.mount_point] = (nm.mount.server, int(port) if port.isdigit() and port != "0" else 2049)
    return out


def run_trace(cfg: Config, agent_factory: Callable[..., Agent] = Agent) -> int:
    agent = agent_factory(cfg, events=True)
    duration = cfg.trace.duration
    tracer = Tracer(agent, cfg)

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise _Terminate

    signal.signal(signal.SIGTERM, on_term)
    start = time.monotonic()
    last_drops = last_skipped = 0
    try:
        agent.preflight()
        threshold = f"{cfg.trace.min_latency:g} ms" if cfg.trace.min_latency else "every operation"
        if cfg.trace.spans:
            stderr_log(
                f"tracing NFS operation trees whose root took {threshold} or failed, or sampled at "
                f"{cfg.trace.sample_ratio:g}; Ctrl-C to stop"
            )
        else:
            stderr_log(f"tracing NFS operations slower than {threshold}; Ctrl-C to stop")
        header_done = False
        next_refresh = 0.0
        while True:
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                break
            if now >= next_refresh:
                next_refresh = now + cfg.collection.interval
                if agent.try_attach():
                    agent.refresh_mounts()
                    if cfg.trace.rpc or cfg.trace.spans:
                        tracer.refresh_clients()
                    drops = _lost(agent)
                    if drops > last_drops:
                        lost = drops - last_drops
                        stderr_log(f"warning: {lost} slow-op records lost ({_lost_detail(agent)})")
                        last_drops = drops
                    skipped = agent.skipped_events() or 0
                    if skipped > last_skipped:
                        stderr_log(
                            f"warning: the kernel skipped {skipped - last_skipped} operations before bpfnfs "
                            "saw them (their programs were busy on that CPU; docs/design.md, Preemption)"
                        )
                        last_skipped = skipped
            if not header_done and agent.obj is not None and cfg.view.format != "json":
                print(HEADER, flush=True)
                header_done = True
            time.sleep(DRAIN_PERIOD)
            agent.drain()
            mounts = agent.mounts.nfs_list()
            offset_ns = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
            out = []
            pending = agent.op_queue.take() if agent.op_queue is not None else []
            for ev in pending:
                op = tracer.decode(ev, mounts, offset_ns)
                if op is None:
                    continue
                ident = agent.identity.of(op.cgroup_id)
                if cfg.view.format == "json":
                    out.append(json.dumps(op.as_dict(ident), separators=(",", ":")))
                else:
                    out.append(op.line(ident))
                tracer.printed += 1
                if cfg.view.count is not None and tracer.printed >= cfg.view.count:
                    break
            if out:
                print("\n".join(out), flush=True)
            if cfg.view.count is not None and tracer.printed >= cfg.view.count:
                break
    except (KeyboardInterrupt, _Terminate):
        pass
    except BrokenPipeError:
        pass
    finally:
        if agent.obj is not None:
            lost = _lost(agent)
            stderr_log(f"{tracer.printed} operations printed, {lost} records lost ({_lost_detail(agent)})")
        agent.close()
    return 0


# Span trees: records of kept trees the kernel could not send (the sampler's drops are by design).
SPAN_LOSSES = ("span_tree_full", "span_pending_full", "span_tree_lost")


def _lost(agent: Agent) -> int:
    """Records lost anywhere: in the kernel (ring buffer full, a tree too big or its state
    evicted) or in user space (queue full)."""
    return agent.counter("ringbuf_drops") + agent.events_overflow + sum(agent.counter(n) for n in SPAN_LOSSES)


def _lost_detail(agent: Agent) -> str:
    skipped = agent.skipped_events()
    kernel = "not available" if skipped is None else str(skipped)
    spans = ""
    if agent.cfg.trace.spans:
        spans = (
            f", trees over {R.TREE_CHILDREN} children {agent.counter('span_tree_full')}, no room to "
            f"hold a child {agent.counter('span_pending_full')}, tree state evicted "
            f"{agent.counter('span_tree_lost')}"
            f"; not kept by design: roots unsampled {agent.counter('span_unsampled')}, their children "
            f"{agent.counter('span_parent_dropped')}"
        )
    return (
        f"ring buffer full {agent.counter('ringbuf_drops')}, queue full {agent.events_overflow}{spans}; "
        f"operations the kernel skipped before bpfnfs saw them: {kernel}"
    )
