"""The live settings (struct bpfnfs_live in .data): syscall-side filters and per-pid
keying that a config reload changes without reloading or re-attaching programs.
No kernel: fake object instances, and the real object only opened."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bpfnfs.collect import records as R
from bpfnfs.collect.snapshot import LayoutError, check_layouts
from bpfnfs.config import Config
from bpfnfs.loader.maps import Map
from bpfnfs.loader.object import BpfObject, LoadError, object_bytes
from bpfnfs.probes import loading
from bpfnfs.probes.loading import Loader


def _loader(
    monkeypatch: pytest.MonkeyPatch,
    per_pid: bool = False,
    filter_pid: int | None = None,
    filter_comm: str | None = None,
) -> Loader:
    """A Loader whose initial live settings are these (Loader._initial_live is the one
    place that reads them from the config, whose names are not this test's business)."""
    monkeypatch.setattr(Loader, "_initial_live", lambda _self: (per_pid, filter_pid, filter_comm))
    return Loader(Config(), log=lambda _m: None)


@dataclass
class FakeObj:
    """One loaded instance: only its own .data is written."""

    fail: bool = False
    writes: list[tuple[str, bytes]] = field(default_factory=list)

    def write_global(self, section: str, value: bytes) -> None:
        if self.fail:
            raise LoadError(f"{section}: update failed")
        self.writes.append((section, value))


def test_pack_live() -> None:
    flags = R.CFG_F_VFS_PID | R.CFG_F_FILTER_COMM
    raw = R.pack_live(flags, 0, "fio")
    assert len(raw) == R.LIVE.size == 24
    assert R.LIVE.unpack(raw) == (flags, 0, b"fio" + b"\0" * 13)
    assert R.LIVE.unpack(R.pack_live(R.CFG_F_FILTER_PID, 4242))[:2] == (R.CFG_F_FILTER_PID, 4242)
    assert R.LIVE.unpack(R.pack_live(0)) == (0, 0, b"\0" * 16)
    # As bpf_get_current_comm returns it: 15 bytes and the NUL.
    assert R.LIVE.unpack(R.pack_live(R.CFG_F_FILTER_COMM, 0, "x" * 20))[2] == b"x" * 15 + b"\0"


def test_pack_live_refuses_rodata_flags() -> None:
    with pytest.raises(ValueError):
        R.pack_live(R.CFG_F_EVENTS)
    assert R.CFG_F_LIVE == R.CFG_F_VFS_PID | R.CFG_F_FILTER_PID | R.CFG_F_FILTER_COMM | R.CFG_F_FILTER_CGROUP


def test_initial_live() -> None:
    ld = Loader(Config(), log=lambda _m: None)  # defaults: no filter, no per-pid keys
    assert ld.live_flags() == 0
    assert ld._pack_live() == R.pack_live(0)


def test_live_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _loader(monkeypatch, per_pid=True).live_flags() == R.CFG_F_VFS_PID
    ld = _loader(monkeypatch, per_pid=True, filter_pid=7)
    assert ld.live_flags() == R.CFG_F_VFS_PID | R.CFG_F_FILTER_PID
    assert R.LIVE.unpack(ld._pack_live())[1] == 7
    ld = _loader(monkeypatch, filter_comm="dd")
    assert ld.live_flags() == R.CFG_F_FILTER_COMM
    assert R.LIVE.unpack(ld._pack_live())[2].rstrip(b"\0") == b"dd"


def test_rodata_flags_leave_the_live_ones_out(monkeypatch: pytest.MonkeyPatch) -> None:
    ld = _loader(monkeypatch, per_pid=True, filter_pid=7, filter_comm="dd")
    ld._cgroup_filter_on = True
    assert ld.live_flags() == R.CFG_F_LIVE
    for tier in ("btf", "tracefs"):
        assert not ld.flags(tier) & R.CFG_F_LIVE


def test_set_live_writes_every_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    ld = _loader(monkeypatch, filter_comm="dd")
    objs = [FakeObj(), FakeObj(), FakeObj()]
    ld.objs = objs  # type: ignore[assignment]
    ld.set_live(per_pid=True, filter_pid=None, filter_comm="fio", cgroup_filter=True)
    want = R.pack_live(R.CFG_F_VFS_PID | R.CFG_F_FILTER_COMM | R.CFG_F_FILTER_CGROUP, 0, "fio")
    assert [o.writes for o in objs] == [[(".data", want)]] * 3
    assert ld.live_flags() == R.CFG_F_VFS_PID | R.CFG_F_FILTER_COMM | R.CFG_F_FILTER_CGROUP
    # Filters off again: one more write each, all zero.
    ld.set_live(per_pid=False, filter_pid=None, filter_comm=None, cgroup_filter=False)
    assert [o.writes[-1] for o in objs] == [(".data", R.pack_live(0))] * 3


def test_set_live_tries_every_instance_then_says_which_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    ld = _loader(monkeypatch)
    objs = [FakeObj(), FakeObj(fail=True), FakeObj()]
    ld.objs = objs  # type: ignore[assignment]
    with pytest.raises(LoadError, match="live settings"):
        ld.set_live(per_pid=False, filter_pid=42, filter_comm=None, cgroup_filter=False)
    want = R.pack_live(R.CFG_F_FILTER_PID, 42)
    assert objs[0].writes == objs[2].writes == [(".data", want)]


def test_set_live_before_attach_is_the_initial_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing loaded yet (modules not there): the next instance starts with the new values."""
    seen: dict[str, bytes] = {}

    class Stop(Exception):
        pass

    class FakeMap:
        def set_max_entries(self, _n: int) -> None:
            pass

    class FakeBpfObject:
        def __init__(self, _data: bytes, **_opts: object) -> None:
            self.maps = {"files": FakeMap()}

        def open(self) -> FakeBpfObject:
            return self

        def set_autoload(self, _names: set[str]) -> None:
            pass

        def set_rodata(self, value: bytes) -> None:
            seen[".rodata"] = value

        def set_initial(self, section: str, value: bytes) -> None:
            seen[section] = value

        def load(self) -> None:
            raise Stop  # no kernel here

        def close(self) -> None:
            pass

    monkeypatch.setattr(loading, "BpfObject", FakeBpfObject)
    monkeypatch.setattr(loading, "object_bytes", lambda: b"")
    ld = _loader(monkeypatch, per_pid=True)
    ld.set_live(per_pid=True, filter_pid=None, filter_comm="cp", cgroup_filter=False)
    with pytest.raises(Stop):
        ld._load((), {}, "btf")
    assert seen[".data"] == R.pack_live(R.CFG_F_VFS_PID | R.CFG_F_FILTER_COMM, 0, "cp")
    assert not R.CONFIG.unpack(seen[".rodata"])[1] & R.CFG_F_LIVE


def test_object_data_section_before_load() -> None:
    with BpfObject(object_bytes()).open() as obj:
        obj.set_initial(".data", R.pack_live(R.CFG_F_FILTER_PID, 1))
        with pytest.raises(LoadError, match="size mismatch"):
            obj.set_initial(".data", b"\0" * 8)
        with pytest.raises(LoadError, match="before load"):
            obj.write_global(".data", R.pack_live(0))


def test_layout_check_covers_the_global_sections() -> None:
    with BpfObject(object_bytes()).open() as obj:
        maps = dict(obj.maps)
        check_layouts(maps)
        data = obj.global_map(".data")
        name = next(n for n, m in maps.items() if m is data)
        maps[name] = Map(data.lib, data.ptr, name, data.type, data.key_size, data.value_size + 8, 1)
        with pytest.raises(LayoutError, match=r"\.data"):
            check_layouts(maps)
        del maps[name]
        with pytest.raises(LayoutError, match=r"lacks its \.data"):
            check_layouts(maps)
