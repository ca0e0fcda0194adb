"""Tier choice and tracefs offsets, against fake tracefs trees of 5.10 and 6.12."""

from pathlib import Path

import pytest

from bpfnfs.probes.hooks import VFS_FUNCTIONS, fentry_programs, hook_of, kprobe_programs, vfs_function
from bpfnfs.probes.tiers import TierError, plan, programs_for

COMMON = """\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
"""


def _event(root: Path, system: str, name: str, fields: list[tuple[str, str, int, int]]) -> None:
    d = root / "events" / system / name
    d.mkdir(parents=True)
    body = "".join(f"\tfield:{t} {n};\toffset:{o};\tsize:{s};\tsigned:0;\n" for t, n, o, s in fields)
    d.joinpath("format").write_text(f'name: {name}\nID: 1\nformat:\n{COMMON}\n{body}\nprint fmt: "x"\n')


def fake_tracefs(
    root: Path, xprt_id: bool = False, status: str = "status", rtt_size: int = 8, nfsv4: bool = True
) -> Path:
    o = 12 if xprt_id else 8
    sl = [
        ("unsigned int", "task_id", o, 4),
        ("unsigned int", "client_id", o + 4, 4),
        ("u32", "xid", o + 8, 4),
        ("int", "version", o + 12, 4),
        ("__data_loc char[]", "progname", o + 16, 4),
        ("__data_loc char[]", "procname", o + 20, 4),
        ("unsigned long", "backlog", o + 24, 8),
        ("unsigned long", "rtt", o + 32, rtt_size),
        ("unsigned long", "execute", o + 40, 8),
    ]
    if xprt_id:
        sl.insert(0, ("unsigned int", "xprt_id", 8, 4))
    _event(root, "sunrpc", "rpc_stats_latency", sl)
    _event(
        root,
        "sunrpc",
        "rpc_request",
        [
            ("unsigned int", "task_id", 8, 4),
            ("unsigned int", "client_id", 12, 4),
            ("int", "version", 16, 4),
            ("bool", "async", 20, 1),
            ("__data_loc char[]", "progname", 24, 4),
            ("__data_loc char[]", "procname", 28, 4),
        ],
    )
    _event(
        root,
        "sunrpc",
        "rpc_task_end",
        [
            ("unsigned int", "task_id", 8, 4),
            ("unsigned int", "client_id", 12, 4),
            ("const void *", "action", 16, 8),
            ("unsigned long", "runstate", 24, 8),
            ("int", "status", 32, 4),
            ("unsigned short", "flags", 36, 2),
        ],
    )
    for ev in ("nfs_readpage_done", "nfs_writeback_done"):
        _event(
            root,
            "nfs",
            ev,
            [
                ("dev_t", "dev", 8, 4),
                ("u32", "fhandle", 12, 4),
                ("u64", "fileid", 16, 8),
                ("loff_t", "offset", 24, 8),
                ("u32", "arg_count", 32, 4),
                ("u32", "res_count", 36, 4),
                ("int", status, 40, 4),
            ],
        )
    # Both tiers: read ownership, COMMITs and server statuses (5.10 and 6.1 share these layouts).
    loc = [
        ("dev_t", "dev", 8, 4),
        ("u32", "fhandle", 12, 4),
        ("u64", "fileid", 16, 8),
        ("loff_t", "offset", 24, 8),
    ]
    _event(root, "nfs", "nfs_initiate_read", [*loc, ("u32", "count", 32, 4)])
    _event(root, "nfs", "nfs_initiate_write", [*loc, ("u32", "count", 32, 4), ("int", "stable", 36, 4)])
    _event(root, "nfs", "nfs_commit_done", [*loc, ("int", status, 32, 4)])
    xdr = [("unsigned int", "task_id", 8, 4), ("unsigned int", "client_id", 12, 4), ("u32", "xid", 16, 4)]
    _event(
        root,
        "nfs",
        "nfs_xdr_status",
        [
            *xdr,
            ("int", "version", 20, 4),
            ("unsigned long", "error", 24, 8),
            ("__data_loc char[]", "program", 32, 4),
            ("__data_loc char[]", "procedure", 36, 4),
        ],
    )
    if nfsv4:
        x4 = [*xdr, ("u32", "op", 20, 4), ("unsigned long", "error", 24, 8)]
        _event(root, "nfs4", "nfs4_xdr_status", x4)
    return root


def test_auto_prefers_btf(tmp_path: Path) -> None:
    p = plan("auto", True, fake_tracefs(tmp_path))
    assert p.tier == "btf" and p.method == "fentry"
    assert set(fentry_programs()) <= set(p.programs)
    assert p.offsets["rq_client_id"] == 12
    assert "sl_client_id" not in p.offsets  # no classic tracepoint counts on this method


