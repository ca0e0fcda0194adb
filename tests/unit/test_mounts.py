"""Mount -> RPC client chains, as rpc_clnt_show_stats sums them."""

from pathlib import Path

from bpfnfs.collect.snapshot import ClientInfo
from bpfnfs.enrich.mountinfo import parse_mountinfo
from bpfnfs.enrich.mounts import NfsMount, client_chains, client_transports

V3 = "40 1 0:50 / /mnt/nfs3 rw - nfs 127.0.0.1:/srv/nfs rw,vers=3,addr=127.0.0.1"
V4 = "41 1 0:51 / /mnt/nfs4 rw - nfs4 127.0.0.1:/ rw,vers=4.2,addr=127.0.0.1"
V4B = "42 1 0:52 / /mnt/other rw - nfs4 10.0.0.9:/ rw,vers=4.2,addr=10.0.0.9"


def mounts(text: str, clids: list[int]) -> list[NfsMount]:
    return [NfsMount(m, c) for m, c in zip(parse_mountinfo(text), clids, strict=True)]


def test_parent_chain_from_btf() -> None:
    ms = mounts(V4, [7])
    clients = {7: ClientInfo(7, 5, 4, "nfs", True), 5: ClientInfo(5, 5, 4, "nfs", True)}
    chains, orphan = client_chains(ms, clients)
    assert chains == {"/mnt/nfs4": [7, 5]}
    assert orphan == []


def test_tracefs_orphan_is_parent_when_one_server() -> None:
    ms = mounts(V3 + "\n" + V4, [3, 7])
    clients = {
        3: ClientInfo(3, 3, 3, "nfs", False),
        7: ClientInfo(7, 7, 4, "nfs", False),
        5: ClientInfo(5, 5, 4, "nfs", False),  # the nfs_client's lease client
        9: ClientInfo(9, 9, 1, "nfs4_cb", False),  # nfsd's callback client: not ours
    }
    chains, orphan = client_chains(ms, clients)
    assert chains == {"/mnt/nfs3": [3], "/mnt/nfs4": [7, 5]}
    assert orphan == []


def test_tracefs_orphan_unattributed_with_two_servers() -> None:
    ms = mounts(V4 + "\n" + V4B, [7, 8])
    clients = {5: ClientInfo(5, 5, 4, "nfs", False)}
    chains, orphan = client_chains(ms, clients)
    assert chains == {"/mnt/nfs4": [7], "/mnt/other": [8]}
    assert orphan == [5]


def test_unprobed_mount_has_no_chain() -> None:
    chains, _ = client_chains(mounts(V3, [None]), {})  # type: ignore[list-item]
    assert chains == {}


def test_tracefs_parent_by_shared_transport(tmp_path: Path) -> None:
    """debugfs rpc_clnt/<id>/xprt: the unowned client on a mount's transport is its parent,
    even with two servers (where the one-server rule gives up)."""
    root = tmp_path / "rpc_clnt"
    for clid, xprt in ((7, "3"), (5, "3"), (8, "4"), (6, "4")):
        (root / str(clid)).mkdir(parents=True)
        (root / str(clid) / "xprt").symlink_to(f"../../rpc_xprt/{xprt}")
    transports = client_transports(root)
    assert transports == {7: "3", 5: "3", 8: "4", 6: "4"}
    ms = mounts(V4 + "\n" + V4B, [7, 8])
    clients = {5: ClientInfo(5, 5, 4, "nfs", False), 6: ClientInfo(6, 6, 4, "nfs", False)}
    chains, orphan = client_chains(ms, clients, transports)
    assert chains == {"/mnt/nfs4": [7, 5], "/mnt/other": [8, 6]}
    assert orphan == []


def test_no_debugfs_means_no_transports(tmp_path: Path) -> None:
    assert client_transports(tmp_path / "missing") == {}
