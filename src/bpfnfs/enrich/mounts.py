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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bpfnfs.collect import records as R
from bpfnfs.collect.snapshot import ClientInfo
from bpfnfs.enrich.mountinfo import Mount, MountinfoError, nfs_mounts, parse_mountinfo
from bpfnfs.loader.maps import Map

STATFS_PROCS = {"FSSTAT", "STATFS"}
PROBE_TIMEOUT = 5.0


@dataclass
class NfsMount:
    mount: Mount
    clid: int | None = None  # the superblock's own rpc_clnt, once probed

    @property
    def key(self) -> str:
        return self.mount.mount_point

    @property
    def dev_str(self) -> str:
        return f"{self.mount.major}:{self.mount.minor}"


@dataclass
class _Probe:
    thread: threading.Thread
    result: tuple[int, str] | None = None
    error: str | None = None


@dataclass
class MountRegistry:
    probe_map: Map | None
    proc: str = "/proc"
    pid: str = "self"
    log: Callable[[str], None] = lambda _msg: None
    mounts: dict[str, NfsMount] = field(default_factory=dict)
    dev_clid: dict[int, int] = field(default_factory=dict)
    _probes: dict[int, _Probe] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set)
    parse_errors: int = 0
    _last_text: str | None = None  # the mountinfo last parsed without error

    def refresh(self) -> None:
        """Re-read mountinfo: add new NFS mounts, drop gone ones, probe new superblocks."""
        try:
            text = (Path(self.proc) / str(self.pid) / "mountinfo").read_text(
                encoding="utf-8", errors="surrogateescape"
            )
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
            self.log(f"warning: cannot read {self.proc}/{self.pid}/mountinfo: {e}")
            return
        self._last_text = text
        seen: dict[str, NfsMount] = {}
        for m in current:
            old = self.mounts.get(m.mount_point)
            nm = old if old is not None and old.mount.dev == m.dev else NfsMount(m)
            nm.clid = self.dev_clid.get(m.dev)
            seen[m.mount_point] = nm
        self.mounts = seen
        live_devs = {nm.mount.dev for nm in seen.values()}
        for dev in list(self.dev_clid):
            if dev not in live_devs:
                del self.dev_clid[dev]
        self._finish_probes()
        if self.probe_map is None:
            return
        for nm in seen.values():
            dev = nm.mount.dev
            if dev not in self.dev_clid and dev not in self._probes:
                self._start_probe(dev, nm.mount.mount_point)
        self._finish_probes(wait=PROBE_TIMEOUT)
        for nm in self.mounts.values():
            nm.clid = self.dev_clid.get(nm.mount.dev)

    def _all_probed(self) -> bool:
        return self.probe_map is None or all(nm.mount.dev in self.dev_clid for nm in self.mounts.values())

    def _start_probe(self, dev: int, mount_point: str) -> None:
        probe_map = self.probe_map
        assert probe_map is not None
        pr = _Probe(threading.Thread(target=lambda: None))

        def run() -> None:
            tid = threading.get_native_id()
            key = R.U32.pack(tid)
            probe_map.delete(key)
            try:
                os.statvfs(mount_point)
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

        # Daemon: a hung server must not keep the agent from exiting.
        pr.thread = threading.Thread(target=run, name=f"bpfnfs-probe-{dev}", daemon=True)
        self._probes[dev] = pr
        pr.thread.start()

    def _finish_probes(self, wait: float = 0.0) -> None:
        for dev, pr in list(self._probes.items()):
            pr.thread.join(wait)
            if pr.thread.is_alive():
                continue  # still blocked in statfs (server unreachable): keep waiting
            del self._probes[dev]
            if pr.result and pr.result[1] in STATFS_PROCS:
                self.dev_clid[dev] = pr.result[0]
            elif pr.error or pr.result:
                msg = pr.error or f"mount probe saw {pr.result[1] if pr.result else '?'}, not FSSTAT/STATFS"
                if msg not in self._warned:
                    self._warned.add(msg)
                    self.log(f"warning: {msg}; will retry")

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
