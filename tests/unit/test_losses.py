"""Events lost before bpfnfs saw them: the kernel's per-program miss counters (read
from a fake struct bpf_prog_info), losses per hook, and the preemption model that
decides the counting method."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from bpfnfs.collect.losses import HookLoss, hook_losses, loss_notes, losses_dict, total_lost
from bpfnfs.collect.snapshot import Snapshot
from bpfnfs.config import Config
from bpfnfs.loader.progstats import BpfProgInfo, ProgStats, parse_prog_info
from bpfnfs.probes.loading import choose_counting
from bpfnfs.probes.system import Preemption, preemption


def _info(info_len: int, **fields: int) -> tuple[bytes, int]:
    info = BpfProgInfo()
    for k, v in fields.items():
        setattr(info, k, v)
    raw = ctypes.string_at(ctypes.addressof(info), ctypes.sizeof(info))
    return raw[:info_len], info_len


def test_prog_info_of_a_5_12_kernel_has_recursion_misses() -> None:
    raw, n = _info(ctypes.sizeof(BpfProgInfo), id=7, run_cnt=100, run_time_ns=5000, recursion_misses=3)
    assert parse_prog_info(raw, n) == ProgStats(id=7, run_cnt=100, run_time_ns=5000, recursion_misses=3)


def test_prog_info_of_a_5_10_kernel_says_not_available_never_0() -> None:
    # 5.10's struct bpf_prog_info ends with run_cnt: the kernel fills that much and says so.
    n = BpfProgInfo.run_cnt.offset + BpfProgInfo.run_cnt.size
    raw, n = _info(n, id=3, run_cnt=9, run_time_ns=1, recursion_misses=12345)
    s = parse_prog_info(raw, n)
    assert s.recursion_misses is None
    assert (s.run_cnt, s.run_time_ns) == (9, 1)


def test_prog_info_layout_is_the_uapi_one() -> None:
    # Offsets of include/uapi/linux/bpf.h (checked against a live 6.18 kernel's info_len, 232).
    assert BpfProgInfo.run_time_ns.offset == 192
    assert BpfProgInfo.recursion_misses.offset == 208
    assert ctypes.sizeof(BpfProgInfo) == 232


def _stats(**misses: int | None) -> dict[str, ProgStats]:
    return {p: ProgStats(1, 0, 0, m) for p, m in misses.items()}


def test_every_kernel_miss_is_a_lost_event_of_its_hook() -> None:
    stats = _stats(btf_rpc_stats_latency=4, fx_nfs_file_write=2, fe_nfs_file_write=0, tp_rpc_request=9)
    out = hook_losses(stats, stats)
    rpc = "sunrpc:rpc_stats_latency"
    assert out[rpc] == HookLoss(rpc, ("btf_rpc_stats_latency",), 4)
    assert out["nfs_file_write/exit"].lost == 2
    assert out["nfs_file_write/entry"].lost == 0
    assert "tp_rpc_request" not in str(out)  # the mount probe counts nothing
    assert total_lost(out) == 6


def test_the_kprobe_methods_rpc_programs_add_up() -> None:
    stats = _stats(tp_rpc_stats_latency=1, kp_rpc_count_iostats_metrics=2, btf_rpc_execute_ns=7)
    out = hook_losses(stats, stats)
    assert out["sunrpc:rpc_stats_latency"].lost == 3  # the helper's skips only cost ns precision


def test_not_available_is_none_not_zero() -> None:
    stats = _stats(fx_nfs_file_read=None, fe_nfs_file_read=None)
    out = hook_losses(stats, stats)
    assert out["nfs_file_read/exit"].lost is None
    assert total_lost(out) is None
    snap = Snapshot(taken=0.0, hooks=out, programs=stats)
    assert losses_dict(snap)["programs"]["fx_nfs_file_read"]["recursion_misses"] is None
    assert losses_dict(snap)["events_lost"] is None
    assert loss_notes(snap) == []


def test_loss_notes_name_the_hooks() -> None:
    stats = _stats(btf_nfs_writeback_done=2)
    snap = Snapshot(taken=0.0, hooks=hook_losses(stats, stats), programs=stats)
    snap.counters["ringbuf_drops"] = 1
    notes = loss_notes(snap)
    assert notes[0] == "ringbuf_drops 1"
    assert "nfs:nfs_writeback_done 2" in notes[1]


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("none (voluntary) full lazy\n", "voluntary"),
        ("none voluntary full (lazy)\n", "lazy"),
        ("none voluntary (full) lazy\n", "full"),
        ("(none) voluntary full\n", "none"),
    ],
)
def test_preemption_from_debugfs(tmp_path: Path, text: str, model: str) -> None:
    f = tmp_path / "preempt"
    f.write_text(text)
    p = preemption(f, cmdline="", version="#1 SMP PREEMPT_DYNAMIC", config="")
    assert p.model == model and p.source == str(f)
    assert p.preemptible == (model in ("full", "lazy"))


def test_preemption_without_debugfs(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    dyn = "#1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1"
    assert preemption(missing, "ro preempt=full", dyn, "").model == "full"
    assert preemption(missing, "ro", dyn, "CONFIG_PREEMPT_VOLUNTARY=y\n").model == "voluntary"
    # Dynamic, and nothing says which model is on: preemptible, the safe side.
    unknown = preemption(missing, "ro", dyn, "")
    assert unknown.model == "dynamic" and unknown.preemptible
    assert preemption(missing, "", "#1 SMP PREEMPT_RT Debian", "").model == "rt"
    assert preemption(missing, "", "#1 SMP PREEMPT Tue Jan 1", "").model == "full"
    assert not preemption(missing, "", "#1 SMP Debian 5.10.237-1", "").preemptible


def test_counting_follows_the_preemption_model() -> None:
    full, vol = Preemption("lazy", "debugfs"), Preemption("voluntary", "debugfs")
    assert choose_counting(Config(), "btf", full).method == "kprobe"
    assert choose_counting(Config(), "btf", vol).method == "fentry"
    assert choose_counting(Config(collection={"counting": "fentry"}), "btf", full).method == "fentry"
    assert choose_counting(Config(collection={"counting": "kprobe"}), "btf", vol).method == "kprobe"
    assert choose_counting(Config(collection={"counting": "fentry"}), "tracefs", vol).method == "kprobe"
    assert "full (lazy)" in choose_counting(Config(), "btf", full).describe()
