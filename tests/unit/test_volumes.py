"""NFS mounts that are pod volumes: kubelet's paths, CSI's vol_data.json, the claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpfnfs.enrich.hostns import HostView
from bpfnfs.enrich.identity import PodMeta
from bpfnfs.enrich.volumes import KubeletVolume, VolumeResolver, parse_kubelet_volume

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
PODS = f"/var/lib/kubelet/pods/{UID}/volumes"


@pytest.mark.parametrize(
    ("mp", "want"),
    [
        (f"{PODS}/kubernetes.io~nfs/shared", KubeletVolume(UID, "nfs", "shared")),
        (f"{PODS}/kubernetes.io~csi/pvc-0a1b/mount", KubeletVolume(UID, "csi", "pvc-0a1b")),
        (
            f"/data/kubelet/pods/{UID}/volumes/kubernetes.io~nfs/x",
            KubeletVolume(UID, "nfs", "x"),
        ),  # --root-dir
        (f"{PODS}/kubernetes.io~csi/pvc-0a1b", None),  # CSI's mount is the "mount" below it
        (f"{PODS}/kubernetes.io~nfs/shared/mount", None),
        (f"{PODS}/kubernetes.io~empty-dir/cache", None),
        ("/mnt/nfs3", None),
        (f"/var/lib/kubelet/pods/{UID}/volume-subpaths/data/app/0", None),
    ],
)
def test_parse_kubelet_volume(mp: str, want: KubeletVolume | None) -> None:
    assert parse_kubelet_volume(mp) == want


class Index:
    def __init__(self) -> None:
        self.pods = {
            UID: PodMeta(UID, "shop", "cart", volumes=("shared", "data"), claims={"data": "cart-data"})
        }
        self.pvs = {"pv-nfs-1": ("shop", "cart-data"), "pvc-0a1b": ("shop", "cart-csi")}
        self.asked: list[str] = []

    def pod(self, uid: str) -> PodMeta | None:
        return self.pods.get(uid)

    def claim_of(self, pv: str) -> tuple[str, str] | None:
        self.asked.append(pv)
        return self.pvs.get(pv)


def test_inline_volume_has_no_claim_and_asks_nothing() -> None:
    idx = Index()
    v = VolumeResolver(HostView(), idx).of(f"{PODS}/kubernetes.io~nfs/shared")
    assert v is not None
    assert v.as_dict() == {
        "pod_uid": UID,
        "plugin": "nfs",
        "volume": "shared",
        "namespace": "shop",
        "pod": "cart",
    }
    assert idx.asked == []


def test_no_lookup_before_the_pod_is_known() -> None:
    """Inline or PersistentVolume is in the pod's spec: until the API has listed the pod, the
    volume's name is not sent as a PersistentVolume's (it would be "not found")."""
    idx = Index()
    idx.pods = {}
    v = VolumeResolver(HostView(), idx).of(f"{PODS}/kubernetes.io~nfs/shared")
    assert v is not None and v.persistentvolumeclaim is None and idx.asked == []


def test_persistent_volume_gets_its_claim() -> None:
    v = VolumeResolver(HostView(), Index()).of(f"{PODS}/kubernetes.io~nfs/pv-nfs-1")
    assert v is not None and (v.persistentvolume, v.persistentvolumeclaim, v.pod) == (
        "pv-nfs-1",
        "cart-data",
        "cart",
    )


def test_csi_reads_vol_data_beside_the_mount(tmp_path: Path) -> None:
    """Through the node's view: from a container, {proc}/1/root/var/lib/kubelet/..."""
    proc = tmp_path / "proc"
    d = proc / "1" / "root" / PODS.lstrip("/") / "kubernetes.io~csi" / "pvc-0a1b"
    d.mkdir(parents=True)
    (d / "vol_data.json").write_text(
        json.dumps(
            {"driverName": "nfs.csi.k8s.io", "specVolID": "pvc-0a1b", "volumeHandle": "srv#exp##pvc-0a1b#"}
        )
    )
    v = VolumeResolver(HostView(str(proc), "1"), Index()).of(f"{PODS}/kubernetes.io~csi/pvc-0a1b/mount")
    assert v is not None
    assert (v.plugin, v.driver, v.persistentvolumeclaim) == ("csi", "nfs.csi.k8s.io", "cart-csi")


def test_without_the_api_the_uid_and_volume_remain() -> None:
    v = VolumeResolver(HostView()).of(f"{PODS}/kubernetes.io~nfs/pv-nfs-1")
    assert v is not None and v.as_dict() == {"pod_uid": UID, "plugin": "nfs", "volume": "pv-nfs-1"}
