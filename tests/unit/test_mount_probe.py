"""The mount probe never holds up a report on a dead server, and the node's view from a container.

statfs() is replaced by a fake that plays the kernel (it stores what the rpc_request program
would store for the calling thread) or blocks like a hard mount whose server is gone.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bpfnfs.collect import records as R
from bpfnfs.enrich import cgroups, mounts
from bpfnfs.enrich.hostns import HostView, host_view
from bpfnfs.enrich.mounts import FAILED, MAPPED, NOT_RESPONDING, PROBING, MountRegistry

MOUNTINFO = (
    "40 1 0:50 / /mnt/nfs3 rw - nfs 127.0.0.1:/srv/nfs rw,vers=3,addr=127.0.0.1\n"
    "41 1 0:51 / /mnt/nfs4 rw - nfs4 127.0.0.1:/ rw,vers=4.2,addr=127.0.0.1\n"
    "42 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
)
CLIDS = {"/mnt/nfs3": 3, "/mnt/nfs4": 7}


class FakeProbeMap:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}
        self.lock = threading.Lock()

    def delete(self, key: bytes) -> None:
        with self.lock:
            self.d.pop(key, None)

    def lookup(self, key: bytes) -> bytes | None:
        with self.lock:
            return self.d.get(key)


class Server:
    """statvfs as the kernel does it: an FSSTAT on the mount's client, or a hang while dead."""

    def __init__(self, pm: FakeProbeMap) -> None:
        self.pm = pm
        self.alive = threading.Event()
        self.alive.set()
        self.calls: list[str] = []
        self.fail: OSError | None = None

    def statvfs(self, path: str) -> None:
        self.calls.append(path)
        self.alive.wait()
        if self.fail is not None:
            raise self.fail
        clid = CLIDS[path.removeprefix("/proc/1/root")]
        with self.pm.lock:
            self.pm.d[R.U32.pack(threading.get_native_id())] = R.PROBE_VAL.pack(clid, 3, b"FSSTAT")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(MOUNTINFO)
    return tmp_path


@pytest.fixture
def setup(proc: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MountRegistry, Server, Clock, list[str]]:
    pm = FakeProbeMap()
    server = Server(pm)
    monkeypatch.setattr(mounts.os, "statvfs", server.statvfs)
    monkeypatch.setattr(mounts, "PROBE_WAIT", 0.2)
    clock = Clock()
    logs: list[str] = []
    reg = MountRegistry(pm, view=HostView(str(proc)), log=logs.append, clock=clock)  # type: ignore[arg-type]
    return reg, server, clock, logs


def test_live_server_maps_in_the_first_refresh(setup: tuple[MountRegistry, Server, Clock, list[str]]) -> None:
    reg, server, _clock, logs = setup
    reg.refresh()
    assert {nm.key: (nm.clid, nm.state) for nm in reg.nfs_list()} == {
        "/mnt/nfs3": (3, MAPPED),
        "/mnt/nfs4": (7, MAPPED),
    }
    reg.refresh()
    assert len(server.calls) == 2 and not logs  # mapped once, never probed again


def test_dead_server_holds_up_no_refresh_and_is_probed_once(
    setup: tuple[MountRegistry, Server, Clock, list[str]],
) -> None:
    reg, server, clock, logs = setup
    server.alive.clear()
    t = time.monotonic()
    reg.refresh()  # waits PROBE_WAIT for the new probes, together, once
    first = time.monotonic() - t
    assert first < 0.2 * 2 + 0.5
    assert {nm.state for nm in reg.nfs_list()} == {PROBING}
    t = time.monotonic()
    for _ in range(5):
        clock.t += 2
        reg.refresh()
    assert time.monotonic() - t < 0.2  # later refreshes do not wait for a probe in flight
    assert len(server.calls) == 2  # one statfs per superblock, never repeated while it hangs
    assert {nm.state for nm in reg.nfs_list()} == {NOT_RESPONDING}
    assert all(nm.clid is None for nm in reg.nfs_list())
    stuck = [m for m in logs if "not responding" in m]
    assert len(stuck) == 2 and "statfs(/mnt/nfs3) has not returned in 6 s" in stuck[0]
    reg.refresh()
    assert len([m for m in logs if "not responding" in m]) == 2  # logged once per episode
    server.alive.set()  # the server is back: the blocked statfs returns
    deadline = time.monotonic() + 5
    while any(nm.clid is None for nm in reg.nfs_list()) and time.monotonic() < deadline:
        reg.refresh()
        time.sleep(0.01)
    assert {nm.key: nm.state for nm in reg.nfs_list()} == {"/mnt/nfs3": MAPPED, "/mnt/nfs4": MAPPED}
    assert any("answers again" in m for m in logs)


