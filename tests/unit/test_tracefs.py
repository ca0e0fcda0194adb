from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from bpfnfs.probes import tracefs
from bpfnfs.probes.tracefs import (
    EventFormat,
    Field,
    FormatError,
    decode_data_loc,
    parse_format,
    read_format,
    tracefs_root,
)

COMMON = (
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n"
    "\n"
)

RPC_STATS_LATENCY_5_10 = (
    "name: rpc_stats_latency\n"
    "ID: 1234\n"
    "format:\n" + COMMON + "\tfield:unsigned int task_id;\toffset:8;\tsize:4;\tsigned:0;\n"
    "\tfield:unsigned int client_id;\toffset:12;\tsize:4;\tsigned:0;\n"
    "\tfield:u32 xid;\toffset:16;\tsize:4;\tsigned:0;\n"
    "\tfield:int version;\toffset:20;\tsize:4;\tsigned:1;\n"
    "\tfield:__data_loc char[] progname;\toffset:24;\tsize:4;\tsigned:1;\n"
    "\tfield:__data_loc char[] procname;\toffset:28;\tsize:4;\tsigned:1;\n"
    "\tfield:unsigned long backlog;\toffset:32;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned long rtt;\toffset:40;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned long execute;\toffset:48;\tsize:8;\tsigned:0;\n"
    "\n"
    'print fmt: "task:%u@%d xid=0x%08x %sv%d %s backlog=%lu rtt=%lu execute=%lu", REC->task_id, '
    "REC->client_id, REC->xid, __get_str(progname), REC->version, __get_str(procname), "
    "REC->backlog, REC->rtt, REC->execute\n"
)

RPC_STATS_LATENCY_6_12 = (
    "name: rpc_stats_latency\n"
    "ID: 1871\n"
    "format:\n" + COMMON + "\tfield:unsigned int xprt_id;\toffset:8;\tsize:4;\tsigned:0;\n"
    "\tfield:unsigned int task_id;\toffset:12;\tsize:4;\tsigned:0;\n"
    "\tfield:unsigned int client_id;\toffset:16;\tsize:4;\tsigned:0;\n"
    "\tfield:u32 xid;\toffset:20;\tsize:4;\tsigned:0;\n"
    "\tfield:int version;\toffset:24;\tsize:4;\tsigned:1;\n"
    "\tfield:__data_loc char[] progname;\toffset:28;\tsize:4;\tsigned:0;\n"
    "\tfield:__data_loc char[] procname;\toffset:32;\tsize:4;\tsigned:0;\n"
    "\tfield:unsigned long backlog;\toffset:40;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned long rtt;\toffset:48;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned long execute;\toffset:56;\tsize:8;\tsigned:0;\n"
    "\n"
    'print fmt: "task:%08x@%08x xid=0x%08x %sv%d %s backlog=%lu rtt=%lu execute=%lu xprt_id=%u", '
    "REC->task_id, REC->client_id, REC->xid, __get_str(progname), REC->version, "
    "__get_str(procname), REC->backlog, REC->rtt, REC->execute, REC->xprt_id\n"
)


def readpage_done(last: str, event_id: int) -> str:
    return (
        "name: nfs_readpage_done\n"
        f"ID: {event_id}\n"
        "format:\n" + COMMON + "\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;\n"
        "\tfield:u32 fhandle;\toffset:12;\tsize:4;\tsigned:0;\n"
        "\tfield:u64 fileid;\toffset:16;\tsize:8;\tsigned:0;\n"
        "\tfield:loff_t offset;\toffset:24;\tsize:8;\tsigned:1;\n"
        "\tfield:u32 arg_count;\toffset:32;\tsize:4;\tsigned:0;\n"
        "\tfield:u32 res_count;\toffset:36;\tsize:4;\tsigned:0;\n"
        "\tfield:bool eof;\toffset:40;\tsize:1;\tsigned:0;\n"
        f"\tfield:int {last};\toffset:44;\tsize:4;\tsigned:1;\n"
        "\n"
        'print fmt: "fileid=%02x:%02x:%llu fhandle=0x%08x offset=%lld count=%u res=%u '
        f'{last}=%d%s", MAJOR(REC->dev), MINOR(REC->dev), REC->fileid, REC->fhandle, REC->offset, '
        f'REC->arg_count, REC->res_count, REC->{last}, REC->eof ? " eof" : ""\n'
    )


