"""The client-picture views: identities, files, errors, paths, cgroup filters."""

from pathlib import Path

import pytest

from bpfnfs.collect import records as R
from bpfnfs.collect.errnames import errno_name, nfs4_op_name, nfs_status_name
from bpfnfs.collect.histogram import Log2Hist
from bpfnfs.collect.snapshot import (
    ErrKey,
    FileStats,
    OwnerKey,
    OwnerStats,
    Snapshot,
    VfsKey,
    VfsStats,
)
from bpfnfs.collect.views import build_report, diff_report, file_rows, identity_rows
from bpfnfs.enrich.cgroups import CgroupError, CgroupResolver, resolve_filter, subtree_ids
from bpfnfs.enrich.identity import IdentityResolver, PodMeta
from bpfnfs.enrich.mountinfo import Mount
from bpfnfs.enrich.mounts import NfsMount

DEV = (0 << 20) | 55


def _mount(mp: str = "/mnt/a", root: str = "/") -> NfsMount:
    m = Mount(1, 0, 0, 55, root, mp, "rw", (), "nfs", "srv:/export", {"vers": "3", "addr": "10.0.0.1"})
    return NfsMount(m, clid=7)


def _snap() -> Snapshot:
    s = Snapshot(taken=1.0)
    s.vfs[VfsKey(DEV, "write", 100, 11, "fio")] = VfsStats(4, 0, 4096, 4000, Log2Hist([4] + [0] * 31, 4000))
    s.vfs[VfsKey(DEV, "read", 101, 22, "cat")] = VfsStats(2, 1, 100, 2000, Log2Hist([2] + [0] * 31, 2000))
    s.owners[OwnerKey(DEV, 100, 11, "fio")] = OwnerStats(0, 0, 1, 4096, 1, 0)
    s.owners[OwnerKey(DEV, 0, 0, "")] = OwnerStats(0, 0, 1, 10, 0, 0)
    s.files[(DEV, 1 << 40)] = FileStats(
        reads=0, writes=4, write_bytes=4096, latency_ns=4000, wire_write_bytes=4096
    )
    s.files[(DEV, 5)] = FileStats(reads=2, read_bytes=100, errors=1, latency_ns=2000)
    s.errors[ErrKey(R.ERR_RPC, 7, 3, "LOOKUP", 0, 2)] = 3
    s.errors[ErrKey(R.ERR_XDR4, 7, 4, "", 15, 2)] = 1
    s.errors[ErrKey(R.ERR_VFS, DEV, 0, "", 0, 5)] = 1
    return s


def test_identity_rows_by_process_and_cgroup() -> None:
    rep = build_report(_snap(), [_mount()])
    m = rep.mounts[0]
    procs = {r["name"]: r for r in identity_rows(m, "process", IdentityResolver(lambda cg: None).of)}
    assert procs["fio [100]"]["write_bytes"] == 4096
    assert procs["fio [100]"]["wire_write_bytes"] == 4096
    assert procs["cat [101]"]["errors"] == 1
    assert procs["(unattributed)"]["wire_write_bytes"] == 10
    cgs = {r["cgroup_id"]: r for r in identity_rows(m, "cgroup", IdentityResolver({11: "/pod-a"}.get).of)}
    assert cgs[11]["name"] == "/pod-a"
    assert cgs[22]["name"] == "cgroup 22 (removed)"


def test_identity_rows_by_pod() -> None:
    """Rows per pod from the cgroup path (two containers of one pod are one row), names from
    the pod index; a process outside pods is its own row; a removed pod keeps its name."""
    uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    paths = {11: f"/kubepods/burstable/pod{uid}/{'a' * 64}", 22: f"/kubepods/burstable/pod{uid}/{'b' * 64}"}

    class Pods:
        def pod(self, u: str) -> PodMeta | None:
            return PodMeta(uid, "shop", "cart", {}) if u == uid else None

    m = build_report(_snap(), [_mount()]).mounts[0]
    rows = {r["name"]: r for r in identity_rows(m, "pod", IdentityResolver(paths.get, Pods()).of)}
    assert set(rows) == {"shop/cart", "(unattributed)"}
    assert rows["shop/cart"]["write_bytes"] == 4096 and rows["shop/cart"]["pod_uid"] == uid
    assert (rows["shop/cart"]["namespace"], rows["shop/cart"]["pod"]) == ("shop", "cart")
    no_api = {r["name"] for r in identity_rows(m, "pod", IdentityResolver(paths.get).of)}
    assert uid in no_api  # the UID from the cgroup path when the API gave no name
    outside = {r["name"] for r in identity_rows(m, "pod", IdentityResolver({11: "/system.slice/x"}.get).of)}
    assert "(not in a pod)" in outside


def test_errors_named_per_layer() -> None:
    m = build_report(_snap(), [_mount()]).mounts[0]
    assert m.errors_by_op() == {
        ("rpc", "LOOKUP"): {"ENOENT": 3},
        ("server", "LOOKUP"): {"NFS4ERR_NOENT": 1},
        ("vfs", "read"): {"EIO": 1},
    }


def test_file_rows_paths_and_order() -> None:
    rep = build_report(_snap(), [_mount("/mnt/a", "/sub")], paths={(DEV, 1 << 40): ("/sub/d/big", False)})
    rows = file_rows(rep.mounts[0], rep.paths, 10, "bytes")
    assert [r["fileid"] for r in rows] == [1 << 40, 5]
    assert (rows[0]["path"], rows[0]["relative_path"]) == ("/mnt/a/d/big", "/d/big")
    assert rows[1]["path"] is None
    assert file_rows(rep.mounts[0], rep.paths, 1, "ops")[0]["fileid"] == 1 << 40


def test_interval_diff_drops_idle_rows() -> None:
    a = build_report(_snap(), [_mount()])
    b = build_report(_snap(), [_mount()])
    d = diff_report(b, a)[0]
    assert identity_rows(d, "process", IdentityResolver(lambda cg: None).of) == []
    assert file_rows(d, {}, 10, "ops") == []
    assert d.errors_by_op() == {}


def test_errno_names() -> None:
    assert errno_name(-116) == "ESTALE"
    assert errno_name(528) == "EJUKEBOX"
    assert errno_name(10008) == "NFS4ERR_DELAY"
    assert errno_name(99999) == "E99999"
    assert nfs_status_name(70, 3) == "NFS3ERR_STALE" and nfs_status_name(10008, 3) == "NFS3ERR_JUKEBOX"
    assert nfs_status_name(13, 4) == "NFS4ERR_ACCESS" and nfs_status_name(10008, 4) == "NFS4ERR_DELAY"
    assert nfs4_op_name(18) == "OPEN" and nfs4_op_name(53) == "SEQUENCE" and nfs4_op_name(1) == "OP1"


def test_cgroup_filter_paths(tmp_path: Path) -> None:
    (tmp_path / "pod" / "c1").mkdir(parents=True)
    (tmp_path / "file").write_text("")
    assert resolve_filter("pod", tmp_path) == (tmp_path / "pod").resolve()
    assert len(subtree_ids(tmp_path / "pod")) == 2
    with pytest.raises(CgroupError, match="no such cgroup"):
        resolve_filter("/nope", tmp_path)
    with pytest.raises(CgroupError, match="not a directory in the cgroup hierarchy"):
        resolve_filter(str(tmp_path / "file"), tmp_path)
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        resolve_filter("pod", None)
    r = CgroupResolver(tmp_path)
    import os

    assert r.path(os.stat(tmp_path / "pod" / "c1").st_ino) == "/pod/c1"
    assert r.path(123456789) is None
