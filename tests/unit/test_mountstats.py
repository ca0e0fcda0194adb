from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from bpfnfs.enrich.mountstats import (
    BYTES_NAMES,
    EVENT_NAMES,
    MountstatsError,
    NfsMountStats,
    OpStats,
    diff,
    parse_mountstats,
    read_mountstats,
)


def op(name: str, *values: int) -> str:
    # rpc_clnt_show_stats() prints "\t%12s: " then the counters.
    return f"\t{name:>12}: " + " ".join(str(v) for v in values)


def counters(values: list[int]) -> str:
    # nfs_show_stats() prints "%lu " per counter, leaving a trailing space.
    return "".join(f"{v} " for v in values)


V3_EVENTS = [52, 1043, 0, 7, 24, 31, 178, 0, 0, 12, 0, 8, 10, 3, 24, 4, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0]
V3_BYTES = [67174400, 1048576, 0, 0, 67174400, 1048576, 16400, 256]

NFS3_BLOCK = [
    "device 127.0.0.1:/srv/export mounted on /mnt/nfs3 with fstype nfs statvers=1.1",
    "\topts:\trw,vers=3,rsize=1048576,wsize=1048576,namlen=255,acregmin=3,acregmax=60,acdirmin=30,"
    "acdirmax=60,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=127.0.0.1,mountvers=3,"
    "mountport=20048,mountproto=udp,local_lock=none",
    "\tage:\t3600",
    "\tcaps:\tcaps=0x3fc7,wtmult=4096,dtsize=1048576,bsize=0,namlen=255",
    "\tsec:\tflavor=1,pseudoflavor=1",
    "\tevents:\t" + counters(V3_EVENTS),
    "\tbytes:\t" + counters(V3_BYTES),
    "\tRPC iostats version: 1.1  p/v: 100003/3 (nfs)",
    "\txprt:\ttcp 871 1 1 0 0 613 613 0 2442 0 2 0 0",
    "\tper-op statistics",
    op("NULL", 1, 1, 0, 44, 24, 0, 0, 0, 0),
    op("GETATTR", 52, 52, 0, 6032, 5824, 5, 47, 60, 0),
    op("SETATTR", 3, 3, 0, 444, 432, 0, 2, 2, 0),
    op("LOOKUP", 31, 31, 0, 3720, 5108, 2, 22, 26, 4),
    op("ACCESS", 178, 178, 0, 21000, 21360, 8, 120, 140, 0),
    op("READ", 512, 512, 0, 65536, 67174400, 12, 3456, 3600, 0),
    op("WRITE", 8, 8, 0, 1049600, 1088, 0, 80, 82, 0),
    op("CREATE", 1, 1, 0, 160, 264, 0, 1, 1, 0),
    op("READDIRPLUS", 10, 10, 0, 1280, 42000, 0, 15, 16, 0),
    op("FSSTAT", 2, 2, 0, 232, 336, 0, 1, 1, 0),
    op("FSINFO", 2, 2, 0, 232, 320, 0, 1, 1, 0),
    op("PATHCONF", 1, 1, 0, 116, 140, 0, 0, 0, 0),
    op("COMMIT", 2, 2, 0, 256, 336, 0, 9, 9, 0),
    "",
]

V4_EVENTS = [900, 4000, 3, 11, 120, 300, 500, 0, 0, 40, 0, 60, 25, 5, 120, 30, 2, 120, 0, 1, 9] + [0] * 6
V4_BYTES = [134217728, 33554432, 4096, 0, 134221824, 33554432, 32769, 8192]