NFS_READPAGE_DONE_5_10 = readpage_done("status", 1492)
NFS_READPAGE_DONE_6_1 = readpage_done("error", 1630)

# The example from the brief, including a line that uses spaces instead of tabs.
BRIEF_EXAMPLE = (
    "name: rpc_stats_latency\n"
    "ID: 1234\n"
    "format:\n" + COMMON + "\tfield:u32 xid;\toffset:8;\tsize:4;\tsigned:0;\n"
    "\tfield:int version;\toffset:12;\tsize:4;\tsigned:1;\n"
    "\tfield:unsigned long backlog;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\tfield:__data_loc char[] progname;\toffset:40;\tsize:4;\tsigned:0;\n"
    "\tfield:char name[16];\toffset:44;\tsize:16;\tsigned:0;\n"
    "\tfield:dev_t dev;\toffset:60; size:4; signed:0;\n"
    "\n"
    'print fmt: "..."\n'
)


def test_rpc_stats_latency_5_10() -> None:
    fmt = parse_format(RPC_STATS_LATENCY_5_10, "sunrpc", "rpc_stats_latency")
    assert (fmt.system, fmt.name, fmt.id) == ("sunrpc", "rpc_stats_latency", 1234)
    assert list(fmt.fields) == [
        "common_type",
        "common_flags",
        "common_preempt_count",
        "common_pid",
        "task_id",
        "client_id",
        "xid",
        "version",
        "progname",
        "procname",
        "backlog",
        "rtt",
        "execute",
    ]
    assert fmt.fields["common_pid"] == Field("common_pid", "int", 4, 4, True)
    assert fmt.fields["common_pid"].is_common and not fmt.fields["xid"].is_common
    assert fmt.field("xid") == Field("xid", "u32", 16, 4, False)
    assert fmt.field("backlog") == Field("backlog", "unsigned long", 32, 8, False)
    progname = fmt.field("progname")
    assert progname.type == "__data_loc char[]"
    assert progname.is_data_loc and progname.is_dynamic and not progname.is_rel_loc
    assert progname.array_len is None
    assert (progname.offset, progname.size) == (24, 4)
    assert fmt.field("execute").offset == 48
    assert "rtt" in fmt and "xprt_id" not in fmt
    assert [f.name for f in fmt][-1] == "execute"


def test_rpc_stats_latency_6_12_offsets_move() -> None:
    old = parse_format(RPC_STATS_LATENCY_5_10, "sunrpc", "rpc_stats_latency")
    new = parse_format(RPC_STATS_LATENCY_6_12, "sunrpc", "rpc_stats_latency")
    assert new.id == 1871
    assert new.field("xprt_id").offset == 8
    for name, old_off, new_off in [("task_id", 8, 12), ("xid", 16, 20), ("rtt", 40, 48)]:
        assert old.field(name).offset == old_off
        assert new.field(name).offset == new_off
    assert set(old.fields) < set(new.fields)


def test_readpage_done_status_vs_error() -> None:
    old = parse_format(NFS_READPAGE_DONE_5_10, "nfs", "nfs_readpage_done")
    new = parse_format(NFS_READPAGE_DONE_6_1, "nfs", "nfs_readpage_done")
    assert old.field("error", "status").name == "status"
    assert new.field("error", "status").name == "error"
    assert old.field("error", "status").offset == new.field("error", "status").offset == 44
    assert new.field("eof") == Field("eof", "bool", 40, 1, False)
    assert new.field("offset") == Field("offset", "loff_t", 24, 8, True)


