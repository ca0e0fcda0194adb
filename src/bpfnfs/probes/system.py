"""What the running kernel and process offer: privileges, BTF, tracefs, modules.

Each failed requirement is one sentence naming the cause and the fix."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from bpfnfs.probes.btf import SYSFS_BTF, BtfSource, base_mismatch, file_problem
from bpfnfs.probes.tracefs import tracefs_root

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

BTF_DIR = SYSFS_BTF


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


def _source(btf: BtfSource | Path | None) -> BtfSource:
    """A BtfSource; a bare Path is a directory standing for /sys/kernel/btf."""
    if isinstance(btf, Path):
        return BtfSource(module_dir=btf, sysfs=btf)
    return btf if btf is not None else BtfSource()


def check_vmlinux_btf(btf: BtfSource | Path | None = None) -> None:
    """vmlinux BTF for CO-RE: btf.kernel if set (readable, BTF, and fitting the module
    BTF of btf.model_dir), else the kernel's own."""
    src = _source(btf)
    if src.module_dir != src.sysfs and not src.module_dir.is_dir():
        raise RequirementError(
            f"btf.model_dir {src.module_dir} is not a directory; set it to where module BTF is"
        )
    if src.kernel is not None:
        problem = file_problem(src.kernel)
        if problem is not None:
            raise RequirementError(
                f"btf.kernel {src.kernel}: {problem}; it must be a vmlinux BTF file for this kernel "
                "(pahole --btf_encode_detached vmlinux.btf vmlinux, or BTFHub: "
                "https://github.com/aquasecurity/btfhub-archive)"
            )
        mismatch = base_mismatch(src)
        if mismatch is not None:
            raise RequirementError(mismatch)
        return
    if not (src.sysfs / "vmlinux").is_file():
        raise RequirementError(
            f"the kernel exposes no BTF ({src.sysfs}/vmlinux is missing) and btf.kernel is not set: "
            "bpfnfs needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian 11+, Ubuntu 20.10+, RHEL 8.2+ "
            "have it), or a vmlinux BTF file for this kernel named by btf.kernel in the config file: make "
            "one from the kernel's debug vmlinux with `pahole --btf_encode_detached vmlinux.btf vmlinux`, "
            "or download it from BTFHub (https://github.com/aquasecurity/btfhub-archive)"
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
    sunrpc_btf: bool  # module BTF in btf.model_dir (default: the kernel's own)
    nfs_btf: bool
    nfsv4: bool = False
    # Why tp_btf and fentry/fexit cannot attach here (None: they can): libbpf finds their
    # targets only in the kernel's own BTF, never in btf.kernel or btf.model_dir.
    attach_btf_missing: str | None = None

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


def attach_btf_missing(btf: BtfSource | Path | None = None, caps: int | None = None) -> str | None:
    """Why the kernel's own BTF cannot serve tp_btf and fentry/fexit attach targets
    (None: it can). libbpf resolves them in the kernel's vmlinux BTF, found at
    /sys/kernel/btf/vmlinux, and in the kernel's module BTF; btf_custom_path is for
    CO-RE only. Module BTF from elsewhere (btf.model_dir) is not the kernel's. libbpf
    reaches the kernel's module BTF objects through BPF_BTF_GET_NEXT_ID and
    BPF_BTF_GET_FD_BY_ID, which the kernel allows only with CAP_SYS_ADMIN (a container
    with CAP_BPF and CAP_PERFMON alone gets EPERM there)."""
    src = _source(btf)
    if not (src.sysfs / "vmlinux").is_file():
        return f"the kernel exposes no BTF of its own ({src.sysfs}/vmlinux is missing)"
    caps = effective_caps() if caps is None else caps
    if not caps >> CAP_SYS_ADMIN & 1:
        return (
            "the kernel hands its module BTF (sunrpc, nfs) only to CAP_SYS_ADMIN (BPF_BTF_GET_NEXT_ID), "
            "which this process does not have"
        )
    if src.module_dir != src.sysfs:
        missing = [m for m in ("sunrpc", "nfs") if not _module_btf(m, src.sysfs)]
        if missing:
            return f"the kernel exposes no module BTF of its own for {' and '.join(missing)} in {src.sysfs}"
    return None


def modules(tracefs: Path, btf: BtfSource | Path | None = None) -> Modules:
    """Which NFS client modules are live (tracefs), whether their BTF is in the source's
    module_dir, and whether the kernel's own BTF can attach tracing programs."""
    src = _source(btf)
    ev = tracefs / "events"
    return Modules(
        sunrpc=(ev / "sunrpc" / "rpc_stats_latency").is_dir(),
        nfs=(ev / "nfs" / "nfs_readpage_done").is_dir(),
        sunrpc_btf=_module_btf("sunrpc", src.module_dir),
        nfs_btf=_module_btf("nfs", src.module_dir),
        nfsv4=(ev / "nfs4" / "nfs4_xdr_status").is_dir(),
        attach_btf_missing=attach_btf_missing(src),
    )


def o_direct() -> int:
    return getattr(os, "O_DIRECT", 0o40000)


# ---- preemption model -------------------------------------------------------------------------

PREEMPT_DEBUGFS = Path("/sys/kernel/debug/sched/preempt")
_PREEMPTIBLE = ("full", "lazy", "rt")


@dataclass(frozen=True)
class Preemption:
    """How the running kernel preempts kernel code, and where that was read.

    model: none | voluntary | full | lazy | rt, or "dynamic" when the kernel can
    switch at run time and nothing said which model is on (taken as preemptible:
    the safe side)."""

    model: str
    source: str

    @property
    def preemptible(self) -> bool:
        return self.model in (*_PREEMPTIBLE, "dynamic")

    def describe(self) -> str:
        shown = {"lazy": "full (lazy)", "rt": "full (PREEMPT_RT)", "dynamic": "dynamic (unknown)"}
        return f"preemption {shown.get(self.model, self.model)} ({self.source})"


def _config_model(text: str) -> str | None:
    """Default model from a kernel .config (the Kconfig choice)."""
    for opt, model in (
        ("CONFIG_PREEMPT_RT=y", "rt"),
        ("CONFIG_PREEMPT_LAZY=y", "lazy"),
        ("CONFIG_PREEMPT=y", "full"),
        ("CONFIG_PREEMPT_VOLUNTARY=y", "voluntary"),
        ("CONFIG_PREEMPT_NONE=y", "none"),
    ):
        if opt in text.splitlines():
            return model
    return None


def preemption(
    debugfs: Path = PREEMPT_DEBUGFS,
    cmdline: str | None = None,
    version: str | None = None,
    config: str | None = None,
) -> Preemption:
    """The kernel's preemption model: debugfs (which shows the current one on
    PREEMPT_DYNAMIC kernels), else the preempt= boot option, else uname -v and the
    kernel config's default."""
    try:
        text = debugfs.read_text()
    except OSError:
        text = ""
    # "none (voluntary) full lazy": the current model is in parentheses.
    for word in text.split():
        if word.startswith("(") and word.endswith(")"):
            return Preemption(word.strip("()"), str(debugfs))
    version = os.uname().version if version is None else version
    if "PREEMPT_RT" in version:
        return Preemption("rt", "uname -v")
    dynamic = "PREEMPT_DYNAMIC" in version
    if dynamic:
        if cmdline is None:
            try:
                cmdline = Path("/proc/cmdline").read_text()
            except OSError:
                cmdline = ""
        for arg in cmdline.split():
            if arg.startswith("preempt=") and arg[8:] in ("none", "voluntary", "full", "lazy"):
                return Preemption(arg[8:], "kernel command line")
        if config is None:
            config = _read_config()
        model = _config_model(config or "")
        if model is not None:
            return Preemption(model, "kernel config default")
        return Preemption("dynamic", "uname -v: PREEMPT_DYNAMIC")
    if " PREEMPT " in f" {version} ":
        return Preemption("full", "uname -v")
    if config is None:
        config = _read_config()
    model = _config_model(config or "")
    if model is not None:
        return Preemption(model, "kernel config")
    # No PREEMPT in the version string: built without preemption of kernel code.
    return Preemption("voluntary" if version else "dynamic", "uname -v")


def _read_config() -> str | None:
    release = os.uname().release
    for path in (Path(f"/boot/config-{release}"), Path(f"/lib/modules/{release}/config")):
        try:
            return path.read_text()
        except OSError:
            continue
    try:
        return gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except (OSError, EOFError):
        return None