NFS42_BLOCK = [
    "device server.example.com:/export/home mounted on /home with fstype nfs4 statvers=1.1",
    "\topts:\trw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,acregmin=3,acregmax=60,acdirmin=30,"
    "acdirmax=60,hard,proto=tcp,nconnect=2,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,"
    "local_lock=none",
    "\tage:\t86400",
    "\timpl_id:\tname='',domain='',date='0,0'",
    "\tcaps:\tcaps=0x3ffbffff,wtmult=512,dtsize=1048576,bsize=0,namlen=255",
    "\tnfsv4:\tbm0=0xfdffbfff,bm1=0xf9be3e,bm2=0x68800,acl=0x3,sessions,pnfs=not configured,"
    "lease_time=90,lease_expired=0",
    "\tsec:\tflavor=1,pseudoflavor=1",
    "\tevents:\t" + counters(V4_EVENTS),
    "\tbytes:\t" + counters(V4_BYTES),
    "\tRPC iostats version: 1.1  p/v: 100003/4 (nfs)",
    "\txprt:\ttcp 0 0 1 0 11 1843 1843 0 1843 0 2 0 0",
    "\txprt:\ttcp 0 0 1 0 11 1820 1820 0 1820 0 2 0 0",
    "\tper-op statistics",
    op("NULL", 1, 1, 0, 44, 24, 0, 0, 0, 0),
    op("READ", 1024, 1024, 0, 196608, 134348800, 20, 5000, 5200, 0),
    op("WRITE", 32, 32, 0, 33571840, 5120, 1, 300, 310, 0),
    op("COMMIT", 4, 4, 0, 640, 512, 0, 20, 20, 0),
    op("OPEN", 60, 60, 0, 16320, 24000, 2, 90, 95, 1),
    op("OPEN_DOWNGRADE", 0, 0, 0, 0, 0, 0, 0, 0, 0),
    op("CLOSE", 60, 60, 0, 12000, 7680, 0, 60, 62, 0),
    op("SETCLIENTID_CONFIRM", 0, 0, 0, 0, 0, 0, 0, 0, 0),
    op("GETATTR", 900, 900, 0, 180000, 216000, 10, 700, 740, 0),
    op("LOOKUP", 300, 300, 0, 66000, 84000, 3, 250, 260, 40),
    op("EXCHANGE_ID", 2, 2, 0, 560, 216, 0, 1, 1, 0),
    op("CREATE_SESSION", 1, 1, 0, 196, 124, 0, 1, 1, 0),
    op("SEQUENCE", 15, 15, 0, 2040, 1200, 0, 9, 10, 0),
    op("RECLAIM_COMPLETE", 1, 1, 0, 128, 88, 0, 2, 2, 0),
    op("LAYOUTGET", 0, 0, 0, 0, 0, 0, 0, 0, 0),
    op("TEST_STATEID", 0, 0, 0, 0, 0, 0, 0, 0, 0),
    op("BIND_CONN_TO_SESSION", 1, 1, 0, 116, 60, 0, 0, 0, 0),
    op("LOOKUPP", 0, 0, 0, 0, 0, 0, 0, 0, 0),
    op("READ_PLUS", 64, 64, 0, 12288, 8390000, 1, 400, 410, 0),
    "",
]

# An old (RHEL 6-era) kernel: statvers 1.0, RPC iostats 1.0, 8 columns per op,
# 10-field tcp xprt line (before max_slots/sending_u/pending_u).
NFS_V10_BLOCK = [
    "device filer:/vol/old mounted on /mnt/old with fstype nfs statvers=1.0",
    "\topts:\trw,vers=3,rsize=65536,wsize=65536,hard,proto=tcp,timeo=600,retrans=2,sec=sys",
    "\tage:\t120",
    "\tcaps:\tcaps=0x3fc7,wtmult=512,dtsize=8192,bsize=0,namlen=255",
    "\tsec:\tflavor=1,pseudoflavor=1",
    "\tevents:\t" + counters([1] * 27),
    "\tbytes:\t" + counters([10, 20, 0, 0, 10, 20, 1, 1]),
    "\tRPC iostats version: 1.0  p/v: 100003/3 (nfs)",
    "\txprt:\ttcp 752 1 1 0 0 40 40 0 80 0",
    "\tper-op statistics",
    op("NULL", 0, 0, 0, 0, 0, 0, 0, 0),
    op("READ", 4, 4, 0, 512, 16896, 0, 8, 9),
    "",
]

