"""Hooks by tier: which programs of bpfnfs.bpf.o run on this kernel, and why.

  btf      module BTF for sunrpc and nfs (5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES):
           tp_btf/rpc_stats_latency reads the rpc_task itself (exact ns, every
           mountstats per-op field), fentry/fexit on the NFS file operations.
  tracefs  no module BTF (Debian 11's 5.10): classic tracepoints read at offsets
           from tracefs `format` files, raw_tp for nanosecond times (and the
           rpc_task's retransmissions, timeouts and bytes where vmlinux BTF
           describes struct rpc_task, as 5.10's does), kprobes on the NFS file
           operations.

Both tiers run the same classic tracepoints for the mount probe (sunrpc:rpc_request),
read ownership (nfs:nfs_initiate_read), COMMITs (nfs:nfs_commit_done) and server
statuses (nfs:nfs_xdr_status, nfs4:nfs4_xdr_status), and the same syscall-side
accounting behind fentry/fexit (btf) or kprobes (tracefs) on the NFS file and
inode operations (VFS_FUNCTIONS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bpfnfs.probes.tracefs import EventFormat, FormatError, read_format

# Kernel functions of the syscall side: (function, module, argument count in
# the btf tier's prototype, i.e. 5.12+ where idmap/user_namespace comes first).
VFS_FUNCTIONS: tuple[tuple[str, str, int], ...] = (
    ("nfs_file_read", "nfs", 2),
    ("nfs_file_write", "nfs", 2),
    ("nfs_file_open", "nfs", 2),
    ("nfs4_file_open", "nfsv4", 2),
    ("nfs_atomic_open", "nfs", 5),  # NFSv4: OPEN with the lookup; nfs4_file_open only on cached dentries
    ("nfs_file_flush", "nfs", 2),
    ("nfs4_file_flush", "nfsv4", 2),
    ("nfs_file_fsync", "nfs", 4),
    ("nfs_getattr", "nfs", 5),
    ("nfs_setattr", "nfs", 3),
    ("nfs_lookup", "nfs", 3),
    ("nfs_readdir", "nfs", 2),
    ("nfs_permission", "nfs", 3),
    ("nfs_vm_page_mkwrite", "nfs", 1),
)

# Program -> the module whose arrival it waits for.
BTF_PROGRAMS: dict[str, str] = {
    "btf_rpc_stats_latency": "sunrpc",
    "btf_nfs_readpage_done": "nfs",
    "btf_nfs_writeback_done": "nfs",
}
TRACEFS_PROGRAMS: dict[str, str] = {
    "raw_rpc_stats_latency": "sunrpc",
    "tp_rpc_stats_latency": "sunrpc",
    "tp_rpc_task_end": "sunrpc",
    "tp_nfs_readpage_done": "nfs",
    "tp_nfs_writeback_done": "nfs",
}
COMMON_PROGRAMS: dict[str, str] = {
    "tp_rpc_request": "sunrpc",
    "tp_nfs_initiate_read": "nfs",
    "tp_nfs_initiate_write": "nfs",
    "tp_nfs_commit_done": "nfs",
    "tp_nfs_xdr_status": "nfs",
    "tp_nfs4_xdr_status": "nfsv4",
}
for _fn, _mod, _n in VFS_FUNCTIONS:
    BTF_PROGRAMS[f"fe_{_fn}"] = _mod
    BTF_PROGRAMS[f"fx_{_fn}"] = _mod
    TRACEFS_PROGRAMS[f"kp_{_fn}"] = _mod
    TRACEFS_PROGRAMS[f"krp_{_fn}"] = _mod

TIERS = ("btf", "tracefs")

# Fields the programs read: (config name, event, field names in kernel order of
# preference, expected size). 5.10 calls nfs_*_done's status `status`, 6.1 `error`.
_SCALAR = 4
_LONG = 8
_LOC = 4
TRACEFS_FIELDS: tuple[tuple[str, str, str, tuple[str, ...], int], ...] = (
    ("sl_task_id", "sunrpc", "rpc_stats_latency", ("task_id",), _SCALAR),
    ("sl_client_id", "sunrpc", "rpc_stats_latency", ("client_id",), _SCALAR),
    ("sl_xid", "sunrpc", "rpc_stats_latency", ("xid",), _SCALAR),
    ("sl_version", "sunrpc", "rpc_stats_latency", ("version",), _SCALAR),
    ("sl_progname", "sunrpc", "rpc_stats_latency", ("progname",), _LOC),
    ("sl_procname", "sunrpc", "rpc_stats_latency", ("procname",), _LOC),
    ("sl_backlog", "sunrpc", "rpc_stats_latency", ("backlog",), _LONG),
    ("sl_rtt", "sunrpc", "rpc_stats_latency", ("rtt",), _LONG),
    ("sl_execute", "sunrpc", "rpc_stats_latency", ("execute",), _LONG),
    ("te_task_id", "sunrpc", "rpc_task_end", ("task_id",), _SCALAR),
    ("te_client_id", "sunrpc", "rpc_task_end", ("client_id",), _SCALAR),
    ("te_status", "sunrpc", "rpc_task_end", ("status",), _SCALAR),
    ("rd_dev", "nfs", "nfs_readpage_done", ("dev",), _SCALAR),
    ("rd_res_count", "nfs", "nfs_readpage_done", ("res_count",), _SCALAR),
    ("rd_fileid", "nfs", "nfs_readpage_done", ("fileid",), _LONG),
    ("rd_offset", "nfs", "nfs_readpage_done", ("offset",), _LONG),
    ("wb_dev", "nfs", "nfs_writeback_done", ("dev",), _SCALAR),
    ("wb_res_count", "nfs", "nfs_writeback_done", ("res_count",), _SCALAR),
    ("wb_fileid", "nfs", "nfs_writeback_done", ("fileid",), _LONG),
    ("wb_offset", "nfs", "nfs_writeback_done", ("offset",), _LONG),
)
COMMON_FIELDS: tuple[tuple[str, str, str, tuple[str, ...], int], ...] = (
    ("rq_task_id", "sunrpc", "rpc_request", ("task_id",), _SCALAR),
    ("rq_client_id", "sunrpc", "rpc_request", ("client_id",), _SCALAR),
    ("rq_version", "sunrpc", "rpc_request", ("version",), _SCALAR),
    ("rq_procname", "sunrpc", "rpc_request", ("procname",), _LOC),
    ("ir_dev", "nfs", "nfs_initiate_read", ("dev",), _SCALAR),
    ("ir_fileid", "nfs", "nfs_initiate_read", ("fileid",), _LONG),
    ("ir_offset", "nfs", "nfs_initiate_read", ("offset",), _LONG),
    ("cd_dev", "nfs", "nfs_commit_done", ("dev",), _SCALAR),
    ("cd_fileid", "nfs", "nfs_commit_done", ("fileid",), _LONG),
    ("iw_dev", "nfs", "nfs_initiate_write", ("dev",), _SCALAR),
    ("iw_fileid", "nfs", "nfs_initiate_write", ("fileid",), _LONG),
    ("iw_offset", "nfs", "nfs_initiate_write", ("offset",), _LONG),
    ("xs_client_id", "nfs", "nfs_xdr_status", ("client_id",), _SCALAR),
    ("xs_version", "nfs", "nfs_xdr_status", ("version",), _SCALAR),
    ("xs_error", "nfs", "nfs_xdr_status", ("error",), _LONG),
    ("xs_procedure", "nfs", "nfs_xdr_status", ("procedure",), _LOC),
)
# Only once the nfsv4 module is loaded (its tracepoints come with it).
NFSV4_FIELDS: tuple[tuple[str, str, str, tuple[str, ...], int], ...] = (
    ("x4_client_id", "nfs4", "nfs4_xdr_status", ("client_id",), _SCALAR),
    ("x4_op", "nfs4", "nfs4_xdr_status", ("op",), _SCALAR),
    ("x4_error", "nfs4", "nfs4_xdr_status", ("error",), _LONG),
)


class TierError(Exception):
    """The kernel's tracepoints do not look like any kernel bpfnfs knows."""


