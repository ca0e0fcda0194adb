"""Counting hooks and the programs behind them.

A hook is one place in the kernel where bpfnfs counts something: a tracepoint, or
the entry or the exit of an NFS file operation. Each counting method (probes/
loading.py) attaches its own kind of program there: tp_btf and fentry/fexit, or
classic tracepoints and kprobes/kretprobes. A program the kernel skipped (it was
already running on that CPU) lost that event for its hook: collect/losses.py adds
the kernel's recursion_misses up per hook.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VfsFunction:
    name: str
    module: str
    nargs: int  # in the btf tier's prototype (5.12+: idmap/user_namespace first)
    optional: bool = False  # absent on older kernels by design: no warning when missing
    direct: bool = False  # counts direct bytes; without it nfs_file_read/write count them


# Order = enum vfs_fn in bpf/bpfnfs.h.
VFS_FUNCTIONS: tuple[VfsFunction, ...] = (
    VfsFunction("nfs_file_read", "nfs", 2),
    VfsFunction("nfs_file_write", "nfs", 2),
    # 6.5+; before it splice reads went through nfs_file_read.
    VfsFunction("nfs_file_splice_read", "nfs", 5, optional=True),
    VfsFunction("nfs_file_open", "nfs", 2),
    VfsFunction("nfs4_file_open", "nfsv4", 2),
    VfsFunction("nfs_atomic_open", "nfs", 5),  # NFSv4: OPEN with the lookup
    VfsFunction("nfs_file_flush", "nfs", 2),
    VfsFunction("nfs4_file_flush", "nfsv4", 2),
    VfsFunction("nfs_file_fsync", "nfs", 4),
    VfsFunction("nfs_getattr", "nfs", 5),
    VfsFunction("nfs_setattr", "nfs", 3),
    VfsFunction("nfs_lookup", "nfs", 3),
    VfsFunction("nfs_readdir", "nfs", 2),
    VfsFunction("nfs_permission", "nfs", 3),
    VfsFunction("nfs_vm_page_mkwrite", "nfs", 1),
    # Direct bytes (O_DIRECT, AIO, swap); 5.18+ prototype with the swap flag.
    VfsFunction("nfs_file_direct_read", "nfs", 3, direct=True),
    VfsFunction("nfs_file_direct_write", "nfs", 3, direct=True),
)
VFS_BY_NAME = {f.name: f for f in VFS_FUNCTIONS}

# Tracepoint hooks: (hook name, fentry method program, kprobe method program, module).
TRACEPOINT_HOOKS: tuple[tuple[str, str, str, str], ...] = (
    ("sunrpc:rpc_stats_latency", "btf_rpc_stats_latency", "tp_rpc_stats_latency", "sunrpc"),
    ("nfs:nfs_readpage_done", "btf_nfs_readpage_done", "tp_nfs_readpage_done", "nfs"),
    ("nfs:nfs_writeback_done", "btf_nfs_writeback_done", "tp_nfs_writeback_done", "nfs"),
    ("nfs:nfs_initiate_read", "btf_nfs_initiate_read", "tp_nfs_initiate_read", "nfs"),
    ("nfs:nfs_initiate_write", "btf_nfs_initiate_write", "tp_nfs_initiate_write", "nfs"),
    ("nfs:nfs_commit_done", "btf_nfs_commit_done", "tp_nfs_commit_done", "nfs"),
    ("nfs:nfs_xdr_status", "btf_nfs_xdr_status", "tp_nfs_xdr_status", "nfs"),
    ("nfs4:nfs4_xdr_status", "btf_nfs4_xdr_status", "tp_nfs4_xdr_status", "nfsv4"),
)
_HOOK_OF = {p: h for h, p, _k, _m in TRACEPOINT_HOOKS} | {k: h for h, _p, k, _m in TRACEPOINT_HOOKS}
# The per-op fields of an RPC (kprobe method) or their time half (tracefs tier): an
# op counted without them lacks its retransmissions, timeouts and bytes.
_HOOK_OF["kp_rpc_count_iostats_metrics"] = "sunrpc:rpc_stats_latency"
_HOOK_OF["raw_rpc_stats_latency"] = "sunrpc:rpc_stats_latency"
_HOOK_OF["tp_rpc_task_end"] = "sunrpc:rpc_stats_latency"


def hook_of(program: str) -> str | None:
    """The hook a program counts for; None for helpers whose misses lose nothing
    (the mount probe is made again; a skipped execute-time helper leaves µs)."""
    if program in _HOOK_OF:
        return _HOOK_OF[program]
    prefix, _, fn = program.partition("_")
    if fn in VFS_BY_NAME and prefix in ("fe", "fx", "kp", "krp"):
        return f"{fn}/{'entry' if prefix in ('fe', 'kp') else 'exit'}"
    return None


def vfs_function(program: str) -> VfsFunction | None:
    """The NFS file operation behind an fentry/fexit/kprobe/kretprobe program."""
    prefix, _, fn = program.partition("_")
    return VFS_BY_NAME.get(fn) if prefix in ("fe", "fx", "kp", "krp") else None


def fentry_programs() -> dict[str, str]:
    """The fentry method's counting programs (tp_btf, fentry/fexit) -> module."""
    out = {p: m for _h, p, _k, m in TRACEPOINT_HOOKS}
    for f in VFS_FUNCTIONS:
        out[f"fe_{f.name}"] = f.module
        out[f"fx_{f.name}"] = f.module
    return out


def kprobe_programs() -> dict[str, str]:
    """The kprobe method's counting programs (classic tracepoints, kprobes/kretprobes) -> module."""
    out = {k: m for _h, _p, k, m in TRACEPOINT_HOOKS}
    for f in VFS_FUNCTIONS:
        out[f"kp_{f.name}"] = f.module
        out[f"krp_{f.name}"] = f.module
    return out
