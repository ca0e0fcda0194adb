"""The node's view of mounts and cgroups, also from inside a container.

A DaemonSet's agent runs in a mount namespace of its own: its /proc/self/mountinfo lists
the container's mounts, not the node's NFS mounts, and its /sys/fs/cgroup is usually a
cgroup namespace showing only its own subtree. pid 1 of the host (hostPID, or the host's
/proc mounted at collection.proc) lives in the node's namespaces, so when its mount
namespace differs from ours, the node's mount table is {proc}/1/mountinfo and a node path
P is reached as {proc}/1/root/P (the kernel resolves it in pid 1's root and namespace).
On a host (same namespace, or pid 1 not readable) nothing changes: /proc/self and P itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostView:
    proc: str = "/proc"
    pid: str = "self"  # whose mountinfo is the node's: "self", or "1" from a container
    reason: str = ""  # why pid 1's view was chosen (for the log), empty on a host

    @property
    def in_container(self) -> bool:
        return self.pid != "self"

    @property
    def mountinfo(self) -> Path:
        return Path(self.proc) / self.pid / "mountinfo"

    def path(self, node_path: str) -> str:
        """A path of the node's mount namespace, as this process reaches it."""
        if not self.in_container:
            return node_path
        return f"{self.proc}/1/root/{node_path.lstrip('/')}"


def host_view(proc: str = "/proc") -> HostView:
    """pid 1's view when its mount namespace is not ours and we may read it; ours otherwise."""
    try:
        ours = os.readlink(f"{proc}/self/ns/mnt")
        init = os.readlink(f"{proc}/1/ns/mnt")
    except OSError:  # no pid 1 there, or no permission: the view we have is all there is
        return HostView(proc)
    if ours == init:
        return HostView(proc)
    try:
        with open(f"{proc}/1/mountinfo", "rb") as f:
            f.read(1)
    except OSError:
        return HostView(proc)
    return HostView(proc, "1", f"mount namespace {ours} is not pid 1's {init}")


__all__ = ["HostView", "host_view"]
