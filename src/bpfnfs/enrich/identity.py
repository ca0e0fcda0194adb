"""One identity resolver: cgroup id -> cgroup path -> pod UID and container id -> names.

The kernel programs record bpf_get_current_cgroup_id() with every syscall-side op and bill
writeback to the cgroup that dirtied the data, so a cgroup id is the one key every output
(table, JSON, top, trace, /metrics, spans) turns into a workload. This module is the only
place that does it:

- cgroup id -> path below the cgroup2 root (enrich.cgroups, one scan per interval);
- path -> pod UID, QoS class and container id, from the kubelet's cgroup layout
  (parse_workload: systemd and cgroupfs drivers; containerd, CRI-O, docker and podman);
- pod UID / container id -> namespace, pod and container names, from a pod index the
  Kubernetes watch fills (enrich.k8s); without one, the cgroup path's own facts are used.

A cgroup that has been removed keeps the identity it last resolved to, so its counters keep
their labels until its series end (a removed pod's names too).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# A pod's cgroup: "pod<uid>" (cgroupfs) or "kubepods[-<qos>]-pod<uid>.slice" (systemd,
# where the UID's dashes are underscores).
_POD = re.compile(
    r"^(?:kubepods(?:-(?P<sqos>burstable|besteffort|guaranteed))?-)?pod"
    r"(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)
# A container's cgroup: "<runtime>-<id>.scope" (systemd) or "<id>" / "crio-<id>" (cgroupfs).
_CONTAINER = re.compile(
    r"^(?:(?P<rt>cri-containerd|crio|docker|libpod|containerd)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?$"
)
# The identity that entries of exited processes and removed cgroups are folded into
# (collect.retire): no cgroup has this id.
RETIRED_CG = (1 << 64) - 1
_RUNTIMES = {"cri-containerd": "containerd", "containerd": "containerd", "crio": "cri-o", "docker": "docker"}
_QOS = {"burstable", "besteffort", "guaranteed"}
# kubepods levels above any pod: a process there (rare) is not an unparsable path.
_POD_PARENTS = {
    "kubepods",
    "kubepods.slice",
    "burstable",
    "besteffort",
    "kubepods-burstable.slice",
    "kubepods-besteffort.slice",
}


@dataclass(frozen=True)
class Workload:
    """What a cgroup path says about its workload (no API needed)."""

    pod_uid: str | None = None
    qos: str | None = None  # burstable, besteffort, guaranteed
    container_id: str | None = None
    runtime: str | None = None  # containerd, cri-o, docker, podman


def parse_workload(path: str | None) -> Workload:
    """Pod UID, QoS class and container id from a cgroup path (v2, or a v1 hierarchy's path).

    Matches anywhere below a kubepods level, so a kubelet with its own --cgroup-root (kind,
    nested nodes) works; container ids outside Kubernetes (docker, podman) are found too.
    crio-conmon-<id> (CRI-O's monitor process) is not the container."""
    if not path:
        return Workload()
    parts = [p for p in path.split("/") if p]
    uid = qos = cid = runtime = None
    in_kube = False
    for i, p in enumerate(parts):
        if p in ("kubepods", "kubepods.slice"):
            in_kube = True
            if i + 1 < len(parts) and parts[i + 1] in _QOS:
                qos = parts[i + 1]
            continue
        if in_kube:
            m = _POD.match(p)
            if m:
                uid = m.group("uid").replace("_", "-")
                qos = m.group("sqos") or qos or "guaranteed"
                continue
            if p.startswith("kubepods-") and p.endswith(".slice"):
                continue  # kubepods-burstable.slice
    if parts:
        last = parts[-1]
        # cgroupfs: "a:b:id" keeps what follows the last ':' (Tetragon's rule).
        m = _CONTAINER.match(last.rsplit(":", 1)[-1])
        if m and (uid is not None or m.group("rt") is not None):
            cid = m.group("id")
            rt = m.group("rt")
            runtime = "podman" if rt == "libpod" else _RUNTIMES.get(rt or "")
    if uid is None and qos is not None and not in_kube:
        qos = None
    return Workload(uid, qos if uid else None, cid, runtime)


@dataclass(frozen=True)
class PodMeta:
    uid: str
    namespace: str
    name: str
    containers: dict[str, str] = field(default_factory=dict)  # container id -> container name
    claims: dict[str, str] = field(default_factory=dict)  # pod volume name -> PersistentVolumeClaim
    volumes: tuple[str, ...] = ()  # every volume name of the pod's spec


class PodIndex(Protocol):
    def pod(self, uid: str) -> PodMeta | None: ...


@dataclass(frozen=True)
class Identity:
    """Who an op belongs to, as every output labels it."""

    cgroup_id: int
    cgroup: str | None  # path below the cgroup2 root; None if never seen (removed before a scan)
    pod_uid: str | None = None
    container_id: str | None = None
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    removed: bool = False

    @property
    def cgroup_label(self) -> str:
        """The cgroup as a label or table cell: its path, or what is known of it."""
        if not self.cgroup_id:
            return ""
        if self.cgroup_id == RETIRED_CG:
            return RETIRED_LABEL
        return self.cgroup if self.cgroup is not None else f"cgroup {self.cgroup_id}"

    @property
    def pod_label(self) -> str:
        """namespace/pod, the pod's UID when the API gave no name, or empty outside pods."""
        if self.pod and self.namespace:
            return f"{self.namespace}/{self.pod}"
        return self.pod_uid or ""

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"cgroup_id": self.cgroup_id, "cgroup": self.cgroup}
        for k in ("namespace", "pod", "pod_uid", "container", "container_id"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


RETIRED_LABEL = "(exited processes and removed cgroups)"
RETIRED = Identity(RETIRED_CG, RETIRED_LABEL, removed=True)


class IdentityResolver:
    """cgroup id -> Identity, for every output. `path` is the cgroup id -> path lookup
    (enrich.cgroups.CgroupResolver.path); `pods` the Kubernetes pod index, if any."""

    def __init__(self, path: Callable[[int], str | None], pods: PodIndex | None = None) -> None:
        self._path = path
        self.pods = pods
        self._last: dict[int, Identity] = {}  # the last live resolution, for removed cgroups
        self._unparsed: set[int] = set()  # kubepods cgroups whose path gave no pod UID
        self.unparsed = 0  # their count (monotonic)

    def of(self, cgroup_id: int) -> Identity:
        if not cgroup_id:
            return Identity(0, None)
        if cgroup_id == RETIRED_CG:
            return RETIRED
        path = self._path(cgroup_id)
        if path is None:
            last = self._last.get(cgroup_id)
            if last is None:
                return Identity(cgroup_id, None, removed=True)
            return last if last.removed else _removed(last)
        ident = self._resolve(cgroup_id, path)
        self._last[cgroup_id] = ident
        return ident

    def _resolve(self, cgroup_id: int, path: str) -> Identity:
        w = parse_workload(path)
        leaf = path.rstrip("/").rsplit("/", 1)[-1]
        unparsed = w.pod_uid is None and "kubepods" in path and leaf not in _POD_PARENTS
        if unparsed and cgroup_id not in self._unparsed:  # labelled with the raw path, counted once
            self._unparsed.add(cgroup_id)
            self.unparsed += 1
        ns = pod = container = None
        if w.pod_uid is not None and self.pods is not None:
            meta = self.pods.pod(w.pod_uid)
            if meta is not None:
                ns, pod = meta.namespace, meta.name
                if w.container_id is not None:
                    container = meta.containers.get(w.container_id)
        return Identity(cgroup_id, path, w.pod_uid, w.container_id, ns, pod, container)

    def alive(self, cgroup_id: int) -> bool:
        return not cgroup_id or self._path(cgroup_id) is not None

    def forget(self, keep: set[int]) -> None:
        """Drop remembered identities of removed cgroups no longer counted anywhere."""
        for cg in [c for c in self._last if c not in keep]:
            del self._last[cg]
        self._unparsed &= keep


def _removed(i: Identity) -> Identity:
    from dataclasses import replace

    return replace(i, removed=True)


__all__ = [
    "RETIRED",
    "RETIRED_CG",
    "Identity",
    "IdentityResolver",
    "PodIndex",
    "PodMeta",
    "Workload",
    "parse_workload",
]