@dataclass(frozen=True)
class TierPlan:
    tier: str
    reason: str
    programs: tuple[str, ...]  # to load now
    offsets: dict[str, int]
    deferred: dict[str, tuple[str, ...]] = field(default_factory=dict)  # module -> programs waiting for it

    def describe(self) -> str:
        return f"tier {self.tier}: {self.reason}"


def _offsets(
    specs: tuple[tuple[str, str, str, tuple[str, ...], int], ...], tracefs: Path | None
) -> dict[str, int]:
    cache: dict[tuple[str, str], EventFormat] = {}
    out: dict[str, int] = {}
    for cfg_name, system, event, names, size in specs:
        key = (system, event)
        try:
            if key not in cache:
                cache[key] = read_format(system, event, root=tracefs)
            f = cache[key].field(*names)
        except FormatError as e:
            raise TierError(str(e)) from None
        if f.size != size:
            raise TierError(
                f"unexpected tracefs format: {system}:{event} field {f.name} has size {f.size}, bpfnfs "
                f"expects {size}; please report this kernel"
            )
        out[cfg_name] = f.offset
    return out


def plan(
    requested: str,
    have_module_btf: bool,
    tracefs: Path | None,
    loaded: frozenset[str] = frozenset({"sunrpc", "nfs", "nfsv4"}),
) -> TierPlan:
    """Choose the tier (requested: auto|btf|tracefs) and compute tracefs offsets.

    loaded: the kernel modules present now; programs for the others are
    deferred until their module appears (nfsv4 is often loaded by the first
    v4 mount, after the agent started)."""
    if requested not in ("auto", *TIERS):
        raise TierError(f"unknown tier {requested!r}; choose auto, btf or tracefs")
    if requested == "btf" and not have_module_btf:
        raise TierError(
            "tier btf needs module BTF for sunrpc and nfs (/sys/kernel/btf/{sunrpc,nfs}); this kernel has "
            "none (CONFIG_DEBUG_INFO_BTF_MODULES is off): use --tier tracefs or auto"
        )
    offsets = _offsets(COMMON_FIELDS, tracefs)
    if "nfsv4" in loaded:
        offsets |= _offsets(NFSV4_FIELDS, tracefs)
    if requested == "btf" or (requested == "auto" and have_module_btf):
        tier = "btf"
        reason = (
            "module BTF for sunrpc and nfs is present, so tp_btf and fentry/fexit read the kernel's own "
            "structures"
            if requested == "auto"
            else "requested with --tier btf"
        )
        progs = BTF_PROGRAMS | COMMON_PROGRAMS
    else:
        tier = "tracefs"
        offsets |= _offsets(TRACEFS_FIELDS, tracefs)
        reason = (
            "no module BTF for sunrpc/nfs (CONFIG_DEBUG_INFO_BTF_MODULES off), so tracepoint fields are read "
            "at tracefs format offsets and the NFS file operations through kprobes"
            if requested == "auto"
            else "requested with --tier tracefs"
        )
        progs = TRACEFS_PROGRAMS | COMMON_PROGRAMS
    now = tuple(p for p, mod in progs.items() if mod in loaded)
    deferred: dict[str, tuple[str, ...]] = {}
    for p, mod in progs.items():
        if mod not in loaded:
            deferred[mod] = (*deferred.get(mod, ()), p)
    return TierPlan(tier, reason, now, offsets, deferred)


def vfs_function(program: str) -> tuple[str, str, int] | None:
    """(function, module, nargs) behind an fentry/fexit/kprobe program, if it is one."""
    for fn, mod, n in VFS_FUNCTIONS:
        if program.split("_", 1)[1] == fn:
            return fn, mod, n
    return None
