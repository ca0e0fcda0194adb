"""What the running kernel and process offer: privileges, BTF, tracefs, modules.

Each failed requirement is one sentence naming the cause and the fix."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bpfnfs.probes.tracefs import tracefs_root

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

BTF_DIR = Path("/sys/kernel/btf")


class RequirementError(Exception):
    """The host cannot run bpfnfs as asked; str() is the one-line reason and fix."""


def effective_caps(status: str | None = None) -> int:
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges(caps: int | None = None) -> None:
    caps = effective_caps() if caps is None else caps

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return
    raise RequirementError(
        "bpfnfs needs root or the capabilities CAP_BPF and CAP_PERFMON (plus CAP_SYS_RESOURCE on kernels "
        "before 5.11) to load BPF programs; run it with sudo"
    )


def check_vmlinux_btf(btf_dir: Path = BTF_DIR) -> None:
    if not (btf_dir / "vmlinux").is_file():
        raise RequirementError(
            f"the kernel exposes no BTF ({btf_dir}/vmlinux is missing): bpfnfs needs a kernel built with "
            "CONFIG_DEBUG_INFO_BTF=y (Debian 11+, Ubuntu 20.10+, RHEL 8.2+ have it)"
        )


def check_tracefs() -> Path:
    root = tracefs_root()
    if root is None:
        raise RequirementError(
            "tracefs is not mounted (neither /sys/kernel/tracing nor /sys/kernel/debug/tracing has events/); "
            "mount it with: mount -t tracefs nodev /sys/kernel/tracing"
        )
    return root


@dataclass(frozen=True)
class Modules:
    """Which NFS client pieces are live, judged by their tracepoints and BTF."""

    sunrpc: bool
    nfs: bool
    sunrpc_btf: bool
    nfs_btf: bool
    nfsv4: bool = False

    @property
    def ready(self) -> bool:
        return self.sunrpc and self.nfs

    @property
    def loaded(self) -> frozenset[str]:
        have = (("sunrpc", self.sunrpc), ("nfs", self.nfs), ("nfsv4", self.nfsv4))
        return frozenset(n for n, ok in have if ok)

    @property
    def have_module_btf(self) -> bool:
        return self.sunrpc_btf and self.nfs_btf


def _module_btf(name: str, btf_dir: Path) -> bool:
    if (btf_dir / name).is_file():
        return True
    # Built into the kernel: its types are in vmlinux BTF, no split file.
    return Path(f"/sys/module/{name}").is_dir() and not Path(f"/sys/module/{name}/initstate").exists()


def modules(tracefs: Path, btf_dir: Path = BTF_DIR) -> Modules:
    ev = tracefs / "events"
    return Modules(
        sunrpc=(ev / "sunrpc" / "rpc_stats_latency").is_dir(),
        nfs=(ev / "nfs" / "nfs_readpage_done").is_dir(),
        sunrpc_btf=_module_btf("sunrpc", btf_dir),
        nfs_btf=_module_btf("nfs", btf_dir),
        nfsv4=(ev / "nfs4" / "nfs4_xdr_status").is_dir(),
    )


def o_direct() -> int:
    return getattr(os, "O_DIRECT", 0o40000)