OTHER_MOUNTS = [
    "device rootfs mounted on / with fstype rootfs",
    "device proc mounted on /proc with fstype proc",
    "device sysfs mounted on /sys with fstype sysfs",
    "device /dev/mapper/vg-root mounted on / with fstype ext4",
    "no device mounted on /weird with fstype tmpfs",
    "device sunrpc mounted on /var/lib/nfs/rpc_pipefs with fstype rpc_pipefs",
]


def text(*blocks: list[str]) -> str:
    return "\n".join(line for block in blocks for line in block) + "\n"


def test_nfs3_block() -> None:
    stats = parse_mountstats(text(NFS3_BLOCK))
    assert list(stats) == ["/mnt/nfs3"]
    s = stats["/mnt/nfs3"]
    assert s.device == "127.0.0.1:/srv/export"
    assert s.fstype == "nfs"
    assert s.statvers == "1.1"
    assert s.age == 3600
    assert s.events == dict(zip(EVENT_NAMES, V3_EVENTS, strict=True))
    assert s.events["vfsopen"] == 24 and s.events["pnfs_write"] == 0
    assert s.bytes == dict(zip(BYTES_NAMES, V3_BYTES, strict=True))
    assert s.bytes["serverreadbytes"] == 67174400
    assert (s.rpc_version, s.prog, s.vers, s.prog_name) == ("1.1", 100003, 3, "nfs")
    assert s.xprt == [("tcp", [871, 1, 1, 0, 0, 613, 613, 0, 2442, 0, 2, 0, 0])]
    assert s.opts["vers"] == "3" and s.opts["hard"] == ""
    assert len(s.ops) == 13
    assert s.ops["READ"] == OpStats(512, 512, 0, 65536, 67174400, 12, 3456, 3600, 0)
    assert s.ops["LOOKUP"].errors == 4
    assert s.ops["READDIRPLUS"].bytes_recv == 42000


def test_event_and_bytes_names() -> None:
    assert len(EVENT_NAMES) == 27 and len(set(EVENT_NAMES)) == 27
    assert EVENT_NAMES[0] == "inoderevalidate" and EVENT_NAMES[-1] == "pnfs_write"
    assert len(BYTES_NAMES) == 8


def test_nfs42_block() -> None:
    s = parse_mountstats(text(NFS42_BLOCK))["/home"]
    assert s.fstype == "nfs4"
    assert s.device == "server.example.com:/export/home"
    assert (s.prog, s.vers) == (100003, 4)
    assert s.opts["vers"] == "4.2" and s.opts["clientaddr"] == "10.0.0.2"
    # nconnect=2: one xprt line per connection, in order.
    assert [t for t, _ in s.xprt] == ["tcp", "tcp"]
    assert s.xprt[1][1][5] == 1820
    assert s.ops["READ_PLUS"] == OpStats(64, 64, 0, 12288, 8390000, 1, 400, 410, 0)
    assert s.ops["SEQUENCE"].ops == 15
    for name in (
        "EXCHANGE_ID",
        "CREATE_SESSION",
        "LAYOUTGET",
        "TEST_STATEID",
        "OPEN_DOWNGRADE",
        "SETCLIENTID_CONFIRM",
        "BIND_CONN_TO_SESSION",
        "RECLAIM_COMPLETE",
        "LOOKUPP",
    ):
        assert name in s.ops
    assert s.ops["OPEN"].errors == 1


def test_statvers_10_block() -> None:
    s = parse_mountstats(text(NFS_V10_BLOCK))["/mnt/old"]
    assert s.statvers == "1.0"
    assert s.rpc_version == "1.0"
    assert s.ops["READ"] == OpStats(4, 4, 0, 512, 16896, 0, 8, 9, None)
    assert s.ops["NULL"].errors is None
    assert s.xprt == [("tcp", [752, 1, 1, 0, 0, 40, 40, 0, 80, 0])]


