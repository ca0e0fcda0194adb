"""Hooks by tier: which programs of bpfnfs.bpf.o run on this kernel, and why.

  btf      module BTF for sunrpc and nfs (5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES):
           tp_btf/rpc_stats_latency reads the rpc_task itself (exact ns, every
           mountstats per-op field), fexit on nfs_file_read/write.
  tracefs  no module BTF (Debian 11's 5.10): classic tracepoints read at offsets
           from tracefs `format` files, raw_tp for nanosecond times, kprobes on
           nfs_file_read/write. No per-op retransmissions, timeouts or bytes.

The mount probe (tracepoint sunrpc:rpc_request) runs on both tiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bpfnfs.probes.tracefs import EventFormat, FormatError, read_format

BTF_PROGRAMS = (
    "btf_rpc_stats_latency",
    "fexit_nfs_file_read",
    "fexit_nfs_file_write",
    "btf_nfs_readpage_done",
    "btf_nfs_writeback_done",
)
TRACEFS_PROGRAMS = (
    "raw_rpc_stats_latency",
    "tp_rpc_stats_latency",
    "tp_rpc_task_end",
    "kp_nfs_file_read",
    "krp_nfs_file_read",
    "kp_nfs_file_write",
    "krp_nfs_file_write",
    "tp_nfs_readpage_done",
    "tp_nfs_writeback_done",
)
COMMON_PROGRAMS = ("tp_rpc_request",)

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
    ("wb_dev", "nfs", "nfs_writeback_done", ("dev",), _SCALAR),
    ("wb_res_count", "nfs", "nfs_writeback_done", ("res_count",), _SCALAR),
)
COMMON_FIELDS: tuple[tuple[str, str, str, tuple[str, ...], int], ...] = (
    ("rq_task_id", "sunrpc", "rpc_request", ("task_id",), _SCALAR),
    ("rq_client_id", "sunrpc", "rpc_request", ("client_id",), _SCALAR),
    ("rq_version", "sunrpc", "rpc_request", ("version",), _SCALAR),
    ("rq_procname", "sunrpc", "rpc_request", ("procname",), _LOC),
)


class TierError(Exception):
    """The kernel's tracepoints do not look like any kernel bpfnfs knows."""


@dataclass(frozen=True)
class TierPlan:
    tier: str
    reason: str
    programs: tuple[str, ...]
    offsets: dict[str, int]

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


def plan(requested: str, have_module_btf: bool, tracefs: Path | None) -> TierPlan:
    """Choose the tier (requested: auto|btf|tracefs) and compute tracefs offsets."""
    if requested not in ("auto", *TIERS):
        raise TierError(f"unknown tier {requested!r}; choose auto, btf or tracefs")
    if requested == "btf" and not have_module_btf:
        raise TierError(
            "tier btf needs module BTF for sunrpc and nfs (/sys/kernel/btf/{sunrpc,nfs}); this kernel has "
            "none (CONFIG_DEBUG_INFO_BTF_MODULES is off): use --tier tracefs or auto"
        )
    offsets = _offsets(COMMON_FIELDS, tracefs)
    if requested == "btf" or (requested == "auto" and have_module_btf):
        reason = (
            "module BTF for sunrpc and nfs is present, so tp_btf and fexit read the kernel's own structures"
            if requested == "auto"
            else "requested with --tier btf"
        )
        return TierPlan("btf", reason, BTF_PROGRAMS + COMMON_PROGRAMS, offsets)
    offsets |= _offsets(TRACEFS_FIELDS, tracefs)
    reason = (
        "no module BTF for sunrpc/nfs (CONFIG_DEBUG_INFO_BTF_MODULES off), so tracepoint fields are read at "
        "tracefs format offsets and nfs_file_* through kprobes"
        if requested == "auto"
        else "requested with --tier tracefs"
    )
    return TierPlan("tracefs", reason, TRACEFS_PROGRAMS + COMMON_PROGRAMS, offsets)
