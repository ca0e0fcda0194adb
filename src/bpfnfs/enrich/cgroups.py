"""cgroup ids <-> paths.

The kernel side records one id per task: on a cgroup v2 host bpf_get_current_cgroup_id(),
the inode number of the task's cgroup directory in the cgroup2 mount. On a host with only
cgroup v1 controller hierarchies (older distributions, hybrid systemd layouts) that id is
the v2 root for every task, so the kernel reads instead the kernfs id of the task's cgroup
in one v1 controller's hierarchy (cfg.cgroup_v1), which is that directory's inode number
in the controller's mount. Either way user space maps ids to paths by walking one tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bpfnfs.enrich.hostns import HostView
from bpfnfs.enrich.mountinfo import Mount, MountinfoError, parse_mountinfo

# v1 controllers in the order bpfnfs prefers them: kubelet and every container runtime
# create each container's cgroup in memory (and pids, cpu); named hierarchies such as
# name=systemd have no subsystem a task can be read through.
V1_PREFERENCE = (
    "memory",
    "pids",
    "cpu",
    "cpuacct",
    "blkio",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "perf_event",
    "net_cls",
    "net_prio",
    "rdma",
    "misc",
)
UNIFIED_MOUNT = "/sys/fs/cgroup"  # kubelet: cgroup v2 mode iff this is a cgroup2 mount


class CgroupError(ValueError):
    """A --cgroup value that is not a cgroup directory, or a hierarchy that is not there."""


@dataclass(frozen=True)
class Hierarchy:
    """The cgroup tree whose ids the kernel side records."""

    root: Path | None  # as this process reaches it; None: no cgroup filesystem mounted
    controller: str | None = None  # a v1 controller; None: cgroup v2
    ssid: int = -1  # the controller's subsystem id (v1)
    where: str = ""  # the mount point in the node's mount namespace
    chosen: str = ""  # why this one (auto) or the setting that named it

    @property
    def kernel_value(self) -> int:
        """struct bpfnfs_config.cgroup_v1: 0 for v2, else the subsystem id + 1."""
        return 0 if self.controller is None else self.ssid + 1

    def describe(self) -> str:
        if self.root is None:
            return "no cgroup filesystem is mounted: every process is in the root cgroup"
        if self.controller is None:
            return f"cgroup v2 at {self.where}"
        return f"cgroup v1, the {self.controller} controller's hierarchy at {self.where} ({self.chosen})"


def subsystems(proc: str = "/proc") -> dict[str, tuple[int, int]]:
    """{controller: (subsystem id, v1 hierarchy id or 0)} from /proc/cgroups, whose lines
    the kernel prints in subsystem id order (for_each_subsys), one per built-in controller."""
    out: dict[str, tuple[int, int]] = {}
    with open(f"{proc}/cgroups", encoding="ascii", errors="replace") as f:
        ssid = 0
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0]] = (ssid, int(parts[1]))
            ssid += 1
    return out


def _mounts(view: HostView) -> list[Mount]:
    try:
        return parse_mountinfo(view.mountinfo.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, MountinfoError):
        return []


def find_hierarchy(setting: str = "auto", view: HostView | None = None) -> Hierarchy:
    """The hierarchy for collection.cgroup_hierarchy (auto, v2, v1, v1:CONTROLLER).
    Raises CgroupError when the one asked for is not mounted."""
    view = view or HostView()
    mounts = _mounts(view)
    v2 = next((m for m in mounts if m.fstype == "cgroup2" and m.root == "/"), None)
    v2 = v2 or next((m for m in mounts if m.fstype == "cgroup2"), None)
    v1: dict[str, Mount] = {}
    for m in mounts:
        if m.fstype == "cgroup":
            for opt in m.super_options:
                if opt in V1_PREFERENCE and (opt not in v1 or (m.root == "/" and v1[opt].root != "/")):
                    v1[opt] = m

    def as_v2(chosen: str) -> Hierarchy:
        assert v2 is not None
        return Hierarchy(Path(view.path(v2.mount_point)), where=v2.mount_point, chosen=chosen)

    def as_v1(controller: str | None, chosen: str) -> Hierarchy:
        try:
            ids = subsystems(view.proc)
        except OSError as e:
            raise CgroupError(
                f"cgroup v1: cannot read {view.proc}/cgroups for the controllers' ids: {e}"
            ) from None
        names = [controller] if controller else [c for c in V1_PREFERENCE if c in v1]
        for name in names:
            m = v1.get(name)
            if m is None:
                raise CgroupError(
                    f"collection.cgroup_hierarchy {chosen}: no cgroup v1 hierarchy of the {name} controller "
                    f"is mounted (mounted: {', '.join(sorted(v1)) or 'none'})"
                )
            if name not in ids or ids[name][1] == 0:
                continue  # listed as mounted but bound to v2 here: not a v1 hierarchy
            return Hierarchy(Path(view.path(m.mount_point)), name, ids[name][0], m.mount_point, chosen)
        raise CgroupError(
            f"collection.cgroup_hierarchy {chosen}: no cgroup v1 controller hierarchy is mounted"
            + (f" ({view.proc}/cgroups shows {', '.join(names)} on no v1 hierarchy)" if names else "")
        )

    if setting == "v2":
        if v2 is None:
            raise CgroupError("collection.cgroup_hierarchy v2: no cgroup2 filesystem is mounted")
        return as_v2("v2")
    if setting.startswith("v1"):
        return as_v1(setting[3:] or None, setting)
    unified = next((m for m in reversed(mounts) if m.mount_point == UNIFIED_MOUNT), None)
    if unified is not None and unified.fstype == "cgroup2":
        return as_v2("auto")
    if v1:
        why = f"auto: {UNIFIED_MOUNT} is " + ("not cgroup2" if unified is not None else "not mounted")
        why += ", no cgroup2 mount" if v2 is None else f", cgroup2 at {v2.mount_point} is the hybrid layout's"
        try:
            return as_v1(None, why)
        except CgroupError:
            pass
    if v2 is not None:
        return as_v2("auto")
    return Hierarchy(None, chosen="auto")


def cgroup2_root(view: HostView | None = None) -> Path | None:
    """The node's cgroup2 mount, as this process reaches it (through pid 1's root from a
    container, whose own /sys/fs/cgroup is usually a cgroup namespace of its subtree)."""
    try:
        return find_hierarchy("v2", view).root
    except CgroupError:
        return None


def _walk(root: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    stack = [(root, "/")]
    while stack:
        d, rel = stack.pop()
        try:
            out[os.stat(d).st_ino] = rel
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((Path(e.path), rel.rstrip("/") + "/" + e.name))
        except OSError:
            continue  # removed while walking
    return out


@dataclass
class CgroupResolver:
    root: Path | None
    _paths: dict[int, str] = field(default_factory=dict)
    _scanned: bool = False

    def path(self, cgid: int) -> str | None:
        """The cgroup's path below the hierarchy's root, or None if it no longer exists."""
        if cgid in self._paths:
            return self._paths[cgid]
        if not self._scanned and self.root is not None:
            self._paths = _walk(self.root)
            self._scanned = True  # once per interval: see new_interval()
        return self._paths.get(cgid)

    def live(self, cgid: int) -> bool:
        return self.path(cgid) is not None

    def new_interval(self) -> None:
        self._scanned = False

    def rescan(self) -> None:
        """Walk the tree now (collect.retire: a cgroup missing after this is removed)."""
        self._paths = _walk(self.root) if self.root is not None else {}
        self._scanned = True


def resolve_filter(path: str, root: Path | None) -> Path:
    """Validates --cgroup PATH (absolute, or relative to the hierarchy's root)."""
    if root is None:
        raise CgroupError("filter.cgroup: no cgroup filesystem is mounted on this host")
    p = Path(path)
    if not p.is_absolute():
        p = root / path
    try:
        p = p.resolve(strict=True)
    except OSError:
        raise CgroupError(f"filter.cgroup {path}: no such cgroup ({p} does not exist)") from None
    if not p.is_dir() or (p != root and root not in p.parents):
        raise CgroupError(f"filter.cgroup {path}: not a directory in the cgroup hierarchy at {root}")
    return p


def subtree_ids(p: Path) -> set[int]:
    """The cgroup and every cgroup below it (the in-kernel filter set)."""
    return set(_walk(p))