def test_mixed_file_only_returns_nfs() -> None:
    stats = parse_mountstats(text(OTHER_MOUNTS[:4], NFS3_BLOCK, OTHER_MOUNTS[4:], NFS42_BLOCK, NFS_V10_BLOCK))
    assert list(stats) == ["/mnt/nfs3", "/home", "/mnt/old"]
    assert stats["/mnt/nfs3"].ops["READ"].ops == 512
    assert stats["/home"].ops["READ"].ops == 1024


def test_non_nfs_only() -> None:
    assert parse_mountstats(text(OTHER_MOUNTS)) == {}
    assert parse_mountstats("") == {}


def test_escaped_mount_point_and_device() -> None:
    block = [
        r"device srv:/exp\040dir mounted on /mnt/my\040nfs\134x with fstype nfs statvers=1.1",
        "\tage:\t5",
    ]
    s = parse_mountstats(text(block))
    assert list(s) == ["/mnt/my nfs\\x"]
    assert s["/mnt/my nfs\\x"].device == "srv:/exp dir"
    # No RPC section (client without metrics): those fields stay empty.
    only = s["/mnt/my nfs\\x"]
    assert only.rpc_version is None and only.prog is None and only.ops == {} and only.events == {}


def test_unknown_keys_and_extra_counters_tolerated() -> None:
    block = list(NFS3_BLOCK)
    block.insert(3, "\tfsc:\t1 2 3 4 5")
    block.insert(4, "\tnewkey:\twhatever, with spaces")
    block.insert(5, "\tsome free-form line a future kernel adds")
    block[block.index("\tbytes:\t" + counters(V3_BYTES))] = "\tbytes:\t" + counters([*V3_BYTES, 99])
    block.append(op("FUTURE_OP", 1, 1, 0, 1, 1, 0, 0, 0, 0, 7))
    s = parse_mountstats(text(block))["/mnt/nfs3"]
    assert s.bytes["bytes[8]"] == 99
    assert s.ops["FUTURE_OP"].errors == 0
    assert s.age == 3600


def test_numbered_procedures() -> None:
    # Procedures without a name are printed as their number.
    block = [*NFS_V10_BLOCK[:-1], op("12", 1, 1, 0, 2, 3, 0, 0, 0)]
    assert "12" in parse_mountstats(text(block))["/mnt/old"].ops


def test_other_transports() -> None:
    block = list(NFS3_BLOCK)
    i = block.index("\txprt:\ttcp 871 1 1 0 0 613 613 0 2442 0 2 0 0")
    block[i : i + 1] = [
        "\txprt:\tudp 836 0 40 40 0 40 0 2 0 0",
        "\txprt:\tlocal 1 1 0 -3 5 5 0 5 0 2 0 0",
        "\txprt:\trdma 0 0 1 0 4 10 10 0 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 11 0 0 0",
    ]
    s = parse_mountstats(text(block))["/mnt/nfs3"]
    assert [(t, len(v)) for t, v in s.xprt] == [("udp", 10), ("local", 12), ("rdma", 30)]
    assert s.xprt[1][1][3] == -3


def test_later_duplicate_mount_point_wins() -> None:
    second = [line.replace("127.0.0.1:/srv/export", "other:/x") for line in NFS3_BLOCK]
    s = parse_mountstats(text(NFS3_BLOCK, second))
    assert s["/mnt/nfs3"].device == "other:/x"


def _malformed(block: list[str], bad_index: int) -> MountstatsError:
    with pytest.raises(MountstatsError) as info:
        parse_mountstats(text(OTHER_MOUNTS[:2], block))
    err = info.value
    assert err.lineno == bad_index + 3
    assert err.line == block[bad_index]
    return err


@pytest.mark.parametrize(
    ("replacement", "reason"),
    [
        (op("READ", 1, 2, 3), "has 3 counters"),
        (op("READ", 1, 2, 3, 4, 5, 6, 7, "x"), "'x' is not an integer"),  # type: ignore[arg-type]
        (op("READ", 1, 2, 3, 4, 5, 6, 7, -8), "'-8' is not an integer"),
        ("\t   READ 1 2 3 4 5 6 7 8 9", "expected a per-op line"),
        ("\tBAD NAME: 1 2 3 4 5 6 7 8 9", "expected a per-op line"),
    ],
)
def test_malformed_op_lines(replacement: str, reason: str) -> None:
    block = list(NFS3_BLOCK)
    idx = next(i for i, line in enumerate(block) if line.strip().startswith("READ:"))
    block[idx] = replacement
    err = _malformed(block, idx)
    assert err.mount == "/mnt/nfs3"
    assert reason in err.reason
    msg = str(err)
    assert f"mountstats line {idx + 3} (mount /mnt/nfs3) is malformed" in msg
    assert reason in msg


