"""The kernel state of the dead: entries of exited processes and removed cgroups.

vfs_stats and owners are keyed by (mount, [pid,] cgroup, comm). On a node where pods come
and go all day, every identity that ever did NFS I/O would keep its entries until the mount
goes away, and the maps would fill. Every collection.retire_interval the agent folds the entries
of identities that are gone (found gone by two sweeps in a row, so the report between them still
names them) (pid no longer in /proc; cgroup no longer in the cgroup2 tree,
checked by a fresh scan made after the map was read, so a cgroup created meanwhile is never
taken for a removed one) into one retained identity per mount and op (RETIRED_CG), and
deletes them from the kernel. The fold reads and deletes each entry in one step where the
kernel can (BPF_MAP_LOOKUP_AND_DELETE_ELEM, hash maps since 5.14): writeback billed to a dead
process's key between the two is never lost; the key comes back and is folded next time.

Totals keep everything (the retained figures are added to every snapshot); the per-identity
series of the dead end (they already did: the exporter retires them); memory stays flat.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bpfnfs.collect import records as R
from bpfnfs.collect.histogram import Log2Hist
from bpfnfs.collect.snapshot import OwnerKey, OwnerStats, Snapshot, VfsKey, VfsStats, _sum_percpu, accumulate
from bpfnfs.enrich.identity import RETIRED_CG
from bpfnfs.loader.maps import Map

SWEEP_SECONDS = 10.0


@dataclass
class Retirer:
    """Folds dead identities' kernel entries into retained totals."""

    pid_alive: Callable[[int], bool]
    cgroup_alive: Callable[[int], bool]  # after a fresh scan of the cgroup tree
    rescan: Callable[[], None]  # forces that fresh scan
    clock: Callable[[], float] = time.monotonic
    every: float = SWEEP_SECONDS
    vfs: dict[VfsKey, VfsStats] = field(default_factory=dict)
    owners: dict[OwnerKey, OwnerStats] = field(default_factory=dict)
    folded: int = 0  # kernel entries folded and deleted (monotonic)
    _next: float = 0.0
    _gone: set[tuple[int, int]] = field(default_factory=set)  # (pid, cgroup) found gone last sweep

    def due(self) -> bool:
        return self.clock() >= self._next

    def sweep(self, maps: dict[str, Map]) -> int:
        """Fold and delete the entries of the dead; returns how many were folded."""
        self._next = self.clock() + self.every
        vmap, omap = maps["vfs_stats"], maps["owners"]
        vkeys = [k for k, _v in vmap.items()]
        okeys = [k for k, _v in omap.items()]
        # Read first, then look at the living: a process or cgroup behind an entry existed
        # before the read, so one missing after it is gone.
        cgs = {R.VFS_KEY.unpack(k)[4] for k in vkeys} | {R.OWNER_KEY.unpack(k)[2] for k in okeys}
        cgs.discard(0)
        cgs.discard(RETIRED_CG)
        self.rescan()
        dead_cgs = {cg for cg in cgs if not self.cgroup_alive(cg)}
        pids: dict[int, bool] = {}

        def gone(pid: int, cg: int) -> bool:
            if cg in dead_cgs:
                return True
            if pid and pid not in pids:
                pids[pid] = not self.pid_alive(pid)
            return bool(pid) and pids[pid]

        # Folded only when found gone by two sweeps in a row: the report between them still shows
        # the process or cgroup under its own name (its last interval is not lost to the fold).
        seen_gone, self._gone = self._gone, set()

        def dead(pid: int, cg: int) -> bool:
            if not gone(pid, cg):
                return False
            self._gone.add((pid, cg))
            return (pid, cg) in seen_gone

        n = 0
        for k in vkeys:
            dev, op, pid, _pad, cg, _comm = R.VFS_KEY.unpack(k)
            if not dead(pid, cg):
                continue
            raw = vmap.lookup_and_delete(k)
            if raw is None:
                continue
            v = _sum_percpu(vmap, raw, R.VFS_VAL)
            sc = R.VFS_VAL_SCALARS
            name = R.VFS_OPS[op] if op < len(R.VFS_OPS) else f"op{op}"
            accumulate(
                self.vfs,
                VfsKey(dev, name, 0, RETIRED_CG, ""),
                VfsStats(*v[:sc], latency=Log2Hist(list(v[sc:]), v[3])),
            )
            n += 1
        for k in okeys:
            dev, pid, cg, _comm = R.OWNER_KEY.unpack(k)
            if not dead(pid, cg):
                continue
            raw = omap.lookup_and_delete(k)
            if raw is None:
                continue
            accumulate(
                self.owners,
                OwnerKey(dev, 0, RETIRED_CG, ""),
                OwnerStats(*_sum_percpu(omap, raw, R.OWNER_VAL)),
            )
            n += 1
        self.folded += n
        return n

    def apply(self, snap: Snapshot) -> None:
        """Add the retained figures to a snapshot read after the sweep."""
        for k, v in self.vfs.items():
            accumulate(snap.vfs, k, v)
        for k, o in self.owners.items():
            accumulate(snap.owners, k, o)

    def forget_devs(self, gone: set[int]) -> None:
        """An unmounted superblock's retained figures go with it (as its kernel entries do)."""
        self.vfs = {k: v for k, v in self.vfs.items() if k.dev not in gone}
        self.owners = {k: v for k, v in self.owners.items() if k.dev not in gone}


__all__ = ["RETIRED_CG", "SWEEP_SECONDS", "Retirer"]
