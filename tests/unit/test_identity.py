"""cgroup path -> pod and container, for every driver and runtime the kubelet uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfnfs.enrich.identity import Identity, IdentityResolver, PodMeta, Workload, parse_workload

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UID_ = UID.replace("-", "_")
CID = "4f" * 32


@pytest.mark.parametrize(
    ("path", "want"),
    [
        # systemd driver
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
            Workload(UID, "burstable", CID, "containerd"),
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
            Workload(UID, "besteffort", CID, "cri-o"),
        ),
        (
            f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope",
            Workload(UID, "guaranteed", CID, "docker"),
        ),
        (f"/kubepods.slice/kubepods-pod{UID_}.slice", Workload(UID, "guaranteed")),
        # CRI-O's monitor is not the container
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope", Workload(UID, "guaranteed")),
        # a kubelet with its own --cgroup-root (kind)
        (
            f"/system.slice/docker-{'ab' * 32}.scope/kubelet.slice/kubelet-kubepods.slice/kubepods.slice/"
            f"kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
            Workload(UID, "burstable", CID, "containerd"),
        ),
        # cgroupfs driver
        (f"/kubepods/burstable/pod{UID}/{CID}", Workload(UID, "burstable", CID, None)),
        (f"/kubepods/besteffort/pod{UID}/crio-{CID}", Workload(UID, "besteffort", CID, "cri-o")),
        (f"/kubepods/pod{UID}/{CID}", Workload(UID, "guaranteed", CID, None)),
        # not Kubernetes
        (f"/system.slice/docker-{CID}.scope", Workload(None, None, CID, "docker")),
        (f"/machine.slice/libpod-{CID}.scope", Workload(None, None, CID, "podman")),
        ("/user.slice/user-0.slice/session-1.scope", Workload()),
        (f"/system.slice/{CID}", Workload()),  # a bare id outside kubepods: not claimed
        ("/", Workload()),
        (None, Workload()),
    ],
)
def test_parse_workload(path: str | None, want: Workload) -> None:
    assert parse_workload(path) == want


@given(st.text(alphabet="/-_.:abcdefpodkube0123456789slicescope", max_size=200))
def test_parse_workload_never_raises(path: str) -> None:
    w = parse_workload(path)
    assert w.pod_uid is None or len(w.pod_uid) == 36
    assert w.container_id is None or len(w.container_id) == 64


class Pods:
    def __init__(self) -> None:
        self.meta = {UID: PodMeta(UID, "shop", "cart-7d9f", {CID: "app"})}

    def pod(self, uid: str) -> PodMeta | None:
        return self.meta.get(uid)


def test_resolver_names_from_the_pod_index_and_keeps_removed() -> None:
    paths = {11: f"/kubepods/burstable/pod{UID}/{CID}", 12: "/system.slice/cron.service"}
    r = IdentityResolver(paths.get, Pods())
    i = r.of(11)
    assert (i.namespace, i.pod, i.container, i.pod_uid, i.container_id) == (
        "shop",
        "cart-7d9f",
        "app",
        UID,
        CID,
    )
    assert i.pod_label == "shop/cart-7d9f" and not i.removed
    assert r.of(12) == Identity(12, "/system.slice/cron.service")
    del paths[11]  # the pod went away: its counters keep their labels
    gone = r.of(11)
    assert gone.removed and gone.pod == "cart-7d9f" and gone.cgroup == paths.get(11, gone.cgroup)
    assert not r.alive(11) and r.alive(12) and r.alive(0)
    r.forget(keep={12})
    assert r.of(11) == Identity(11, None, removed=True)
    assert r.of(11).cgroup_label == "cgroup 11"
    assert r.of(0).cgroup_label == "" and r.of(0).pod_label == ""


def test_resolver_without_api_labels_with_the_uid() -> None:
    r = IdentityResolver({5: f"/kubepods/pod{UID}/{CID}"}.get)
    i = r.of(5)
    assert i.pod_label == UID and i.pod is None and i.container_id == CID
    assert i.as_dict() == {
        "cgroup_id": 5,
        "cgroup": f"/kubepods/pod{UID}/{CID}",
        "pod_uid": UID,
        "container_id": CID,
    }


def test_unparsable_kubepods_path_is_kept_raw_and_counted() -> None:
    paths = {7: "/kubepods/burstable/pod-not-a-uid/abc", 8: "/kubepods/burstable", 9: "/system.slice/x"}
    r = IdentityResolver(paths.get)
    assert r.of(7).cgroup_label == "/kubepods/burstable/pod-not-a-uid/abc" and r.of(7).pod_uid is None
    r.of(7)
    r.of(8)
    r.of(9)
    assert r.unparsed == 1  # once per cgroup; kubepods' own levels and other cgroups are not counted
