"""Hooks by tier: which programs of bpfnfs.bpf.o run on this kernel, and why.

  btf      module BTF for sunrpc and nfs (5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES):
           tp_btf/rpc_stats_latency reads the rpc_task itself (exact ns, every
           mountstats per-op field), fentry/fexit on the NFS file operations.
  tracefs  no module BTF (Debian 11's 5.10): classic tracepoints read at offsets
           from tracefs `format` files, raw_tp for nanosecond times (and the
           rpc_task's retransmissions, timeouts and bytes where vmlinux BTF
           describes struct rpc_task, as 5.10's does), kprobes on the NFS file
           operations.

Both tiers run the same classic tracepoint for the mount probe (sunrpc:rpc_request)
and the same accounting behind their hooks; the btf tier reads every other
tracepoint (read ownership, COMMITs, server statuses) through tp_btf, whose
programs have their own recursion counters, unlike kprobes and classic
tracepoints, which share one per CPU with every other BPF user's map syscalls.
Which kind of program counts is the counting method (probes/loading.py): tp_btf
and fentry/fexit, or classic tracepoints and kprobes on preemptible kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bpfnfs.probes.hooks import fentry_programs, kprobe_programs
from bpfnfs.probes.tracefs import EventFormat, FormatError, read_format

# The mount probe: one program on every tier and method (a probe that went unseen is
# made again).
COMMON_PROGRAMS: dict[str, str] = {"tp_rpc_request": "sunrpc"}
# Span trees (the ring's records as trees, bpf/bpfnfs.h): the RPC's parent is the op in
# flight on the thread that starts it (or, for a COMMIT nfsiod starts, the fsync or close
# waiting on its file). Classic tracepoints on every tier and method.
TREE_PROGRAMS: dict[str, str] = {"tp_rpc_task_begin": "sunrpc", "tp_nfs_initiate_commit": "nfs"}
# RPC per-op fields besides the tracepoint, per (tier, method): the tracefs tier pairs
# the classic tracepoint with a raw_tp half (and rpc_task_end for the status); with
# module BTF the kprobe method reads them in a kprobe, and the exact execute time in
# a tp_btf helper attached before the tracepoint program (probes run in that order).
RPC_HELPERS: dict[tuple[str, str], dict[str, str]] = {
    ("tracefs", "kprobe"): {"raw_rpc_stats_latency": "sunrpc", "tp_rpc_task_end": "sunrpc"},
    ("btf", "kprobe"): {"btf_rpc_execute_ns": "sunrpc", "kp_rpc_count_iostats_metrics": "sunrpc"},
    ("btf", "fentry"): {},
}
METHODS = ("fentry", "kprobe")


def programs_for(tier: str, method: str, trees: bool = False) -> dict[str, str]:
    """Program -> the module whose arrival it waits for, in attach order."""
    counting = fentry_programs() if method == "fentry" else kprobe_programs()
    return RPC_HELPERS[(tier, method)] | counting | COMMON_PROGRAMS | (TREE_PROGRAMS if trees else {})


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
)
TRACEFS_FIELDS += (
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
TREE_FIELDS: tuple[tuple[str, str, str, tuple[str, ...], int], ...] = (
    ("tb_task_id", "sunrpc", "rpc_task_begin", ("task_id",), _SCALAR),
    ("tb_client_id", "sunrpc", "rpc_task_begin", ("client_id",), _SCALAR),
    ("ic_dev", "nfs", "nfs_initiate_commit", ("dev",), _SCALAR),
    ("ic_fileid", "nfs", "nfs_initiate_commit", ("fileid",), _LONG),
)
# Only once the nfsv4 module is loaded (its tracepoints come with it), tier tracefs.
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
    method: str = "fentry"  # counting method (probes/loading.py)

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


def tier_for(requested: str, have_module_btf: bool, attach_btf_missing: str | None = None) -> str:
    """The tier (auto|btf|tracefs requested) this kernel gets.

    attach_btf_missing: why the kernel's own BTF cannot attach tp_btf and fentry
    programs (system.attach_btf_missing), None when it can. A btf.kernel file serves
    CO-RE only, so without the kernel's own BTF only the tracefs tier is left."""
    if requested not in ("auto", *TIERS):
        raise TierError(f"unknown tier {requested!r}; choose auto, btf or tracefs")
    if requested == "btf" and not have_module_btf:
        raise TierError(
            "tier btf needs module BTF for sunrpc and nfs (/sys/kernel/btf/{sunrpc,nfs}); this kernel has "
            "none (CONFIG_DEBUG_INFO_BTF_MODULES is off): use --tier tracefs or auto"
        )
    if requested == "btf" and attach_btf_missing is not None:
        raise TierError(
            f"tier btf attaches tp_btf and fentry programs, which needs the kernel's own BTF: "
            f"{attach_btf_missing} (btf.kernel serves CO-RE relocations only): use --tier tracefs or auto"
        )
    usable = have_module_btf and attach_btf_missing is None
    return "btf" if requested == "btf" or (requested == "auto" and usable) else "tracefs"


def plan(
    requested: str,
    have_module_btf: bool,
    tracefs: Path | None,
    loaded: frozenset[str] = frozenset({"sunrpc", "nfs", "nfsv4"}),
    method: str = "fentry",
    attach_btf_missing: str | None = None,
    trees: bool = False,
) -> TierPlan:
    """Choose the tier (requested: auto|btf|tracefs) and compute tracefs offsets.

    loaded: the kernel modules present now; programs for the others are
    deferred until their module appears (nfsv4 is often loaded by the first
    v4 mount, after the agent started). method: the counting method (fentry:
    tp_btf and fentry/fexit; kprobe: classic tracepoints and kprobes), which
    the tracefs tier always uses. attach_btf_missing: as for tier_for. trees: span trees
    (the rpc_task_begin program and its offsets)."""
    tier = tier_for(requested, have_module_btf, attach_btf_missing)
    offsets = _offsets(COMMON_FIELDS + (TREE_FIELDS if trees else ()), tracefs)
    if tier == "btf":
        reason = (
            "module BTF for sunrpc and nfs is present, so the programs read the kernel's own structures"
            if requested == "auto"
            else "requested with --tier btf"
        )
    else:
        how = (
            "tracepoint fields are read at tracefs format offsets and the NFS file operations through kprobes"
        )
        if requested != "auto":
            reason = "requested with --tier tracefs"
        elif have_module_btf and attach_btf_missing is not None:
            reason = (
                f"tier btf is impossible: {attach_btf_missing}, and tp_btf and fentry programs attach only "
                f"through it (btf.kernel and btf.model_dir serve CO-RE relocations only), so {how}"
            )
        else:
            reason = f"no module BTF for sunrpc/nfs (CONFIG_DEBUG_INFO_BTF_MODULES off), so {how}"
        method = "kprobe"
    if method == "kprobe":
        offsets |= _offsets(TRACEFS_FIELDS, tracefs)
        if "nfsv4" in loaded:
            offsets |= _offsets(NFSV4_FIELDS, tracefs)
    progs = programs_for(tier, method, trees)
    now = tuple(p for p, mod in progs.items() if mod in loaded)
    deferred: dict[str, tuple[str, ...]] = {}
    for p, mod in progs.items():
        if mod not in loaded:
            deferred[mod] = (*deferred.get(mod, ()), p)
    return TierPlan(tier, reason, now, offsets, deferred, method)
