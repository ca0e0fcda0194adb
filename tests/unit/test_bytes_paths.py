"""lab/bytes_paths.py's pure logic: the tree, the implied counter deltas, fio reports, deltas, the table."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from bpfnfs.enrich.mountstats import NfsMountStats, parse_mountstats
from lab import bytes_paths as bp
from lab.bytes_paths import COUNTERS, StepResult


def _stats(byte_values: list[int], ops: dict[str, int]) -> NfsMountStats:
    lines = [
        "device 127.0.0.1:/srv/nfs mounted on /mnt/nfs3 with fstype nfs statvers=1.1",
        "\tage:\t10",
        "\tbytes:\t" + "".join(f"{v} " for v in byte_values),
        "\tRPC iostats version: 1.1  p/v: 100003/3 (nfs)",
        "\tper-op statistics",
    ]
    lines += [f"\t{name:>12}: {n} {n} 0 0 0 0 0 0 0" for name, n in ops.items()]
    return parse_mountstats("\n".join(lines) + "\n")["/mnt/nfs3"]


def test_tree_layout_spans_1k_to_256k_in_three_dirs() -> None:
    layout = bp.tree_layout()
    assert len(layout) == bp.TREE_FILES
    assert 30 <= len(layout) <= 60
    sizes = [s for _, s in layout]
    assert min(sizes) >= 1024
    assert max(sizes) == 256 * 1024
    assert {rel.rsplit("/", 1)[0] for rel, _ in layout} == set(bp.TREE_DIRS)
    assert len({rel for rel, _ in layout}) == len(layout)
    # Mixed: most sizes are not page multiples, and the whole tree stays small for TCG.
    assert sum(s % 4096 != 0 for s in sizes) > len(sizes) // 2
    assert sum(sizes) < 4 * bp.MIB
    assert bp.tree_layout() == layout


def test_expected_buffered_step() -> None:
    r = StepResult("tar_tree", 1.0, 100, 200)
    assert r.expected() == {
        "normalreadbytes": 100,
        "directreadbytes": 0,
        "normalwritebytes": 200,
        "directwritebytes": 0,
    }


def test_expected_direct_step() -> None:
    r = StepResult("libaio_direct", 1.0, 4096, 8192, direct=True)
    assert r.expected() == {
        "directreadbytes": 4096,
        "normalreadbytes": 0,
        "directwritebytes": 8192,
        "normalwritebytes": 0,
    }


def test_expected_leaves_out_unknown_figures() -> None:
    assert StepResult("cp_tree", 1.0, None, None).expected() == {}
    assert StepResult("sendfile", 1.0, 10, None).expected() == {"normalreadbytes": 10, "directreadbytes": 0}
    # Server bytes are never predicted.
    assert not set(StepResult("mmap_read", 1.0, 0, 0).expected()) & {"serverreadbytes", "serverwritebytes"}


def test_step_result_is_frozen() -> None:
    r = StepResult("x", 1.0, 0, 0)
    with pytest.raises(FrozenInstanceError):
        r.seconds = 2.0  # type: ignore[misc]


def test_fio_io_bytes_sums_jobs() -> None:
    doc = {
        "jobs": [
            {"read": {"io_bytes": 0}, "write": {"io_bytes": 4194304}},
            {"read": {"io_bytes": 4194304}, "write": {"io_bytes": 0}},
        ]
    }
    assert bp.fio_io_bytes(doc) == (4194304, 4194304)
    assert bp.fio_io_bytes({"jobs": []}) == (0, 0)


def test_bytes_and_ops_delta() -> None:
    a = _stats([10, 20, 30, 40, 50, 60, 1, 1], {"READ": 5, "WRITE": 2, "COMMIT": 1})
    b = _stats([15, 20, 30, 48, 57, 60, 3, 1], {"READ": 7, "WRITE": 2, "COMMIT": 1, "COPY": 3})
    assert bp.bytes_delta(a, b) == {
        "normalreadbytes": 5,
        "normalwritebytes": 0,
        "directreadbytes": 0,
        "directwritebytes": 8,
        "serverreadbytes": 7,
        "serverwritebytes": 0,
    }
    assert bp.ops_delta(a, b) == {"READ": 2, "COPY": 3}


def test_mismatches() -> None:
    r = StepResult("splice", 1.0, 100, 0)
    ok = dict.fromkeys(COUNTERS, 0) | {"normalreadbytes": 100, "serverreadbytes": 4096}
    assert bp.mismatches(r, ok) == []
    bad = ok | {"normalreadbytes": 0}
    assert bp.mismatches(r, bad) == ["normalreadbytes: step 100, mountstats 0"]
    assert bp.mismatches(StepResult("cp_tree", 1.0, None, None), bad) == []


def test_settle_waits_for_two_equal_readings() -> None:
    seq = iter(
        [
            _stats([1, 0, 0, 0, 0, 0, 0, 0], {}),
            _stats([2, 0, 0, 0, 0, 0, 0, 0], {}),
            _stats([2, 0, 0, 0, 0, 0, 0, 0], {"READ": 1}),
        ]
    )
    pauses: list[float] = []
    got = bp.settle(lambda: next(seq), pause=0.5, sleep=pauses.append)
    assert got.bytes["normalreadbytes"] == 2
    assert pauses == [0.5, 0.5]


def test_settle_gives_up() -> None:
    n = iter(range(1000))
    with pytest.raises(RuntimeError):
        bp.settle(lambda: _stats([next(n), 0, 0, 0, 0, 0, 0, 0], {}), tries=3, sleep=lambda _s: None)


def test_format_table() -> None:
    step: dict[str, Any] = {
        "app_read_bytes": None,
        "app_write_bytes": None,
        "deltas": dict.fromkeys(COUNTERS, 0),
        "ops": {"COPY": 48, "CLONE": 1, "SEQUENCE": 3},
        "mismatches": [],
    }
    doc = {"6.12.0": {"/mnt/nfs4": {"cp_tree": step}}}
    lines = bp.format_table([doc]).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("| kernel | mount | step | nread |")
    row = "| 6.12.0 | /mnt/nfs4 | cp_tree | 0 | 0 | 0 | 0 | 0 | 0 | - | - | yes | CLONE:1 COPY:48 |"
    assert lines[2] == row


def test_release_key_orders_kernels_numerically() -> None:
    releases = ["7.3.4+deb13-amd64", "6.12.117+deb13-amd64", "5.10.0-32-amd64", "6.1.0-50-amd64"]
    assert sorted(releases, key=bp.release_key) == [
        "5.10.0-32-amd64",
        "6.1.0-50-amd64",
        "6.12.117+deb13-amd64",
        "7.3.4+deb13-amd64",
    ]
    assert bp.release_key("weird") == ()


def test_format_table_merges_runs_in_kernel_order() -> None:
    step: dict[str, Any] = {
        "app_read_bytes": 1,
        "app_write_bytes": 0,
        "deltas": dict.fromkeys(COUNTERS, 0),
        "ops": {},
        "mismatches": ["normalreadbytes: step 1, mountstats 0"],
    }
    docs = [{"6.12.1": {"/mnt/nfs3": {"splice": step}}}, {"5.10.0": {"/mnt/nfs3": {"splice": step}}}]
    rows = bp.format_table(docs).splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| 5.10.0", "| 6.12.1"]
    assert all(" | NO | " in r for r in rows)
