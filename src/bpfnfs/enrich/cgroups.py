"""cgroup v2 ids <-> paths. The kernel side records bpf_get_current_cgroup_id(),
which is the inode number of the cgroup's directory in the cgroup2 mount."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bpfnfs.enrich.hostns import HostView
from bpfnfs.enrich.mountinfo import MountinfoError, parse_mountinfo


class CgroupError(ValueError):
    """A --cgroup value that is not a cgroup v2 directory."""


def cgroup2_root(view: HostView | None = None) -> Path | None:
    """The node's cgroup2 mount, as this process reaches it (through pid 1's root from a
    container, whose own /sys/fs/cgroup is usually a cgroup namespace of its subtree)."""
    view = view or HostView()
    try:
        for m in parse_mountinfo(view.mountinfo.read_text(encoding="utf-8", errors="surrogateescape")):
            if m.fstype == "cgroup2":
                return Path(view.path(m.mount_point))
    except (OSError, MountinfoError):
        pass
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
        """The cgroup's path below the cgroup2 root, or None if it no longer exists."""
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
    """Validates --cgroup PATH (absolute, or relative to the cgroup2 root)."""
    if root is None:
        raise CgroupError("filter.cgroup: no cgroup v2 filesystem is mounted on this host")
    p = Path(path)
    if not p.is_absolute():
        p = root / path
    try:
        p = p.resolve(strict=True)
    except OSError:
        raise CgroupError(f"filter.cgroup {path}: no such cgroup ({p} does not exist)") from None
    if not p.is_dir() or (p != root and root not in p.parents):
        raise CgroupError(f"filter.cgroup {path}: not a directory in the cgroup v2 filesystem at {root}")
    return p


def subtree_ids(p: Path) -> set[int]:
    """The cgroup and every cgroup below it (the in-kernel filter set)."""
    return set(_walk(p))
