"""The pod watch against the stand-in Kubernetes API server (lab/kubeapi.py, whose docstring
says what of the real wire protocol it speaks: no kube-apiserver can be installed here). The
client is the official kubernetes package, configured through a kubeconfig file as an
operator would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bpfnfs.enrich import k8s
from bpfnfs.enrich.identity import IdentityResolver
from bpfnfs.enrich.k8s import PodWatcher, pod_meta
from lab.kubeapi import ApiServer, kubeconfig, pod

pytest.importorskip("kubernetes")

UID_A = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UID_B = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
CID = "ab" * 32


def wait(cond: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "BACKOFF_MIN", 0.05)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_pod_meta_from_the_pod_json() -> None:
    m = pod_meta(pod(UID_A, "cart", CID, claim="cart-data"))
    assert m is not None
    assert (m.uid, m.namespace, m.name, m.containers, m.claims) == (
        UID_A,
        "shop",
        "cart",
        {CID: "app"},
        {"data": "cart-data"},
    )
    assert pod_meta({"metadata": {}}) is None


def test_list_watch_expiry_and_delete(tmp_path: Path, fast: None) -> None:
    api = ApiServer()
    api.items = [pod(UID_A, "cart")]
    logs: list[str] = []
    w = PodWatcher("node1", kubeconfig(tmp_path, api.url), log=logs.append)
    w.start()
    try:
        assert wait(lambda: w.stats.state == "synced")
        assert w.pod(UID_A) is not None and w.pod(UID_A).name == "cart"  # type: ignore[union-attr]
        path, q = api.requests[0]
        assert path == "/api/v1/pods" and q["fieldSelector"] == ["spec.nodeName=node1"]
        # Container ids appear as the containers start (MODIFIED); a new pod (ADDED).
        api.events.put({"type": "MODIFIED", "object": pod(UID_A, "cart", CID)})
        api.events.put({"type": "ADDED", "object": pod(UID_B, "queue")})
        api.events.put({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "15"}}})
        assert wait(lambda: w.pod(UID_B) is not None and w.pod(UID_A).containers == {CID: "app"})  # type: ignore[union-attr]
        watches = [q for p, q in api.requests if q.get("watch")]
        assert watches[0]["resourceVersion"] == ["10"] and watches[0]["allowWatchBookmarks"] == ["true"]
        # The watch's resourceVersion expires: a fresh list, then a new watch.
        api.items = [pod(UID_A, "cart", CID), pod(UID_B, "queue")]
        api.rv = 20
        api.events.put(
            {
                "type": "ERROR",
                "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "old"},
            }
        )
        assert wait(lambda: w.stats.expired == 1 and w.stats.lists == 2)
        assert wait(lambda: [q for p, q in api.requests if q.get("watch")][-1]["resourceVersion"] == ["20"])
        # A deleted pod keeps its names (its series outlive it).
        api.events.put({"type": "DELETED", "object": pod(UID_B, "queue")})
        assert wait(lambda: w.stats.pods == 1)
        assert w.pod(UID_B) is not None and w.pod(UID_B).name == "queue"  # type: ignore[union-attr]
        r = IdentityResolver({5: f"/kubepods/besteffort/pod{UID_A}/{CID}"}.get, w)
        i = r.of(5)
        assert (i.namespace, i.pod, i.container) == ("shop", "cart", "app")
        assert any("2 pods" in m or "1 pods" in m for m in logs)
    finally:
        w.close()
        api.close()


def test_forbidden_keeps_collecting_and_says_so_once(tmp_path: Path, fast: None) -> None:
    api = ApiServer(forbid=True)
    logs: list[str] = []
    w = PodWatcher("node1", kubeconfig(tmp_path, api.url), log=logs.append)
    w.start()
    try:
        assert wait(lambda: w.stats.errors >= 3)
        assert w.stats.state == "forbidden"
        said = [m for m in logs if "forbids" in m]
        assert len(said) == 1 and "403" in said[0]
        assert w.pod(UID_A) is None
        i = IdentityResolver({5: f"/kubepods/pod{UID_A}/{CID}"}.get, w).of(5)
        assert i.pod_label == UID_A and i.container_id == CID  # what the cgroup path gives
    finally:
        w.close()
        api.close()


def test_unreachable_api(tmp_path: Path, fast: None) -> None:
    logs: list[str] = []
    w = PodWatcher("node1", kubeconfig(tmp_path, "http://127.0.0.1:9"), log=logs.append)
    w.start()
    try:
        assert wait(lambda: w.stats.errors >= 2)
        assert w.stats.state == "unreachable"
        assert len([m for m in logs if "unreachable" in m]) == 1
    finally:
        w.close()


def test_persistent_volume_claims_looked_up_off_the_caller(tmp_path: Path, fast: None) -> None:
    api = ApiServer()
    logs: list[str] = []
    w = PodWatcher("node1", kubeconfig(tmp_path, api.url), log=logs.append)
    w.start()
    try:
        assert w.claim_of("pv-nfs-1") is None  # asked, not waited for
        assert wait(lambda: w.claim_of("pv-nfs-1") == ("shop", "cart-data"))
        assert w.claim_of("pv-gone") is None
        assert wait(lambda: any(p == "/api/v1/persistentvolumes/pv-gone" for p, _q in api.requests))
        assert w.claim_of("pv-gone") is None  # a 404, cached as no claim
        assert w.stats.errors == 0 and not [m for m in logs if "PersistentVolume" in m], logs
    finally:
        w.close()
        api.close()


def test_bad_kubeconfig_said_once(tmp_path: Path, fast: None) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    logs: list[str] = []
    w = PodWatcher("node1", str(bad), log=logs.append)
    w.start()
    try:
        assert wait(lambda: w.stats.errors >= 2)
        assert w.stats.state == "misconfigured"
        said = [m for m in logs if "unusable" in m]
        assert len(said) == 1 and str(bad) in said[0], logs
    finally:
        w.close()
