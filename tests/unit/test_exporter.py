"""The Prometheus exporter on synthetic reports: names, values, histogram mapping,
cardinality budget, series removal, compat series, the HTTP endpoints, and
`promtool check metrics` (Debian's prometheus package) on a real scrape."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpfnfs.cli.main import main
from bpfnfs.collect import records as R
from bpfnfs.collect.histogram import Log2Hist
from bpfnfs.collect.snapshot import (
    ClientInfo,
    ErrKey,
    FileStats,
    IoStats,
    OwnerKey,
    OwnerStats,
    RpcOpStats,
    Snapshot,
    VfsKey,
    VfsStats,
)
from bpfnfs.collect.views import Report, build_report, mount_dict
from bpfnfs.config import Config
from bpfnfs.enrich.identity import IdentityResolver, PodMeta
from bpfnfs.enrich.mountinfo import Mount
from bpfnfs.enrich.mounts import NfsMount
from bpfnfs.export.compat import CompatCollector
from bpfnfs.export.http import ExportError, MetricsServer
from bpfnfs.export.prometheus import AgentStatus, BpfnfsCollector, Probe, hist_buckets

DEV = 55
MOUNT = {"mount": "/mnt/a", "server": "10.0.0.1", "export": "/export", "nfs_version": "3"}


def _mount(mp: str = "/mnt/a", minor: int = 55) -> NfsMount:
    m = Mount(1, 0, 0, minor, "/", mp, "rw", (), "nfs", "10.0.0.1:/export", {"vers": "3", "addr": "10.0.0.1"})
    return NfsMount(m, clid=7)


def _hist(slots: dict[int, int], sum_ns: int) -> Log2Hist:
    counts = [0] * R.HIST_SLOTS
    for k, v in slots.items():
        counts[k] = v
    return Log2Hist(counts, sum_ns)


def _snap(scale: int = 1, cgroups: tuple[int, ...] = (11, 22)) -> Snapshot:
    s = Snapshot(taken=float(scale))
    s.clients[7] = ClientInfo(7, 7, 3, "nfs", True)
    read = RpcOpStats(
        ops=10 * scale, ntrans=12 * scale, timeouts=1, bytes_sent=1000, bytes_recv=65536 * scale
    )
    read.queue_ns, read.rtt_ns, read.execute_ns = 5000, 3_000_000 * scale, 4_000_000 * scale
    read.queue = _hist({0: 10 * scale}, 5000)
    read.rtt = _hist({8: 5 * scale, 11: 5 * scale}, 3_000_000 * scale)
    read.execute = _hist({8: 4 * scale, 11: 5 * scale, 31: scale}, 4_000_000 * scale)
    s.rpc[(7, 3, "READ")] = read
    s.rpc[(7, 3, "NULL")] = RpcOpStats()  # never moved: no series
    s.io[DEV] = IoStats(
        read_calls=3, read_bytes=4096 * scale, direct_read_bytes=512, server_read_bytes=65536 * scale
    )
    for i, cg in enumerate(cgroups):
        s.vfs[VfsKey(DEV, "read", 0, cg, f"app{i}")] = VfsStats(
            5 * scale, 1, 2048 * scale, 1_000_000 * scale, _hist({9: 5 * scale}, 1_000_000 * scale)
        )
        s.owners[OwnerKey(DEV, 100 + i, cg, f"app{i}")] = OwnerStats(2 * scale, 32768 * scale, 0, 0, 0, 0)
    s.files[(DEV, 1 << 40)] = FileStats(
        reads=4 * scale,
        read_bytes=4096 * scale,
        latency_ns=10,
        wire_reads=2,
        wire_read_bytes=8192,
        wire_read_ns=99,
    )
    s.files[(DEV, 5)] = FileStats(reads=1, read_bytes=1)
    s.errors[ErrKey(R.ERR_RPC, 7, 3, "LOOKUP", 0, 2)] = 3
    s.errors[ErrKey(R.ERR_XDR, 7, 3, "LOOKUP", 0, 2)] = 3
    s.errors[ErrKey(R.ERR_VFS, DEV, 0, "", 0, 5)] = 1
    s.counters = {"ringbuf_drops": 2, "file_evictions": 7, "vfs_map_full": 1}
    s.files_capacity = 1024
    return s


def _status() -> AgentStatus:
    return AgentStatus(
        "0.1.0", "btf", "1.1.2", "6.1.0", [Probe("nfs_file_read", "fexit", True), Probe("x", "kprobe", False)]
    )


def _scrape(*collectors: Any) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    reg = CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    text = generate_latest(reg).decode()
    values = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, values


def _get(values: dict[Any, float], name: str, **labels: str) -> float | None:
    if "comm" in labels and "namespace" not in labels:  # per-identity series outside pods
        fill = "_other" if labels["comm"] == "_other" else ""
        labels = {**dict.fromkeys(("namespace", "pod", "container"), fill), **labels}
    want = tuple(sorted(labels.items()))
    return values.get((name, want))


def _report(
    snap: Snapshot, paths: dict[Any, Any] | None = None, mounts: list[NfsMount] | None = None
) -> Report:
    return build_report(snap, mounts or [_mount()], paths=paths or {(DEV, 1 << 40): ("/dir/big", False)})


def test_log2_histogram_maps_to_buckets_without_loss() -> None:
    h = _hist({0: 1, 3: 2, 31: 4}, 123)
    b = hist_buckets(h)
    assert b[0] == ("2e-06", 1)
    assert b[2] == ("8e-06", 1) and b[3] == ("1.6e-05", 3)
    assert b[-2][1] == 3  # the clamped last kernel slot only counts in +Inf
    assert b[-1] == ("+Inf", 7)
    assert len(b) == R.HIST_SLOTS  # 31 finite bounds + Inf
    assert [v for _b, v in b] == sorted(v for _b, v in b)


def test_rpc_io_vfs_errors_and_self_series() -> None:
    c = BpfnfsCollector(Config(), IdentityResolver({11: "/pod-a", 22: "/pod-b"}.get).of)
    c.update(_report(_snap()), _status())
    _text, v = _scrape(c)
    read = {**MOUNT, "op": "READ"}
    assert _get(v, "bpfnfs_rpc_operations_total", **read) == 10
    assert _get(v, "bpfnfs_rpc_operations_total", **{**MOUNT, "op": "NULL"}) is None
    assert _get(v, "bpfnfs_rpc_retransmissions_total", **read) == 2
    assert _get(v, "bpfnfs_rpc_timeouts_total", **read) == 1
    assert _get(v, "bpfnfs_rpc_received_bytes_total", **read) == 65536
    assert _get(v, "bpfnfs_rpc_execute_seconds_count", **read) == 10
    assert _get(v, "bpfnfs_rpc_execute_seconds_sum", **read) == pytest.approx(0.004)
    assert _get(v, "bpfnfs_rpc_execute_seconds_bucket", **read, le="0.000512") == 4
    assert _get(v, "bpfnfs_rpc_execute_seconds_bucket", **read, le="2147.483648") == 9
    assert _get(v, "bpfnfs_rpc_execute_seconds_bucket", **read, le="+Inf") == 10
    assert _get(v, "bpfnfs_read_bytes_total", **MOUNT, io="buffered") == 4096
    assert _get(v, "bpfnfs_read_bytes_total", **MOUNT, io="direct") == 512
    assert _get(v, "bpfnfs_server_read_bytes_total", **MOUNT) == 65536
    assert _get(v, "bpfnfs_vfs_operation_duration_seconds_count", **MOUNT, op="read") == 10
    assert _get(v, "bpfnfs_rpc_errors_total", **MOUNT, op="LOOKUP", errno="ENOENT") == 3
    assert _get(v, "bpfnfs_server_errors_total", **MOUNT, op="LOOKUP", status="NFS3ERR_NOENT") == 3
    assert _get(v, "bpfnfs_vfs_errors_total", **MOUNT, op="read", errno="EIO") == 1
    assert _get(v, "bpfnfs_mount_info", **MOUNT, dev="0:55", fstype="nfs") == 1
    assert _get(v, "bpfnfs_events_lost_total", reason="ringbuf_full") == 2
    assert _get(v, "bpfnfs_map_evictions_total", map="files") == 7
    assert _get(v, "bpfnfs_map_full_total", map="vfs_stats") == 1
    assert _get(v, "bpfnfs_probe_attached", probe="x", kind="kprobe") == 0
    assert _get(v, "bpfnfs_build_info", version="0.1.0", tier="btf", libbpf="1.1.2", kernel="6.1.0") == 1


def test_identities_budget_fold_and_retire() -> None:
    paths = {11: "/pod-a", 22: "/pod-b", 33: "/pod-c"}
    c = BpfnfsCollector(Config(metrics={"max_identities": 2}), IdentityResolver(paths.get).of)
    c.update(_report(_snap(1, (11, 22))), _status())
    _t, v = _scrape(c)
    a = {**MOUNT, "comm": "app0", "cgroup": "/pod-a"}
    assert _get(v, "bpfnfs_process_operations_total", **a, op="read") == 5
    assert _get(v, "bpfnfs_process_server_read_bytes_total", **a) == 32768
    assert _get(v, "bpfnfs_process_read_bytes_total", **a) == 2048
    # A third identity exceeds the budget of two: folded into _other.
    c.update(_report(_snap(2, (11, 22, 33))), _status())
    _t, v = _scrape(c)
    other = {**MOUNT, "comm": "_other", "cgroup": "_other"}
    assert _get(v, "bpfnfs_process_operations_total", **other, op="read") == 10
    assert _get(v, "bpfnfs_identities", state="folded") == 1
    # /pod-a goes away: its series end, its slot is not given to the folded one.
    del paths[11]
    c.update(_report(_snap(3, (11, 22, 33))), _status())
    _t, v = _scrape(c)
    assert _get(v, "bpfnfs_process_operations_total", **a, op="read") is None
    assert _get(v, "bpfnfs_process_operations_total", **other, op="read") == 15  # still growing
    assert _get(v, "bpfnfs_identities", state="retired") == 1


def test_top_files_and_removed_mount() -> None:
    c = BpfnfsCollector(Config(metrics={"top_files": 1}), IdentityResolver({}.get).of)
    c.update(_report(_snap(1)), _status())
    c.update(_report(_snap(2)), _status())
    _t, v = _scrape(c)
    big = {**MOUNT, "fileid": str(1 << 40), "path": "/mnt/a/dir/big"}
    assert _get(v, "bpfnfs_file_read_bytes_total", **big) == 8192
    assert not any(k[0].startswith("bpfnfs_file_") and ("fileid", "5") in k[1] for k in v)
    # The mount is gone: none of its series remain.
    c.update(_report(_snap(3), mounts=[_mount("/mnt/b", 56)]), _status())
    _t, v = _scrape(c)
    assert not any(dict(k[1]).get("mount") == "/mnt/a" for k in v)


def test_compat_series() -> None:
    cc = CompatCollector("node1")
    cc.update(_report(_snap()))
    _t, v = _scrape(cc)
    labels = {
        "dev_id": "55",
        "file_id": str(1 << 40),
        "node_name": "node1",
        "nfs_server": "10.0.0.1:/export",
        "file_path": "dir/big",
        "mount_path": "/mnt/a",
        "nfs_pod": "",
        "nfs_container": "",
    }
    assert _get(v, "nfs_read_count", **labels) == 2
    assert _get(v, "nfs_read_size", **labels) == 8192
    assert _get(v, "nfs_read_latencies", **labels) == 99
    assert _get(v, "nfs_write_count", **labels) is None  # zero: not set, as the original


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: run `make setup`")
def test_promtool_check_metrics_is_silent() -> None:
    c = BpfnfsCollector(Config(), IdentityResolver({11: "/pod-a"}.get).of)
    c.update(_report(_snap()), _status())
    text, _v = _scrape(c)
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    # The compat series keep the original's names, which the naming lint flags; nothing else may be.
    cc = CompatCollector("node1")
    cc.update(_report(_snap()))
    text, _v = _scrape(c, cc)
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    findings = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert findings and all(ln.startswith("nfs_read_count ") for ln in findings), findings


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_endpoints_and_port_in_use() -> None:
    c = BpfnfsCollector(Config(), IdentityResolver({}.get).of)
    c.update(_report(_snap()), _status())
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    state = [(False, "not ready: waiting")]
    srv = MetricsServer("127.0.0.1", 0, reg, lambda: state[0])
    srv.start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        code, body = _http(base + "/metrics")
        assert code == 200 and "bpfnfs_rpc_operations_total" in body
        assert _http(base + "/healthz") == (200, "ok\n")
        assert _http(base + "/readyz")[0] == 503
        state[0] = (True, "ready")
        assert _http(base + "/readyz") == (200, "ready\n")
        assert _http(base + "/nope")[0] == 404
        with pytest.raises(ExportError, match="address already in use"):
            MetricsServer("127.0.0.1", srv.port, reg, lambda: state[0])
    finally:
        srv.close()


def test_cli_port_in_use_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["--listen", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}: address already in use" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_scrapes_during_churn_never_fail() -> None:
    """Mounts, identities and files come and go on every update while scrapes run in
    parallel: every scrape answers 200 with a parseable, self-consistent exposition."""
    import threading

    paths: dict[int, str] = {}
    c = BpfnfsCollector(Config(metrics={"max_identities": 3, "top_files": 2}), IdentityResolver(paths.get).of)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    srv = MetricsServer("127.0.0.1", 0, reg, lambda: (True, "ready"))
    srv.start()
    stop = threading.Event()

    def churn() -> None:
        i = 1
        while not stop.is_set():
            i += 1
            cgs = tuple(100 + (i + k) % 7 for k in range(4))
            paths.clear()
            paths.update({cg: f"/pod-{cg}" for cg in cgs[: i % 4]})
            mounts = [_mount("/mnt/a")] if i % 2 else [_mount("/mnt/a"), _mount("/mnt/b", 56)]
            c.update(_report(_snap(i, cgs), mounts=mounts), _status(), 0.01)
            time.sleep(0.002)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        for _ in range(40):
            code, body = _http(f"http://127.0.0.1:{srv.port}/metrics")
            assert code == 200
            fams = {f.name: f for f in text_string_to_metric_families(body)}
            assert "bpfnfs_build_info" in fams and "bpfnfs_rpc_operations" in fams
            for s in fams["bpfnfs_rpc_execute_seconds"].samples:
                assert s.value >= 0
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_nfs_metrics_off_keeps_only_the_agent_families() -> None:
    """features.nfs_metrics: false (and back on at SIGHUP, through Exporter.reconfigure)."""
    c = BpfnfsCollector(Config(features={"nfs_metrics": False}), IdentityResolver({}.get).of)
    st = _status()
    st.config_reloads, st.config_reload_failures = 2, 1
    c.update(_report(_snap()), st)
    text, v = _scrape(c)
    assert "bpfnfs_rpc_operations_total" not in text and "bpfnfs_process_" not in text
    assert "bpfnfs_file_" not in text and "bpfnfs_mount_info" not in text
    assert _get(v, "bpfnfs_config_reload_failures_total") == 1
    assert _get(v, "bpfnfs_config_reloads_total") == 2
    c.cfg = Config()
    c.update(_report(_snap()), st)
    _text, v = _scrape(c)
    assert _get(v, "bpfnfs_rpc_operations_total", **{**MOUNT, "op": "READ"}) == 10


def test_pod_labels_from_the_resolver_names_replace_the_uid_once() -> None:
    """namespace/pod/container on per-process series; before the API answers the pod label is
    the UID from the cgroup path, then the names (one change of series); off: no such labels."""
    uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    cid = "ab" * 32
    paths = {11: f"/kubepods/besteffort/pod{uid}/{cid}", 22: "/pod-b"}

    class Pods:
        meta: PodMeta | None = None

        def pod(self, u: str) -> PodMeta | None:
            return self.meta if u == uid else None

    pods = Pods()
    c = BpfnfsCollector(Config(), IdentityResolver(paths.get, pods).of)
    c.update(_report(_snap(1, (11, 22))), _status())
    _t, v = _scrape(c)
    base = {**MOUNT, "comm": "app0", "cgroup": paths[11]}
    assert (
        _get(v, "bpfnfs_process_operations_total", **base, namespace="", pod=uid, container="", op="read")
        == 5
    )
    pods.meta = PodMeta(uid, "shop", "cart", {cid: "app"})
    c.update(_report(_snap(2, (11, 22))), _status())
    _t, v = _scrape(c)
    named = {**base, "namespace": "shop", "pod": "cart", "container": "app"}
    assert _get(v, "bpfnfs_process_operations_total", **named, op="read") == 10
    assert (
        _get(v, "bpfnfs_process_operations_total", **base, namespace="", pod=uid, container="", op="read")
        is None
    )
    off = BpfnfsCollector(Config(metrics={"pod_labels": False}), IdentityResolver(paths.get, pods).of)
    off.update(_report(_snap(1, (11, 22))), _status())
    text, _v = _scrape(off)
    assert 'pod="' not in text and "namespace=" not in text


def test_mount_volume_info_joins_a_pod_volume() -> None:
    rep = _report(_snap())
    rep.mounts[0].volume = {
        "pod_uid": "u1",
        "plugin": "nfs",
        "volume": "pv1",
        "namespace": "shop",
        "pod": "cart",
        "persistentvolume": "pv1",
        "persistentvolumeclaim": "cart-data",
    }
    c = BpfnfsCollector(Config(), IdentityResolver({}.get).of)
    c.update(rep, _status())
    _t, v = _scrape(c)
    want = {
        **MOUNT,
        "namespace": "shop",
        "pod": "cart",
        "pod_uid": "u1",
        "volume": "pv1",
        "persistentvolume": "pv1",
        "persistentvolumeclaim": "cart-data",
    }
    assert _get(v, "bpfnfs_mount_volume_info", **want) == 1
    assert mount_dict(rep.mounts[0])["kubernetes"]["persistentvolumeclaim"] == "cart-data"
    off = BpfnfsCollector(Config(metrics={"pod_labels": False}), IdentityResolver({}.get).of)
    off.update(rep, _status())
    assert "bpfnfs_mount_volume_info" not in _scrape(off)[0]
