from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from bpfnfs.enrich.mountinfo import (
    Mount,
    MountinfoError,
    nfs_mounts,
    parse_mountinfo,
    parse_super_options,
    read_mountinfo,
    unescape_octal,
)

ROOT = "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw,errors=remount-ro"
PROC = "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw"
NFS3 = (
    "112 22 0:52 / /mnt/nfs3 rw,relatime shared:60 - nfs 127.0.0.1:/srv/export "
    "rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
    "mountaddr=127.0.0.1,mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=127.0.0.1"
)
NFS42 = (
    "130 22 0:61 / /home rw,relatime shared:70 - nfs4 server.example.com:/export/home "
    "rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,nconnect=2,timeo=600,"
    "retrans=2,sec=sys,clientaddr=10.0.0.2,local_lock=none,addr=10.0.0.1"
)
# No optional fields at all (private mount), as on a "mount --make-private" tree.
NFS_PRIVATE = (
    "140 22 0:63 / /mnt/private rw,relatime - nfs4 10.0.0.1:/ "
    "rw,vers=4.1,rsize=65536,wsize=65536,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
    "clientaddr=10.0.0.2,local_lock=none,addr=10.0.0.1"
)
NFS_IPV6 = (
    "150 22 0:64 / /mnt/v6 rw,relatime shared:80 - nfs [fe80::1%eth0]:/export "
    "rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp6,timeo=600,retrans=2,sec=sys,"
    "mountaddr=fe80::1%eth0,mountvers=3,mountproto=udp6,local_lock=none"
)
# Bind mount of a subdirectory of the NFSv3 mount above: same dev, root is the subdir.
NFS_BIND = (
    "160 22 0:52 /projects/alpha /srv/alpha rw,relatime shared:60 - nfs 127.0.0.1:/srv/export "
    "rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
    "mountaddr=127.0.0.1,mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=127.0.0.1"
)
MANY_OPTIONAL = (
    "170 22 0:65 / /mnt/slave rw,relatime shared:1 master:2 propagate_from:3 unbindable - nfs "
    "nas:/vol rw,vers=3,addr=192.168.1.5"
)


def test_root_and_proc() -> None:
    root, proc = parse_mountinfo(f"{ROOT}\n{PROC}\n")
    assert root == Mount(
        mount_id=22,
        parent_id=1,
        major=253,
        minor=0,
        root="/",
        mount_point="/",
        mount_options="rw,relatime",
        optional=("shared:1",),
        fstype="ext4",
        source="/dev/mapper/vg-root",
        super_options={"rw": "", "errors": "remount-ro"},
    )
    assert not root.is_nfs
    assert root.nfs_version is None and root.server is None and root.export is None
    assert proc.parent_id == 22 and proc.fstype == "proc" and proc.source == "proc"


def test_nfs3() -> None:
    (m,) = parse_mountinfo(NFS3)
    assert m.is_nfs
    assert (m.major, m.minor) == (0, 52)
    assert m.dev == 52
    assert m.nfs_version == "3"
    assert m.server == "127.0.0.1"
    assert m.export == "/srv/export"
    assert m.super_options["rsize"] == "1048576"
    assert m.super_options["hard"] == ""
    assert m.optional == ("shared:60",)


def test_nfs42() -> None:
    (m,) = parse_mountinfo(NFS42)
    assert m.fstype == "nfs4"
    assert m.nfs_version == "4.2"
    # addr= wins over the host name in the source.
    assert m.server == "10.0.0.1"
    assert m.export == "/export/home"
    assert m.super_options["clientaddr"] == "10.0.0.2"


def test_no_optional_fields() -> None:
    (m,) = parse_mountinfo(NFS_PRIVATE)
    assert m.optional == ()
    assert m.mount_options == "rw,relatime"
    assert m.fstype == "nfs4"
    assert m.export == "/"
    assert m.nfs_version == "4.1"


def test_many_optional_fields() -> None:
    (m,) = parse_mountinfo(MANY_OPTIONAL)
    assert m.optional == ("shared:1", "master:2", "propagate_from:3", "unbindable")
    assert m.fstype == "nfs"
    assert m.source == "nas:/vol"
    assert m.server == "192.168.1.5"


def test_ipv6_source_without_addr() -> None:
    (m,) = parse_mountinfo(NFS_IPV6)
    assert "addr" not in m.super_options
    assert m.server == "fe80::1%eth0"
    assert m.export == "/export"


def test_bind_mount_of_nfs_subdirectory() -> None:
    nfs, bind = parse_mountinfo(f"{NFS3}\n{NFS_BIND}\n")
    assert bind.root == "/projects/alpha"
    assert bind.is_bind_subdir and not nfs.is_bind_subdir
    assert bind.mount_point == "/srv/alpha"
    # Same superblock, so BPF sees the same s_dev for both.
    assert bind.dev == nfs.dev
    assert bind.export == "/srv/export"


def test_escaped_paths() -> None:
    line = (
        r"180 22 0:66 /dir\040with\011tab /mnt/my\040share\012x\134y rw - nfs "
        r"srv:/exp\040space rw,vers=3,addr=10.1.1.1"
    )
    (m,) = parse_mountinfo(line)
    assert m.root == "/dir with\ttab"
    assert m.mount_point == "/mnt/my share\nx\\y"
    assert m.source == "srv:/exp space"
    assert m.export == "/exp space"