@pytest.mark.parametrize(
    ("prefix", "replacement", "reason"),
    [
        ("\tage:", "\tage:\tforever", "age 'forever'"),
        ("\tevents:", "\tevents:\t1 2 x", "'x' is not an integer"),
        ("\tbytes:", "\tbytes:\t1 2 3 -4", "'-4' is not an integer"),
        ("\txprt:", "\txprt:\t1 2 3", "no transport name"),
        ("\txprt:", "\txprt:\ttcp 1 2 abc", "'abc' is not an integer"),
        ("\tRPC iostats", "\tRPC iostats version: 1.1  p/v: nfs", "RPC iostats"),
    ],
)
def test_malformed_block_lines(prefix: str, replacement: str, reason: str) -> None:
    block = list(NFS3_BLOCK)
    idx = next(i for i, line in enumerate(block) if line.startswith(prefix))
    block[idx] = replacement
    err = _malformed(block, idx)
    assert err.mount == "/mnt/nfs3"
    assert reason in err.reason


def test_malformed_top_level_line() -> None:
    with pytest.raises(MountstatsError) as info:
        parse_mountstats("device proc mounted on /proc with fstype proc\ngarbage here\n")
    assert info.value.lineno == 2 and info.value.mount is None
    assert str(info.value).startswith("mountstats line 2 is malformed (expected 'device")


def test_indented_lines_under_non_nfs_mount_ignored() -> None:
    assert parse_mountstats("device proc mounted on /proc with fstype proc\n\tstray: 1\n") == {}


def test_error_pickles() -> None:
    err = MountstatsError(3, "/mnt", "x", "bad")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err)


def _bump(block: list[str], **changes: str) -> list[str]:
    out = []
    for line in block:
        key = line.strip().split(":", 1)[0]
        out.append(changes.get(key, line))
    return out


def test_diff_subtracts_every_counter() -> None:
    before = parse_mountstats(text(NFS3_BLOCK, NFS42_BLOCK))
    later_events = [v + i for i, v in enumerate(V3_EVENTS)]
    later_bytes = [v * 2 for v in V3_BYTES]
    after_block = _bump(
        NFS3_BLOCK,
        age="\tage:\t3660",
        events="\tevents:\t" + counters(later_events),
        bytes="\tbytes:\t" + counters(later_bytes),
        xprt="\txprt:\ttcp 871 1 1 0 3 700 699 1 2600 5 4 10 20",
        READ=op("READ", 600, 601, 1, 76800, 78643200, 14, 4000, 4200, 2),
        GETATTR=op("GETATTR", 52, 52, 0, 6032, 5824, 5, 47, 60, 0),
    )
    after_block.insert(-1, op("SYMLINK", 2, 2, 0, 300, 200, 0, 3, 3, 1))
    after = parse_mountstats(text(after_block, NFS42_BLOCK))

    delta = diff(before, after)
    assert set(delta) == {"/mnt/nfs3", "/home"}
    d = delta["/mnt/nfs3"]
    assert isinstance(d, NfsMountStats)
    assert d.age == 60
    assert d.events == {name: i for i, name in enumerate(EVENT_NAMES)}
    assert d.bytes == dict(zip(BYTES_NAMES, V3_BYTES, strict=True))
    assert d.ops["READ"] == OpStats(88, 89, 1, 11264, 11468800, 2, 544, 600, 2)
    assert d.ops["GETATTR"] == OpStats(0, 0, 0, 0, 0, 0, 0, 0, 0)
    # Op new in `after`: diffs against zero.
    assert d.ops["SYMLINK"] == OpStats(2, 2, 0, 300, 200, 0, 3, 3, 1)
    # tcp: srcport (0), idle (4) and max_slots (10) are gauges and keep the newer value.
    assert d.xprt == [("tcp", [871, 0, 0, 0, 3, 87, 86, 1, 158, 5, 4, 10, 20])]
    # Descriptive fields come from `after`.
    assert (d.device, d.fstype, d.statvers, d.rpc_version, d.prog, d.vers) == (
        "127.0.0.1:/srv/export",
        "nfs",
        "1.1",
        "1.1",
        100003,
        3,
    )
    # Unchanged mount: all zero.
    h = delta["/home"]
    assert h.age == 0
    assert set(h.events.values()) == {0} and set(h.bytes.values()) == {0}
    assert all(o == OpStats(0, 0, 0, 0, 0, 0, 0, 0, 0) for o in h.ops.values())