def test_field_missing_names_everything() -> None:
    fmt = parse_format(NFS_READPAGE_DONE_6_1, "nfs", "nfs_readpage_done")
    with pytest.raises(FormatError) as info:
        fmt.field("status", "ret", "err")
    msg = str(info.value)
    assert "nfs/nfs_readpage_done" in msg
    assert "'status', 'ret', 'err'" in msg
    assert "none of the fields" in msg
    assert "error" in msg  # lists what is there
    assert "common_pid" not in msg
    with pytest.raises(FormatError, match=r"has no field 'status' \("):
        fmt.field("status")


def test_brief_example_arrays_and_spaces() -> None:
    fmt = parse_format(BRIEF_EXAMPLE, "sunrpc", "rpc_stats_latency")
    name = fmt.field("name")
    assert name == Field("name", "char[16]", 44, 16, False, False, 16)
    assert fmt.field("dev") == Field("dev", "dev_t", 60, 4, False)


@pytest.mark.parametrize(
    ("decl", "size", "name", "ctype", "array_len"),
    [
        ("char name[16]", 16, "name", "char[16]", 16),
        ("unsigned long caller[8]", 64, "caller", "unsigned long[8]", 8),
        ("__u8 empty[]", 0, "empty", "__u8[]", 0),
        # Older kernels print the array length symbolically.
        ("char comm[TASK_COMM_LEN]", 16, "comm", "char[TASK_COMM_LEN]", 16),
        ("__u8 addr[sizeof(struct sockaddr_in6)]", 28, "addr", "__u8[sizeof(struct sockaddr_in6)]", 28),
        ("u32 ids[NR_IDS]", 16, "ids", "u32[NR_IDS]", 4),
        ("struct foo bar[NR]", 24, "bar", "struct foo[NR]", None),
        ("const char * name", 8, "name", "const char *", None),
        ("void *skbaddr", 8, "skbaddr", "void *", None),
        ("unsigned long long total", 8, "total", "unsigned long long", None),
    ],
)
def test_declarations(decl: str, size: int, name: str, ctype: str, array_len: int | None) -> None:
    text = f"name: e\nID: 1\nformat:\n\tfield:{decl};\toffset:8;\tsize:{size};\tsigned:0;\n"
    f = parse_format(text, "s", "e").field(name)
    assert (f.name, f.type, f.array_len, f.size) == (name, ctype, array_len, size)


def test_missing_signed_defaults_to_unsigned() -> None:
    fmt = parse_format("name: e\nID: 1\nformat:\n\tfield:int x;\toffset:8;\tsize:4;\n", "s", "e")
    assert fmt.field("x").signed is False


def test_print_fmt_may_contain_anything() -> None:
    text = RPC_STATS_LATENCY_5_10 + "field:bogus trailing junk after print fmt\n"
    assert parse_format(text, "sunrpc", "rpc_stats_latency").id == 1234


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("\tfield:u32 xid;\tsize:4;\tsigned:0;", "no offset"),
        ("\tfield:u32 xid;\toffset:8;\tsigned:0;", "no size"),
        ("\tfield:u32 xid;\toffset:eight;\tsize:4;\tsigned:0;", "offset 'eight'"),
        ("\tfield:u32 xid;\toffset:-8;\tsize:4;\tsigned:0;", "offset '-8'"),
        ("\tfield:u32 xid;\toffset:8;\tsize:4;\tsigned:2;", "signed '2'"),
        ("\tfield:u32 xid;\toffset 8;\tsize:4;\tsigned:0;", "expected 'key:value'"),
        ("\tfield:xid;\toffset:8;\tsize:4;\tsigned:0;", "type and a name"),
        ("\tfield:u32 x-id;\toffset:8;\tsize:4;\tsigned:0;", "type and a name"),
        ("\tfield:__data_loc char[] s;\toffset:8;\tsize:8;\tsigned:0;", "must be 4 bytes"),
        ("\tfeld:u32 xid;\toffset:8;\tsize:4;\tsigned:0;", "not a field line"),
        ("\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;", "repeats field 'common_pid'"),
    ],
)
def test_malformed_field_lines(bad_line: str, reason: str) -> None:
    text = "name: ev\nID: 7\nformat:\n" + COMMON + bad_line + "\n"
    with pytest.raises(FormatError) as info:
        parse_format(text, "sys", "ev")
    msg = str(info.value)
    assert "format of sys/ev line 9" in msg
    assert reason in msg


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name: ev\nformat:\n" + COMMON, "has no 'ID:' line"),
        ("name: ev\nID: abc\nformat:\n" + COMMON, "non-numeric ID 'abc'"),
        ("name: other\nID: 1\nformat:\n" + COMMON, "declares event 'other', expected 'ev'"),
        ('name: ev\nID: 1\nformat:\n\nprint fmt: ""\n', "has no field lines"),
        ("", "has no 'ID:' line"),
    ],
)
def test_malformed_headers(text: str, reason: str) -> None:
    with pytest.raises(FormatError, match="format of sys/ev") as info:
        parse_format(text, "sys", "ev")
    assert reason in str(info.value)


