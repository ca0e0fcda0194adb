"""NFS mounts that are Kubernetes pod volumes: which pod, volume, PersistentVolume and claim.

The kubelet mounts a pod's NFS volume at
  /var/lib/kubelet/pods/<pod uid>/volumes/kubernetes.io~nfs/<name>          (in-tree)
  /var/lib/kubelet/pods/<pod uid>/volumes/kubernetes.io~csi/<name>/mount    (CSI; vol_data.json beside)
where <name> is the pod's volume name for an inline volume and the PersistentVolume's name for one
bound through a claim. csi-driver-nfs does not stage: every pod gets a mount of its own. The
claim of a PersistentVolume comes from its claimRef (the Kubernetes API; enrich.k8s), or from
the pod's own volumes when the name is an inline volume's.

A mount point is only parsed, and vol_data.json is a file on the node's local disk: nothing
here touches the NFS mount.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol

from bpfnfs.enrich.hostns import HostView
from bpfnfs.enrich.identity import PodMeta

_KUBELET = re.compile(
    r"^(?P<root>.*/pods)/(?P<uid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/volumes/"
    r"kubernetes\.io~(?P<plugin>nfs|csi)/(?P<name>[^/]+)(?P<csi_mount>/mount)?$"
)


@dataclass(frozen=True)
class KubeletVolume:
    pod_uid: str
    plugin: str  # nfs (in-tree) or csi
    name: str  # the pod's volume name (inline) or the PersistentVolume's name
    driver: str | None = None  # CSI driver, from vol_data.json


def parse_kubelet_volume(mount_point: str) -> KubeletVolume | None:
    m = _KUBELET.match(mount_point)
    if m is None or (m.group("plugin") == "csi") != bool(m.group("csi_mount")):
        return None
    return KubeletVolume(m.group("uid"), m.group("plugin"), m.group("name"))


class VolumeIndex(Protocol):
    def pod(self, uid: str) -> PodMeta | None: ...

    def claim_of(self, pv: str) -> tuple[str, str] | None: ...


@dataclass(frozen=True)
class VolumeLabels:
    pod_uid: str
    plugin: str
    volume: str
    namespace: str | None = None
    pod: str | None = None
    persistentvolume: str | None = None
    persistentvolumeclaim: str | None = None
    driver: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class VolumeResolver:
    """mount point -> VolumeLabels, for the mounts that are pod volumes."""

    def __init__(self, view: HostView, index: VolumeIndex | None = None) -> None:
        self.view = view
        self.index = index
        self._csi: dict[str, dict[str, str]] = {}  # mount point -> vol_data.json

    def _vol_data(self, mount_point: str) -> dict[str, str]:
        if mount_point not in self._csi:
            path = self.view.path(mount_point.removesuffix("/mount") + "/vol_data.json")
            try:
                with open(path, "rb") as f:
                    doc = json.loads(f.read(65536))
                self._csi[mount_point] = {k: str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
            except (OSError, ValueError):
                self._csi[mount_point] = {}
        return self._csi[mount_point]

    def of(self, mount_point: str) -> VolumeLabels | None:
        kv = parse_kubelet_volume(mount_point)
        if kv is None:
            return None
        driver = None
        name = kv.name
        if kv.plugin == "csi":
            data = self._vol_data(mount_point)
            driver = data.get("driverName")
            name = data.get("specVolID") or name
        meta = self.index.pod(kv.pod_uid) if self.index is not None else None
        pv = claim = ns = None
        if meta is not None:
            ns = meta.namespace
        # An inline volume is named in the pod's spec; anything else is a PersistentVolume's name.
        # Until the API has listed the pod, which it is is unknown: no lookup (a volume named
        # like no PersistentVolume would be asked for and be "not found").
        if self.index is not None and meta is not None and name not in _inline(meta):
            ref = self.index.claim_of(name)
            if ref is not None:
                pv = name
                ns, claim = ref
        return VolumeLabels(
            kv.pod_uid,
            kv.plugin,
            kv.name,
            ns,
            meta.name if meta is not None else None,
            pv,
            claim,
            driver,
        )

    def forget(self, live: set[str]) -> None:
        for mp in [m for m in self._csi if m not in live]:
            del self._csi[mp]


def _inline(meta: PodMeta) -> set[str]:
    return set(meta.volumes) - set(meta.claims)


__all__ = ["KubeletVolume", "VolumeLabels", "VolumeResolver", "parse_kubelet_volume"]
