"""features.dns in the views: server_name/server_address on MountReport (enrich.dns.with_dns),
in the JSON mount dict, the table's mount header and the bpfnfs_mount_server_info series."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpfnfs.cli.table import format_mount
from bpfnfs.collect.snapshot import ClientInfo, IoStats, RpcOpStats, Snapshot
from bpfnfs.collect.views import Report, build_report, diff_report, mount_dict
from bpfnfs.config import Config
from bpfnfs.enrich.dns import DnsCache, with_dns
from bpfnfs.enrich.identity import IdentityResolver
from bpfnfs.enrich.mountinfo import Mount
from bpfnfs.enrich.mounts import NfsMount
from bpfnfs.export.prometheus import AgentStatus, BpfnfsCollector

DEV = 55
MOUNT = {"mount": "/mnt/a", "server": "10.0.0.1", "export": "/export", "nfs_version": "3"}


def _report(server_opt: str = "10.0.0.1", scale: int = 1) -> Report:
    m = Mount(1, 0, 0, DEV, "/", "/mnt/a", "rw", (), "nfs", f"{server_opt}:/export", {"vers": "3"})
    s = Snapshot(taken=float(scale))
    s.clients[7] = ClientInfo(7, 7, 3, "nfs", True)
    s.rpc[(7, 3, "READ")] = RpcOpStats(ops=10 * scale, ntrans=10 * scale)
    s.io[DEV] = IoStats(read_bytes=4096 * scale)
    return build_report(s, [NfsMount(m, clid=7)])


def _cache() -> DnsCache:
    return DnsCache(
        resolve_addr={"10.0.0.1": "nfs-server"}.get,
        resolve_name={"nfs-server": "10.0.0.1"}.get,
    )


def _resolved(rep: Report, cache: DnsCache) -> Report:
    with_dns(rep, cache)  # first sight: queues the resolution
    assert cache.wait_idle(5.0)
    return with_dns(rep, cache)


def _scrape(c: BpfnfsCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    values = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def test_with_dns_fills_both_halves_for_an_address_and_a_name() -> None:
    cache = _cache()
    rep = _report()
    first = with_dns(rep, cache)
    assert (first.mounts[0].server_name, first.mounts[0].server_address) == (None, "10.0.0.1")
    m = _resolved(rep, cache).mounts[0]
    assert (m.server_name, m.server_address) == ("nfs-server", "10.0.0.1")
    m = _resolved(_report("nfs-server"), cache).mounts[0]
    assert (m.server, m.server_name, m.server_address) == ("nfs-server", "nfs-server", "10.0.0.1")
    assert with_dns(rep, None) is rep
    cache.close()


def test_names_survive_the_interval_diff() -> None:
    cache = _cache()
    prev = _resolved(_report(scale=1), cache)
    cur = with_dns(_report(scale=2), cache)
    (d,) = diff_report(cur, prev)
    assert (d.server_name, d.server_address, d.ops["READ"].ops) == ("nfs-server", "10.0.0.1", 10)
    cache.close()


def test_mount_dict_has_the_names_only_when_known() -> None:
    plain = mount_dict(_report().mounts[0])
    assert "server_name" not in plain and "server_address" not in plain
    cache = _cache()
    d = mount_dict(_resolved(_report(), cache).mounts[0])
    assert (d["server"], d["server_name"], d["server_address"]) == ("10.0.0.1", "nfs-server", "10.0.0.1")
    cache.close()


def test_table_header_shows_name_and_address() -> None:
    assert format_mount(_report().mounts[0], 1.0, "btf")[0].startswith("10.0.0.1:/export mounted on /mnt/a ")
    cache = _cache()
    m = _resolved(_report(), cache).mounts[0]
    header = format_mount(m, 1.0, "btf")[0]
    assert header == "nfs-server (10.0.0.1):/export mounted on /mnt/a (nfs v3, dev 0:55):"
    cache.close()


def test_server_info_series_and_stable_labels_elsewhere() -> None:
    status = AgentStatus("0.1.0", "btf", "1.1.2", "6.1.0")
    c = BpfnfsCollector(Config(), IdentityResolver({}.get).of)
    cache = _cache()
    rep = with_dns(_report(), cache)
    c.update(rep, status)
    before = _scrape(c)
    assert not any(k[0] == "bpfnfs_mount_server_info" for k in before)  # no name yet: no series
    c.update(_resolved(_report(), cache), status)
    after = _scrape(c)
    info = {**MOUNT, "server_name": "nfs-server", "server_address": "10.0.0.1"}
    assert after[("bpfnfs_mount_server_info", tuple(sorted(info.items())))] == 1
    # Every other series keeps its label set: the late answer added one series, changed none.
    rest: Any = {k for k in after if k[0] != "bpfnfs_mount_server_info"}
    assert {k for k in before if k[0].startswith("bpfnfs_rpc_")} == {
        k for k in rest if k[0].startswith("bpfnfs_rpc_")
    }
    assert ("bpfnfs_mount_info", tuple(sorted({**MOUNT, "dev": "0:55", "fstype": "nfs"}.items()))) in rest
    cache.close()


def test_mounted_by_name_keeps_that_name_and_the_kernels_address() -> None:
    """A mount of nas1:/export (addr=10.0.0.1): the name as mounted and addr= need no DNS."""

    def boom(q: str) -> str:
        raise AssertionError(f"no lookup expected, got {q}")

    m = Mount(1, 0, 0, DEV, "/", "/mnt/a", "rw", (), "nfs", "nas1.example:/export", {"addr": "10.0.0.1"})
    rep = build_report(Snapshot(taken=1.0), [NfsMount(m, clid=7)])
    cache = DnsCache(resolve_name=boom, resolve_addr=boom)
    out = with_dns(rep, cache).mounts[0]
    assert (out.server, out.server_name, out.server_address) == ("10.0.0.1", "nas1.example", "10.0.0.1")
    cache.close()