def test_unescape_octal_leaves_other_backslashes() -> None:
    assert unescape_octal(r"a\040b") == "a b"
    assert unescape_octal(r"a\04b") == r"a\04b"
    assert unescape_octal(r"a\xb") == r"a\xb"
    assert unescape_octal("plain") == "plain"


def test_nfs_version_fallbacks() -> None:
    v4 = parse_mountinfo("1 0 0:1 / /a rw - nfs4 h:/ rw,addr=1.2.3.4")[0]
    assert v4.nfs_version == "4"
    v_unknown = parse_mountinfo("1 0 0:1 / /a rw - nfs h:/ rw")[0]
    assert v_unknown.nfs_version is None
    # cifs also has vers=, but it is not NFS.
    cifs = parse_mountinfo("1 0 0:1 / /a rw - cifs //h/s rw,vers=3.1.1,addr=1.2.3.4")[0]
    assert cifs.nfs_version is None and cifs.server is None


def test_server_from_source_host() -> None:
    m = parse_mountinfo("1 0 0:1 / /a rw - nfs filer01:/vol/x rw,vers=3")[0]
    assert m.server == "filer01"
    assert m.export == "/vol/x"
    odd = parse_mountinfo("1 0 0:1 / /a rw - nfs nocolon rw,vers=3")[0]
    assert odd.server is None and odd.export is None


def test_dev_encoding_matches_kernel_mkdev() -> None:
    m = parse_mountinfo("1 0 259:3 / /a rw - ext4 /dev/nvme0n1p3 rw")[0]
    assert m.dev == (259 << 20) | 3


def test_empty_source_keeps_field_positions() -> None:
    (m,) = parse_mountinfo("1 0 0:1 / /a rw - tmpfs  rw,size=100k")
    assert m.source == ""
    assert m.super_options == {"rw": "", "size": "100k"}


def test_nsfs_root_is_not_a_path() -> None:
    (m,) = parse_mountinfo("600 25 0:4 net:[4026532285] /run/netns/x rw shared:2 - nsfs nsfs rw")
    assert m.root == "net:[4026532285]"


def test_blank_lines_skipped_and_nfs_filter() -> None:
    mounts = parse_mountinfo(f"\n{ROOT}\n\n{NFS3}\n{PROC}\n{NFS42}\n")
    assert [m.mount_point for m in nfs_mounts(mounts)] == ["/mnt/nfs3", "/home"]


def test_parse_super_options() -> None:
    assert parse_super_options("rw,vers=4.2,,sec=krb5:krb5i,x=a=b") == {
        "rw": "",
        "vers": "4.2",
        "sec": "krb5:krb5i",
        "x": "a=b",
    }


def test_mount_is_hashable_and_frozen() -> None:
    a = parse_mountinfo(NFS3)[0]
    b = parse_mountinfo(NFS3)[0]
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.mount_id = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("36 35 98:0 /mnt1 /mnt2", "too few fields"),
        ("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw,errors=continue", "separator"),
        ("x 35 98:0 / /mnt rw - ext3 /dev/root rw", "mount ID 'x'"),
        ("36 -1 98:0 / /mnt rw - ext3 /dev/root rw", "parent ID '-1'"),
        ("36 35 98 / /mnt rw - ext3 /dev/root rw", "major:minor '98'"),
        ("36 35 98:x / /mnt rw - ext3 /dev/root rw", "major:minor"),
        ("36 35 98:0 / /mnt rw - ext3 /dev/root", "after ' - '"),
        ("36 35 98:0 / mnt rw - ext3 /dev/root rw", "absolute"),
    ],
)
def test_malformed_lines(line: str, reason: str) -> None:
    text = f"{ROOT}\n{PROC}\n{line}\n{NFS3}\n"
    with pytest.raises(MountinfoError) as info:
        parse_mountinfo(text)
    err = info.value
    assert err.lineno == 3
    assert err.line == line
    assert reason in err.reason
    msg = str(err)
    assert msg.startswith("mountinfo line 3 is malformed (")
    assert reason in msg
    assert line[:20] in msg


def test_error_message_truncates_long_lines() -> None:
    line = "x " + "a" * 500
    with pytest.raises(MountinfoError) as info:
        parse_mountinfo(line)
    msg = str(info.value)
    assert "line 1" in msg
    assert len(msg) < 250
    assert "..." in msg


def test_error_pickles() -> None:
    err = MountinfoError(7, "bad line", "too few fields")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.lineno, copy.line, copy.reason) == (7, "bad line", "too few fields")
    assert str(copy) == str(err)


def test_read_mountinfo(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "mountinfo").write_text(f"{ROOT}\n{NFS42}\n")
    mounts = read_mountinfo(4242, proc=str(tmp_path))
    assert [m.mount_point for m in mounts] == ["/", "/home"]
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(f"{PROC}\n")
    assert read_mountinfo(proc=str(tmp_path))[0].fstype == "proc"
    with pytest.raises(FileNotFoundError):
        read_mountinfo(1, proc=str(tmp_path))


def test_read_real_self_mountinfo() -> None:
    # Whatever this machine has mounted must parse.
    if not Path("/proc/self/mountinfo").exists():
        pytest.skip("no /proc")
    mounts = read_mountinfo()
    assert any(m.mount_point == "/" for m in mounts)
