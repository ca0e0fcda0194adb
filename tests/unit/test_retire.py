"""Entries of exited processes and removed cgroups: folded into retained totals, deleted from
the kernel maps, and an interval shows only new activity."""

from __future__ import annotations

from typing import Any

from bpfnfs.collect import records as R
from bpfnfs.collect.retire import Retirer
from bpfnfs.collect.snapshot import OwnerKey, Snapshot, VfsKey
from bpfnfs.collect.views import MountReport
from bpfnfs.enrich.identity import RETIRED_CG, IdentityResolver

DEV = 55


class FakeMap:
    """A per-CPU hash map of one CPU (what the Retirer uses of loader.maps.Map)."""

    def __init__(self, vsize: int) -> None:
        self.d: dict[bytes, bytes] = {}
        self.value_size = vsize

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.d.items())

    def lookup_and_delete(self, key: bytes) -> bytes | None:
        return self.d.pop(key, None)

    def percpu_slots(self, raw: bytes) -> list[bytes]:
        return [raw]


def vkey(pid: int, cg: int, comm: bytes, op: int = 1) -> bytes:
    return R.VFS_KEY.pack(DEV, op, pid, 0, cg, comm)


def vval(calls: int, nbytes: int) -> bytes:
    return R.VFS_VAL.pack(calls, 0, nbytes, 1000 * calls, *([0] * (R.VFS_VAL.size // 8 - 4)))


def oval(write_bytes: int) -> bytes:
    n = R.OWNER_VAL.size // 8
    vals = [0] * n
    vals[R.OWNER_VAL_FIELDS.index("write_rpcs")] = 1
    vals[R.OWNER_VAL_FIELDS.index("write_bytes")] = write_bytes
    return R.OWNER_VAL.pack(*vals)


def setup() -> tuple[Retirer, dict[str, Any], set[int], set[int]]:
    vm, om = FakeMap(R.VFS_VAL.size), FakeMap(R.OWNER_VAL.size)
    vm.d[vkey(100, 11, b"dd")] = vval(5, 4096)  # alive
    vm.d[vkey(101, 22, b"dd")] = vval(3, 1024)  # its cgroup was removed
    vm.d[vkey(102, 11, b"cat")] = vval(2, 512)  # exited
    om.d[R.OWNER_KEY.pack(DEV, 101, 22, b"dd")] = oval(8192)
    live_pids, live_cgs = {100}, {11}
    scans: list[int] = []
    r = Retirer(
        pid_alive=live_pids.__contains__,
        cgroup_alive=live_cgs.__contains__,
        rescan=lambda: scans.append(1),
    )
    return r, {"vfs_stats": vm, "owners": om}, live_pids, live_cgs


def test_sweep_folds_the_dead_and_keeps_totals() -> None:
    r, maps, _pids, _cgs = setup()
    assert r.sweep(maps) == 0  # type: ignore[arg-type]  # found gone: reported once more under its name
    assert len(maps["vfs_stats"].d) == 3
    assert r.sweep(maps) == 3  # type: ignore[arg-type]
    assert list(maps["vfs_stats"].d) == [vkey(100, 11, b"dd")]
    assert maps["owners"].d == {}
    snap = Snapshot(taken=1.0)
    r.apply(snap)
    retired = snap.vfs[VfsKey(DEV, R.VFS_OPS[1], 0, RETIRED_CG, "")]
    assert (retired.calls, retired.bytes) == (5, 1536)
    assert snap.owners[OwnerKey(DEV, 0, RETIRED_CG, "")].write_bytes == 8192
    assert r.folded == 3
    # A dead process's writeback billed after the fold: the key comes back, folded again, summed.
    maps["owners"].d[R.OWNER_KEY.pack(DEV, 101, 22, b"dd")] = oval(4096)
    assert r.sweep(maps) == 1  # type: ignore[arg-type]  # still gone since the last sweep
    snap = Snapshot(taken=2.0)
    r.apply(snap)
    assert snap.owners[OwnerKey(DEV, 0, RETIRED_CG, "")].write_bytes == 12288
    r.forget_devs({DEV})
    assert not r.vfs and not r.owners


def test_interval_after_a_fold_shows_only_new_activity() -> None:
    """prev had the identity's own row; cur has it folded into the retired row: the interval's
    retired row is the activity since prev, not the identity's whole history."""
    from bpfnfs.collect.snapshot import OwnerStats, VfsStats

    def rep(vfs: dict[Any, Any], owners: dict[Any, Any]) -> MountReport:
        return MountReport("/m", "s", "/e", "3", "nfs", "0:55", [], vfs=vfs, owners=owners)  # type: ignore[call-arg]

    prev = rep({("read", 0, 22, "dd"): VfsStats(3, 0, 1024)}, {(0, 22, "dd"): OwnerStats(write_bytes=8192)})
    cur = rep(
        {("read", 0, RETIRED_CG, ""): VfsStats(4, 0, 1536)},  # 1 more call before it went away
        {(0, RETIRED_CG, ""): OwnerStats(write_bytes=8192)},
    )
    d = cur - prev
    assert d.vfs == {("read", 0, RETIRED_CG, ""): VfsStats(1, 0, 512)}
    assert d.owners[(0, RETIRED_CG, "")].write_bytes == 0


def test_retired_identity_is_one_row_and_no_series() -> None:
    ident = IdentityResolver(lambda _cg: None).of(RETIRED_CG)
    assert ident.removed and ident.cgroup_label.startswith("(exited")