def test_diff_new_mount_against_zero_and_dropped_mount() -> None:
    before = parse_mountstats(text(NFS3_BLOCK))
    after = parse_mountstats(text(NFS42_BLOCK))
    delta = diff(before, after)
    assert list(delta) == ["/home"]
    assert delta["/home"] == after["/home"]
    # A copy, not the same containers.
    assert delta["/home"].ops is not after["/home"].ops


def test_diff_remount_resets_baseline() -> None:
    before = parse_mountstats(text(NFS3_BLOCK))
    remounted = parse_mountstats(text(_bump(NFS3_BLOCK, age="\tage:\t10")))
    assert diff(before, remounted)["/mnt/nfs3"].ops["READ"].ops == 512
    other_dev = parse_mountstats(text([line.replace("127.0.0.1:", "10.9.9.9:") for line in NFS3_BLOCK]))
    assert diff(before, other_dev)["/mnt/nfs3"].ops["READ"].ops == 512


def test_diff_iostats_10_errors_stay_none() -> None:
    before = parse_mountstats(text(NFS_V10_BLOCK))
    after = parse_mountstats(text(_bump(NFS_V10_BLOCK, READ=op("READ", 6, 6, 0, 768, 25344, 0, 12, 14))))
    d = diff(before, after)["/mnt/old"]
    assert d.ops["READ"] == OpStats(2, 2, 0, 256, 8448, 0, 4, 5, None)


def test_diff_changed_transport_diffs_against_zero() -> None:
    before = parse_mountstats(text(NFS3_BLOCK))
    after = parse_mountstats(text(_bump(NFS3_BLOCK, xprt="\txprt:\tudp 836 0 40 40 0 40 0 2 0 0")))
    assert diff(before, after)["/mnt/nfs3"].xprt == [("udp", [836, 0, 40, 40, 0, 40, 0, 2, 0, 0])]


def test_diff_does_not_modify_inputs() -> None:
    before = parse_mountstats(text(NFS3_BLOCK))
    after = parse_mountstats(text(NFS3_BLOCK))
    snapshot = pickle.dumps((before, after))
    diff(before, after)
    assert pickle.dumps((before, after)) == snapshot


def test_opstats_sub() -> None:
    a = OpStats(10, 11, 1, 100, 200, 5, 50, 60, 2)
    b = OpStats(4, 4, 0, 40, 80, 2, 20, 25, 1)
    assert a - b == OpStats(6, 7, 1, 60, 120, 3, 30, 35, 1)
    assert OpStats(1, 1, 0, 1, 1, 0, 0, 0) - OpStats(0, 0, 0, 0, 0, 0, 0, 0) == OpStats(
        1, 1, 0, 1, 1, 0, 0, 0, None
    )


def test_read_mountstats(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountstats").write_text(text(OTHER_MOUNTS, NFS42_BLOCK))
    assert list(read_mountstats(proc=str(tmp_path))) == ["/home"]


def test_read_real_self_mountstats() -> None:
    if not Path("/proc/self/mountstats").exists():
        pytest.skip("no /proc/self/mountstats")
    read_mountstats()