def test_event_format_hashable() -> None:
    a = parse_format(RPC_STATS_LATENCY_5_10, "sunrpc", "rpc_stats_latency")
    b = parse_format(RPC_STATS_LATENCY_5_10, "sunrpc", "rpc_stats_latency")
    assert a == b and hash(a) == hash(b)
    assert a != parse_format(RPC_STATS_LATENCY_6_12, "sunrpc", "rpc_stats_latency")
    assert isinstance(a, EventFormat)


def _record_5_10(progname: bytes, procname: bytes) -> bytes:
    # Fixed part is 56 bytes; dynamic strings follow, as the kernel lays them out.
    head = struct.pack("<HBBi", 1234, 0, 0, 4321)
    body_start = 56
    loc1 = (len(progname) << 16) | body_start
    loc2 = (len(procname) << 16) | (body_start + len(progname))
    fixed = struct.pack("<IIIiIIQQQ", 7, 3, 0xDEADBEEF, 3, loc1, loc2, 0, 150, 160)
    return head + fixed + progname + procname


def test_decode_data_loc() -> None:
    fmt = parse_format(RPC_STATS_LATENCY_5_10, "sunrpc", "rpc_stats_latency")
    raw = _record_5_10(b"nfs\0", b"READ\0")
    assert len(raw) == 56 + 9
    assert decode_data_loc(raw, fmt.field("progname"), "little") == b"nfs\0"
    assert decode_data_loc(raw, fmt.field("procname"), "little") == b"READ\0"
    # Fixed fields read at their offsets agree.
    xid = fmt.field("xid")
    assert int.from_bytes(raw[xid.offset : xid.offset + xid.size], "little") == 0xDEADBEEF


def test_decode_data_loc_big_endian_and_default_order() -> None:
    f = Field("s", "__data_loc char[]", 8, 4, False, True)
    raw = bytearray(16)
    raw[8:12] = ((3 << 16) | 12).to_bytes(4, "big")
    raw[12:15] = b"ab\0"
    assert decode_data_loc(bytes(raw), f, "big") == b"ab\0"
    import sys

    raw[8:12] = ((3 << 16) | 12).to_bytes(4, sys.byteorder)
    assert decode_data_loc(bytes(raw), f) == b"ab\0"


def test_decode_rel_loc() -> None:
    text = "name: e\nID: 1\nformat:\n\tfield:__rel_loc char[] s;\toffset:8;\tsize:4;\tsigned:0;\n"
    f = parse_format(text, "s", "e").field("s")
    assert f.is_rel_loc and f.is_dynamic and not f.is_data_loc
    raw = bytearray(20)
    # Offset 4 counted from the end of the u32 (byte 12) -> payload at 16.
    raw[8:12] = ((3 << 16) | 4).to_bytes(4, "little")
    raw[16:19] = b"hi\0"
    assert decode_data_loc(bytes(raw), f, "little") == b"hi\0"


