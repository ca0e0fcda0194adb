"""The Prometheus exporter as the CLI uses it: one registry, the bpfnfs collector,
the compat collector when asked for, process metrics, and the HTTP endpoint."""

from __future__ import annotations

import dataclasses
import platform
import time
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector

from bpfnfs import __version__
from bpfnfs.agent import Agent
from bpfnfs.collect.views import Report
from bpfnfs.config import Config
from bpfnfs.export.compat import CompatCollector
from bpfnfs.export.http import MetricsServer
from bpfnfs.export.prometheus import AgentStatus, BpfnfsCollector, Probe
from bpfnfs.loader.libbpf import libbpf

# libbpf section prefix -> probe kind label
_KINDS = {
    "fentry": "fentry",
    "fexit": "fexit",
    "kprobe": "kprobe",
    "kretprobe": "kretprobe",
    "tracepoint": "tracepoint",
    "tp": "tracepoint",
    "raw_tp": "raw_tp",
    "raw_tracepoint": "raw_tp",
    "tp_btf": "tp_btf",
}


def probe_of(section: str) -> tuple[str, str]:
    """("sunrpc:rpc_request", "tracepoint") from "tracepoint/sunrpc/rpc_request"."""
    kind, _, target = section.partition("/")
    return target.replace("/", ":"), _KINDS.get(kind, kind)


def agent_probes(agent: Agent) -> list[Probe]:
    out: list[Probe] = []
    sections: dict[str, str] = {}
    for obj in agent.objs:
        sections.update({name: p.section for name, p in obj.programs.items()})
        for lk in obj.links:
            out.append(Probe(*probe_of(lk.section), True))
    for prog in agent.probe_failures:
        if prog in sections:
            out.append(Probe(*probe_of(sections[prog]), False))
    return out


class ReloadCounts(Protocol):
    reloads: int
    failures: int


def agent_status(
    agent: Agent,
    collection_seconds: float = 0.0,
    collected: bool = False,
    reloads: ReloadCounts | None = None,
) -> AgentStatus:
    try:
        lib = libbpf().version_string
    except Exception:
        lib = ""
    return AgentStatus(
        version=__version__,
        tier=agent.tier or "",
        libbpf=lib,
        kernel=platform.release(),
        probes=agent_probes(agent),
        collection_seconds=collection_seconds,
        collected_at=time.time() if collected else 0.0,
        mountinfo_parse_errors=agent.mounts.parse_errors,
        counting=(c.method, c.preemption.model) if (c := agent.counting) is not None else None,
        config_reloads=reloads.reloads if reloads is not None else 0,
        dns=agent.dns.stats() if agent.dns is not None else None,
        kubernetes=dataclasses.asdict(agent.pods.stats) if agent.pods is not None else None,
        unparsed_cgroups=agent.identity.unparsed,
        config_reload_failures=reloads.failures if reloads is not None else 0,
    )


class Exporter:
    def __init__(self, cfg: Config, agent: Agent, reloads: ReloadCounts | None = None) -> None:
        addr = cfg.metrics.listen_address
        assert addr is not None, "Exporter needs metrics.listen"
        self.agent = agent
        self.reloads = reloads
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.collector = BpfnfsCollector(cfg, agent.identity.of)
        self.registry.register(self.collector)
        self.compat: CompatCollector | None = None
        if cfg.metrics.compat:
            self.compat = CompatCollector(cfg.kubernetes.node_name)  # NODE_NAME, as the original
            self.registry.register(self.compat)
        self._ready = (False, "not ready: starting")
        self.server = MetricsServer(addr[0], addr[1], self.registry, lambda: self._ready)
        self.collector.update(None, agent_status(agent))

    def start(self) -> None:
        self.server.start()

    def update(self, rep: Report | None, seconds: float, collection_seconds: float) -> None:
        st = agent_status(self.agent, collection_seconds, collected=rep is not None, reloads=self.reloads)
        self.collector.update(rep, st, seconds)
        if self.compat is not None:
            self.compat.update(rep)
        if rep is not None:
            self._ready = (True, f"ready: tier {self.agent.tier}, {len(rep.mounts)} NFS mounts")
        elif not self.agent.objs:
            self._ready = (False, "not ready: waiting for the NFS client modules (sunrpc, nfs)")

    def reconfigure(self, cfg: Config) -> None:
        """SIGHUP: budgets (top files, identities) and features.nfs_metrics apply from the next update."""
        self.collector.cfg = cfg

    def close(self) -> None:
        self.server.close()
