"""Which cgroup tree the kernel side's ids come from (enrich.cgroups.find_hierarchy):
cgroup v2, the hybrid systemd layout, and hosts with only v1 controller hierarchies."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfnfs.enrich.cgroups import CgroupError, find_hierarchy, subsystems
from bpfnfs.enrich.hostns import HostView

# /proc/cgroups of a Debian 5.10 kernel: lines in subsystem id order.
PROC_CGROUPS_V1 = """#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t4\t60\t1
cpuacct\t4\t60\t1
blkio\t6\t60\t1
memory\t9\t120\t1
devices\t5\t60\t1
freezer\t2\t3\t1
net_cls\t7\t1\t1
perf_event\t8\t1\t1
net_prio\t7\t1\t1
hugetlb\t10\t1\t1
pids\t11\t66\t1
rdma\t12\t1\t1
"""
PROC_CGROUPS_V2 = PROC_CGROUPS_V1.replace("\t9\t", "\t0\t").replace("\t11\t", "\t0\t")

V2 = "30 22 0:26 / /sys/fs/cgroup rw,nosuid,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
# systemd's legacy layout (CentOS 7, Ubuntu 18.04): tmpfs on /sys/fs/cgroup, one mount per controller.
LEGACY = """30 22 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/systemd rw,nosuid,relatime shared:5 - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,relatime shared:8 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid,relatime shared:9 - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw,nosuid,relatime shared:10 - cgroup cgroup rw,pids
37 30 0:33 / /sys/fs/cgroup/freezer rw,nosuid,relatime shared:11 - cgroup cgroup rw,freezer
"""
# systemd's hybrid layout (Debian 10, Ubuntu 20.04): the same plus an empty cgroup2 at unified.
HYBRID = LEGACY + (
    "32 30 0:28 / /sys/fs/cgroup/unified rw,nosuid,relatime shared:6 - cgroup2 cgroup2 rw,nsdelegate\n"
)


def view(tmp_path: Path, mountinfo: str, proc_cgroups: str = PROC_CGROUPS_V1) -> HostView:
    (tmp_path / "self").mkdir(exist_ok=True)
    (tmp_path / "self" / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroups").write_text(proc_cgroups)
    return HostView(str(tmp_path))


def test_subsystem_ids_follow_line_order(tmp_path: Path) -> None:
    view(tmp_path, V2)
    ids = subsystems(str(tmp_path))
    assert ids["cpuset"] == (0, 3) and ids["memory"] == (4, 9) and ids["pids"] == (11, 11)


def test_v2_host(tmp_path: Path) -> None:
    h = find_hierarchy("auto", view(tmp_path, V2, PROC_CGROUPS_V2))
    assert h.controller is None and h.kernel_value == 0
    assert h.root == Path("/sys/fs/cgroup") and h.describe() == "cgroup v2 at /sys/fs/cgroup"


def test_legacy_v1_host_uses_memory(tmp_path: Path) -> None:
    h = find_hierarchy("auto", view(tmp_path, LEGACY))
    assert (h.controller, h.ssid, h.kernel_value) == ("memory", 4, 5)
    assert h.root == Path("/sys/fs/cgroup/memory")
    assert "no cgroup2 mount" in h.chosen


def test_hybrid_host_is_v1_as_kubelet_sees_it(tmp_path: Path) -> None:
    h = find_hierarchy("auto", view(tmp_path, HYBRID))
    assert h.controller == "memory"
    assert "/sys/fs/cgroup is not cgroup2" in h.chosen and "/sys/fs/cgroup/unified" in h.chosen
    # Asked for explicitly, the hybrid layout's cgroup2 mount is used.
    assert find_hierarchy("v2", view(tmp_path, HYBRID)).root == Path("/sys/fs/cgroup/unified")


def test_v1_controller_named(tmp_path: Path) -> None:
    h = find_hierarchy("v1:pids", view(tmp_path, LEGACY))
    assert (h.controller, h.kernel_value) == ("pids", 12)
    cpu = find_hierarchy("v1:cpu", view(tmp_path, LEGACY))  # co-mounted with cpuacct
    assert (cpu.controller, cpu.ssid, cpu.root) == ("cpu", 1, Path("/sys/fs/cgroup/cpu,cpuacct"))


def test_v1_next_controller_when_memory_is_bound_to_v2(tmp_path: Path) -> None:
    """A v2 host that also mounts a v1 freezer (as some container tools do) stays v2 in auto;
    v1 asked for picks the first controller really on a v1 hierarchy."""
    mi = V2 + "40 30 0:40 / /mnt/freezer rw,relatime shared:20 - cgroup cgroup rw,freezer\n"
    assert find_hierarchy("auto", view(tmp_path, mi, PROC_CGROUPS_V2)).controller is None
    h = find_hierarchy("v1", view(tmp_path, mi, PROC_CGROUPS_V2))
    assert (h.controller, h.ssid, h.root) == ("freezer", 6, Path("/mnt/freezer"))


def test_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=r"v1:memory: no cgroup v1 hierarchy of the memory .*none"):
        find_hierarchy("v1:memory", view(tmp_path, V2, PROC_CGROUPS_V2))
    with pytest.raises(CgroupError, match="v2: no cgroup2 filesystem is mounted"):
        find_hierarchy("v2", view(tmp_path, LEGACY))
    mi = V2 + "40 30 0:40 / /mnt/memory rw,relatime shared:20 - cgroup cgroup rw,memory\n"
    with pytest.raises(CgroupError, match="shows memory on no v1 hierarchy"):
        find_hierarchy("v1:memory", view(tmp_path, mi, PROC_CGROUPS_V2))


def test_nothing_mounted(tmp_path: Path) -> None:
    h = find_hierarchy("auto", view(tmp_path, "25 1 0:22 / /proc rw - proc proc rw\n"))
    assert h.root is None and h.kernel_value == 0 and "no cgroup filesystem" in h.describe()


def test_from_a_container_paths_go_through_pid_1(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "mountinfo").write_text(LEGACY)
    (tmp_path / "cgroups").write_text(PROC_CGROUPS_V1)
    h = find_hierarchy("auto", HostView(str(tmp_path), "1", "test"))
    assert h.root == Path(f"{tmp_path}/1/root/sys/fs/cgroup/memory") and h.where == "/sys/fs/cgroup/memory"