def test_decode_data_loc_errors() -> None:
    fmt = parse_format(RPC_STATS_LATENCY_5_10, "sunrpc", "rpc_stats_latency")
    raw = _record_5_10(b"nfs\0", b"READ\0")
    with pytest.raises(ValueError, match="not a __data_loc"):
        decode_data_loc(raw, fmt.field("xid"), "little")
    with pytest.raises(ValueError, match="too short"):
        decode_data_loc(raw[:20], fmt.field("progname"), "little")
    with pytest.raises(ValueError, match="beyond"):
        decode_data_loc(raw[:58], fmt.field("progname"), "little")


def _fake_tracefs(root: Path) -> Path:
    for system, event, text in [
        ("sunrpc", "rpc_stats_latency", RPC_STATS_LATENCY_6_12),
        ("nfs", "nfs_readpage_done", NFS_READPAGE_DONE_6_1),
    ]:
        d = root / "events" / system / event
        d.mkdir(parents=True)
        (d / "format").write_text(text)
    return root


def test_tracefs_root_picks_first_with_events(tmp_path: Path) -> None:
    unmounted = tmp_path / "tracing"
    unmounted.mkdir()
    debug = _fake_tracefs(tmp_path / "debug" / "tracing")
    assert tracefs_root([tmp_path / "missing", unmounted, debug]) == debug
    assert tracefs_root([str(unmounted)]) is None
    assert tracefs_root([]) is None
    # The real default must not raise whatever this machine has.
    assert tracefs_root() is None or isinstance(tracefs_root(), Path)


def test_read_format(tmp_path: Path) -> None:
    root = _fake_tracefs(tmp_path)
    fmt = read_format("sunrpc", "rpc_stats_latency", root=root)
    assert fmt.id == 1871 and fmt.field("xprt_id").offset == 8
    assert read_format("nfs", "nfs_readpage_done", root=str(root)).field("error", "status").name == "error"


def test_read_format_missing_event_and_system(tmp_path: Path) -> None:
    root = _fake_tracefs(tmp_path)
    with pytest.raises(FormatError, match=r"tracepoint nfs/nfs_nope does not exist under .*/events"):
        read_format("nfs", "nfs_nope", root=root)
    with pytest.raises(FormatError, match=r"tracepoint system 'nfsd' does not exist .*module"):
        read_format("nfsd", "nfsd_read_start", root=root)
    with pytest.raises(FormatError, match="is not a tracefs mount"):
        read_format("nfs", "nfs_readpage_done", root=tmp_path / "elsewhere")


def test_read_format_without_tracefs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracefs, "tracefs_root", lambda: None)
    with pytest.raises(FormatError, match=r"tracefs is not available: neither /sys/kernel/tracing or"):
        read_format("sunrpc", "rpc_stats_latency")


def test_read_format_uses_found_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_tracefs(tmp_path)
    monkeypatch.setattr(tracefs, "tracefs_root", lambda: root)
    assert read_format("sunrpc", "rpc_stats_latency").id == 1871


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_format_permission_denied(tmp_path: Path) -> None:
    root = _fake_tracefs(tmp_path)
    path = root / "events" / "nfs" / "nfs_readpage_done" / "format"
    path.chmod(0)
    try:
        with pytest.raises(FormatError, match="permission denied"):
            read_format("nfs", "nfs_readpage_done", root=root)
    finally:
        path.chmod(0o644)


def test_read_format_malformed_file_reports_event(tmp_path: Path) -> None:
    root = _fake_tracefs(tmp_path)
    (root / "events" / "nfs" / "nfs_readpage_done" / "format").write_text("name: nfs_readpage_done\n")
    with pytest.raises(FormatError, match="format of nfs/nfs_readpage_done has no 'ID:' line"):
        read_format("nfs", "nfs_readpage_done", root=root)