def test_failed_probe_retries_with_backoff(setup: tuple[MountRegistry, Server, Clock, list[str]]) -> None:
    reg, server, clock, logs = setup
    server.fail = OSError(5, "Input/output error")  # a soft mount's timeout
    reg.refresh()
    assert len(server.calls) == 2
    assert {nm.state for nm in reg.nfs_list()} == {FAILED}
    assert sum("statfs(/mnt/nfs3): Input/output error; will retry" in m for m in logs) == 1
    clock.t += mounts.RETRY_MIN - 1
    reg.refresh()
    assert len(server.calls) == 2  # not before its backoff
    clock.t += 1
    reg.refresh()
    assert len(server.calls) == 4
    clock.t += mounts.RETRY_MIN
    reg.refresh()
    assert len(server.calls) == 4  # the backoff doubled
    server.fail = None
    clock.t += mounts.RETRY_MIN
    reg.refresh()
    assert {nm.state for nm in reg.nfs_list()} == {MAPPED}
    assert sum("statfs(/mnt/nfs3): Input/output error" in m for m in logs) == 1  # not one per retry


def test_unmounted_while_probing_is_forgotten(
    setup: tuple[MountRegistry, Server, Clock, list[str]], proc: Path
) -> None:
    reg, server, _clock, _logs = setup
    server.alive.clear()
    reg.refresh()
    (proc / "self" / "mountinfo").write_text(MOUNTINFO.splitlines(keepends=True)[1])
    reg.refresh()
    assert [nm.key for nm in reg.nfs_list()] == ["/mnt/nfs4"]
    server.alive.set()


def _ns(proc: Path, pid: str, ns: str) -> None:
    (proc / pid / "ns").mkdir(parents=True, exist_ok=True)
    os.symlink(ns, proc / pid / "ns" / "mnt")


def test_host_view_on_a_host(proc: Path) -> None:
    _ns(proc, "self", "mnt:[4026531841]")
    _ns(proc, "1", "mnt:[4026531841]")
    v = host_view(str(proc))
    assert not v.in_container and v.mountinfo == proc / "self" / "mountinfo"
    assert v.path("/mnt/nfs3") == "/mnt/nfs3"


def test_host_view_without_pid_1(proc: Path) -> None:
    _ns(proc, "self", "mnt:[4026532100]")
    assert not host_view(str(proc)).in_container


def test_host_view_in_a_container(proc: Path) -> None:
    """A DaemonSet's agent: its mount namespace is not the node's, pid 1's is."""
    _ns(proc, "self", "mnt:[4026532100]")
    _ns(proc, "1", "mnt:[4026531841]")
    (proc / "1" / "mountinfo").write_text(MOUNTINFO)
    (proc / "self" / "mountinfo").write_text("1 0 0:20 / / rw - overlay overlay rw\n")
    v = host_view(str(proc))
    assert v.in_container and v.mountinfo == proc / "1" / "mountinfo"
    assert v.path("/mnt/nfs3") == f"{proc}/1/root/mnt/nfs3"
    assert "4026532100" in v.reason and "4026531841" in v.reason
    assert cgroups.cgroup2_root(v) == Path(f"{proc}/1/root/sys/fs/cgroup")


def test_container_probe_goes_through_pid_1s_root(monkeypatch: pytest.MonkeyPatch, proc: Path) -> None:
    pm = FakeProbeMap()
    server = Server(pm)
    monkeypatch.setattr(mounts.os, "statvfs", lambda p: server.statvfs(p.replace(str(proc), "/proc")))
    (proc / "1").mkdir()
    (proc / "1" / "mountinfo").write_text(MOUNTINFO)
    (proc / "self" / "mountinfo").write_text("1 0 0:20 / / rw - overlay overlay rw\n")
    reg = MountRegistry(pm, view=HostView(str(proc), "1"))  # type: ignore[arg-type]
    reg.refresh()
    assert server.calls == ["/proc/1/root/mnt/nfs3", "/proc/1/root/mnt/nfs4"]
    assert {nm.key: nm.clid for nm in reg.nfs_list()} == CLIDS