def test_kprobe_method_on_the_btf_tier(tmp_path: Path) -> None:
    p = plan("auto", True, fake_tracefs(tmp_path), method="kprobe")
    assert (p.tier, p.method) == ("btf", "kprobe")
    assert set(kprobe_programs()) <= set(p.programs)
    assert not any(x.startswith(("fe_", "fx_")) for x in p.programs)
    # RPC fields from a kprobe, not the (preemptible since 7.x) raw_tp half; the exact
    # execute time from a tp_btf helper attached before the tracepoint program.
    assert "raw_rpc_stats_latency" not in p.programs and "kp_rpc_count_iostats_metrics" in p.programs
    assert p.programs.index("btf_rpc_execute_ns") < p.programs.index("tp_rpc_stats_latency")
    assert p.offsets["sl_client_id"] == 12


def test_tracefs_tier_always_counts_with_kprobes(tmp_path: Path) -> None:
    p = plan("tracefs", True, fake_tracefs(tmp_path), method="fentry")
    assert p.method == "kprobe"
    assert set(programs_for("tracefs", "kprobe")) <= set(p.programs)


def test_tracefs_offsets_5_10(tmp_path: Path) -> None:
    p = plan("auto", False, fake_tracefs(tmp_path))
    assert p.tier == "tracefs"
    assert set(programs_for("tracefs", "kprobe")) <= set(p.programs)
    assert p.offsets["sl_client_id"] == 12
    assert p.offsets["sl_rtt"] == 40
    assert p.offsets["rd_res_count"] == 36
    assert "CONFIG_DEBUG_INFO_BTF_MODULES" in p.describe()


def test_tracefs_offsets_follow_6_12_layout(tmp_path: Path) -> None:
    p = plan("tracefs", True, fake_tracefs(tmp_path, xprt_id=True, status="error"))
    assert p.offsets["sl_client_id"] == 16
    assert p.offsets["sl_execute"] == 52


def test_btf_refused_without_module_btf(tmp_path: Path) -> None:
    with pytest.raises(TierError, match="module BTF"):
        plan("btf", False, fake_tracefs(tmp_path))


def test_unexpected_field_size_is_named(tmp_path: Path) -> None:
    with pytest.raises(TierError, match="rpc_stats_latency field rtt has size 4"):
        plan("tracefs", False, fake_tracefs(tmp_path, rtt_size=4))


def test_missing_event_is_named(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    with pytest.raises(TierError, match=r"sunrpc.*does not exist"):
        plan("auto", True, tmp_path)


def test_nfsv4_programs_wait_for_their_module(tmp_path: Path) -> None:
    p = plan("auto", True, fake_tracefs(tmp_path, nfsv4=False), frozenset({"sunrpc", "nfs"}))
    assert "fe_nfs_file_open" in p.programs
    assert set(p.deferred) == {"nfsv4"}
    assert {"fe_nfs4_file_open", "fx_nfs4_file_flush", "btf_nfs4_xdr_status"} <= set(p.deferred["nfsv4"])
    assert not set(p.deferred["nfsv4"]) & set(p.programs)
    assert "x4_op" not in p.offsets


def test_every_vfs_function_has_both_halves_in_each_method() -> None:
    for f in VFS_FUNCTIONS:
        assert {f"fe_{f.name}", f"fx_{f.name}"} <= set(fentry_programs())
        assert {f"kp_{f.name}", f"krp_{f.name}"} <= set(kprobe_programs())
        assert vfs_function(f"fx_{f.name}") == f
        assert hook_of(f"fe_{f.name}") == f"{f.name}/entry"
        assert hook_of(f"krp_{f.name}") == f"{f.name}/exit"


def test_hook_names() -> None:
    assert hook_of("btf_nfs_readpage_done") == "nfs:nfs_readpage_done"
    assert hook_of("tp_rpc_stats_latency") == "sunrpc:rpc_stats_latency"
    assert hook_of("kp_rpc_count_iostats_metrics") == "sunrpc:rpc_stats_latency"  # its fields
    assert hook_of("btf_rpc_execute_ns") is None  # skipped: the µs value, counted apart
    assert hook_of("tp_rpc_request") is None


def test_nfs4_xdr_offsets_when_loaded(tmp_path: Path) -> None:
    p = plan("tracefs", False, fake_tracefs(tmp_path))
    assert (p.offsets["x4_op"], p.offsets["x4_error"], p.offsets["xs_procedure"]) == (20, 24, 36)
    assert p.offsets["rd_fileid"] == 16 and p.offsets["ir_offset"] == 24 and p.offsets["cd_fileid"] == 16
    assert not p.deferred
