"""NFS mounts and the RPC clients behind them.

mountstats' per-op lines for a mount are those of its superblock's rpc_clnt
plus every cl_parent above it (rpc_clnt_show_stats walks the chain; for v4 the
parent carries the lease ops such as SEQUENCE). To find a superblock's client,
the agent calls statfs() on the mount point itself: that issues exactly one
FSSTAT (v3) or STATFS (v4) RPC on the superblock's own client, in the calling
thread, and the rpc_request program records its client id for that thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bpfnfs.collect import records as R
from bpfnfs.collect.snapshot import ClientInfo
from bpfnfs.enrich.hostns import HostView
from bpfnfs.enrich.mountinfo import Mount, MountinfoError, nfs_mounts, parse_mountinfo
from bpfnfs.loader.maps import Map

STATFS_PROCS = {"FSSTAT", "STATFS"}
# The probe's statfs blocks for as long as the server does not answer (forever on a hard
# mount), so it runs in a thread of its own and the collection never waits on it beyond
# PROBE_WAIT, once, when it starts: reports keep their interval whatever the servers do.
PROBE_WAIT = 1.0
PROBE_TIMEOUT = 5.0  # a statfs still out after this: the server is reported as not responding
RETRY_MIN, RETRY_MAX = 5.0, 300.0  # a probe that failed is retried after this, doubling

MAPPED, PROBING, NOT_RESPONDING, FAILED = "mapped", "probing", "server not responding", "probe failed"


@dataclass
class NfsMount:
    mount: Mount
    clid: int | None = None  # the superblock's own rpc_clnt, once probed
    state: str = PROBING  # MAPPED, or why not yet (PROBING, NOT_RESPONDING, FAILED)

    @property
    def key(self) -> str:
        return self.mount.mount_point

    @property
    def dev_str(self) -> str:
        return f"{self.mount.major}:{self.mount.minor}"


@dataclass
class _Probe:
    thread: threading.Thread
    mount_point: str
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[int, str] | None = None
    error: str | None = None
    stuck_logged: bool = False


@dataclass
class _Retry:
    at: float
    backoff: float


@dataclass
class MountRegistry:
    probe_map: Map | None
    view: HostView = field(default_factory=HostView)
    log: Callable[[str], None] = lambda _msg: None
    clock: Callable[[], float] = time.monotonic
    mounts: dict[str, NfsMount] = field(default_factory=dict)
    dev_clid: dict[int, int] = field(default_factory=dict)
    _probes: dict[int, _Probe] = field(default_factory=dict)
    _retry: dict[int, _Retry] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set)
    parse_errors: int = 0
    _last_text: str | None = None  # the mountinfo last parsed without error

    def refresh(self) -> None:
        """Re-read mountinfo: add new NFS mounts, drop gone ones, probe new superblocks
        (waiting at most PROBE_WAIT, and only for probes started now)."""
        try:
            text = self.view.mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
            # Unchanged mount table, nothing pending or to retry: skip the parse (most of a
            # refresh's CPU, every interval).
            if text == self._last_text and not self._probes and self._all_probed():
                return
            self._last_text = None
            current = nfs_mounts(parse_mountinfo(text))
        except MountinfoError as e:
            # A line we cannot parse is reported once per distinct message, never fatal.
            self.parse_errors += 1
            if str(e) not in self._warned:
                self._warned.add(str(e))
                self.log(f"warning: {e}")
            return
        except OSError as e:
            self.log(f"warning: cannot read {self.view.mountinfo}: {e}")
            return
        self._last_text = text
        seen: dict[str, NfsMount] = {}
        for m in current:
            old = self.mounts.get(m.mount_point)
            nm = old if old is not None and old.mount.dev == m.dev else NfsMount(m)
            seen[m.mount_point] = nm
        self.mounts = seen
        live_devs = {nm.mount.dev for nm in seen.values()}
        for table in (self.dev_clid, self._retry):
            for dev in [d for d in table if d not in live_devs]:
                del table[dev]
        # A probe of an unmounted superblock may still be blocked: it is forgotten here, and
        # its daemon thread ends when its statfs does.
        for dev in [d for d in self._probes if d not in live_devs]:
            del self._probes[dev]
        self._finish_probes()
        if self.probe_map is not None:
            now = self.clock()
            started = []
            for nm in seen.values():
                dev = nm.mount.dev
                retry = self._retry.get(dev)
                if dev in self.dev_clid or dev in self._probes or (retry and now < retry.at):
                    continue
                self._start_probe(dev, nm.mount.mount_point)
                started.append(self._probes[dev])
            deadline = now + PROBE_WAIT
            for pr in started:
                pr.done.wait(max(0.0, deadline - self.clock()))
            self._finish_probes()
            self._note_stuck()
        for nm in self.mounts.values():
            nm.clid = self.dev_clid.get(nm.mount.dev)
            nm.state = self._state(nm.mount.dev)

    def _state(self, dev: int) -> str:
        if dev in self.dev_clid:
            return MAPPED
        pr = self._probes.get(dev)
        if pr is not None:
            return NOT_RESPONDING if self.clock() - pr.started >= PROBE_TIMEOUT else PROBING
        return FAILED if dev in self._retry else PROBING

    def _all_probed(self) -> bool:
        return self.probe_map is None or all(nm.mount.dev in self.dev_clid for nm in self.mounts.values())

    def _start_probe(self, dev: int, mount_point: str) -> None:
        probe_map = self.probe_map
        assert probe_map is not None
        target = self.view.path(mount_point)
        pr = _Probe(threading.Thread(target=lambda: None), mount_point, self.clock())

        def run() -> None:
            try:
                tid = threading.get_native_id()
                key = R.U32.pack(tid)
                probe_map.delete(key)
                try:
                    os.statvfs(target)
                except OSError as e:
                    pr.error = f"statfs({mount_point}): {e.strerror}"
                    return
                raw = probe_map.lookup(key)
                probe_map.delete(key)
                if raw is None:
                    pr.error = f"statfs({mount_point}) issued no RPC the probe saw"
                    return
                clid, _vers, proc = R.PROBE_VAL.unpack(raw)
                pr.result = (clid, R.cstr(proc))
            except OSError as e:  # the map (closed while a statfs hung, at exit)
                pr.error = f"mount probe of {mount_point}: {e}"
            finally:
                pr.done.set()

        # Daemon: a statfs blocked on a dead server must not keep the agent from exiting.
        pr.thread = threading.Thread(target=run, name=f"bpfnfs-probe-{dev}", daemon=True)
        self._probes[dev] = pr
        pr.thread.start()

    def _finish_probes(self) -> None:
        for dev, pr in list(self._probes.items()):
            if not pr.done.is_set():
                continue  # still blocked in statfs (server unreachable): never started twice
            del self._probes[dev]
            took = self.clock() - pr.started
            if pr.stuck_logged:
                self.log(f"statfs({pr.mount_point}) returned after {took:.0f} s: the server answers again")
            if pr.result and pr.result[1] in STATFS_PROCS:
                self.dev_clid[dev] = pr.result[0]
                self._retry.pop(dev, None)
                continue
            msg = pr.error or f"mount probe saw {pr.result[1] if pr.result else '?'}, not FSSTAT/STATFS"
            old = self._retry.get(dev)
            backoff = min(RETRY_MAX, old.backoff * 2) if old else RETRY_MIN
            self._retry[dev] = _Retry(self.clock() + backoff, backoff)
            if msg not in self._warned:
                self._warned.add(msg)
                self.log(f"warning: {msg}; will retry")

    def _note_stuck(self) -> None:
        now = self.clock()
        for pr in self._probes.values():
            if not pr.stuck_logged and now - pr.started >= PROBE_TIMEOUT:
                pr.stuck_logged = True
                self.log(
                    f"warning: statfs({pr.mount_point}) has not returned in {now - pr.started:.0f} s: "
                    "its NFS server is not responding; the mount is listed unmapped (no RPC figures) "
                    "until it answers, and is not probed again meanwhile"
                )

    def nfs_list(self) -> list[NfsMount]:
        return sorted(self.mounts.values(), key=lambda nm: nm.mount.mount_point)


def rpc_version(m: Mount) -> int | None:
    """The RPC program version of an NFS mount: 3, or 4 for every 4.x minor version."""
    v = m.nfs_version
    try:
        return int(v.split(".")[0]) if v else None
    except ValueError:
        return None


RPC_CLNT_DEBUGFS = Path("/sys/kernel/debug/sunrpc/rpc_clnt")


def client_transports(root: Path = RPC_CLNT_DEBUGFS) -> dict[int, str]:
    """rpc_clnt id -> rpc_xprt id, from sunrpc's debugfs (CONFIG_SUNRPC_DEBUG).

    A cloned client shares its parent's transport, so on the tracefs tier (no
    cl_parent pointer) this identifies a mount's parent exactly. Empty when
    debugfs is not mounted or not built."""
    out: dict[int, str] = {}
    try:
        entries = list(root.iterdir())
    except OSError:
        return out
    for d in entries:
        try:
            out[int(d.name)] = os.readlink(d / "xprt").rstrip("/").rsplit("/", 1)[-1]
        except (OSError, ValueError):
            continue
    return out


def client_chains(
    mounts: list[NfsMount], clients: dict[int, ClientInfo], transports: dict[int, str] | None = None
) -> tuple[dict[str, list[int]], list[int]]:
    """For each mount, the rpc_clnt ids whose stats mountstats sums for it.

    With parent pointers (tier btf) this is the exact cl_parent chain. Without
    them (tier tracefs) an NFS client of the same version that no mount owns is
    the parent of the mounts whose client shares its transport (debugfs), or,
    without debugfs, of every mount of that version when they all talk to one
    server; otherwise it is left out and returned as unattributed."""
    chains: dict[str, list[int]] = {}
    owned = {nm.clid for nm in mounts if nm.clid is not None}
    for nm in mounts:
        if nm.clid is None:
            continue
        chain = [nm.clid]
        cur = clients.get(nm.clid)
        while cur is not None and cur.parent_known and cur.parent != cur.clid and cur.parent not in chain:
            chain.append(cur.parent)
            cur = clients.get(cur.parent)
        chains[nm.key] = chain
    unattributed: list[int] = []
    orphans = [c for c in clients.values() if c.prog == "nfs" and not c.parent_known and c.clid not in owned]
    for c in orphans:
        same_vers = [nm for nm in mounts if nm.clid is not None and rpc_version(nm.mount) == c.vers]
        xprt = transports.get(c.clid) if transports else None
        if xprt is not None:
            owners = [nm for nm in same_vers if transports and transports.get(nm.clid or -1) == xprt]
            for nm in owners:
                chains[nm.key].append(c.clid)
            if not owners:
                unattributed.append(c.clid)
            continue
        servers = {nm.mount.server for nm in same_vers}
        if same_vers and len(servers) == 1:
            for nm in same_vers:
                chains[nm.key].append(c.clid)
        else:
            unattributed.append(c.clid)
    return chains, unattributed
