"""Python mirror of src/bpfnfs/bpf/bpfnfs.h. Sizes are checked against the
object's maps at load time (collect.snapshot.check_layouts)."""

from __future__ import annotations

import struct

PROG_LEN = 16
PROC_LEN = 24
HIST_SLOTS = 32
COMM_LEN = 16
PATH_LEN = 480

RPC_KEY = struct.Struct(f"<II{PROC_LEN}s")
RPC_VAL_SCALARS = 9
RPC_VAL = struct.Struct(f"<{RPC_VAL_SCALARS + 3 * HIST_SLOTS}Q")
CLNT_INFO = struct.Struct(f"<IIII{PROG_LEN}s")
CLNT_F_PARENT_KNOWN = 1
IO_VAL_FIELDS = (
    "read_calls",
    "read_bytes",
    "direct_read_bytes",
    "write_calls",
    "write_bytes",
    "direct_write_bytes",
    "server_read_bytes",
    "server_write_bytes",
    "read_rpcs",
    "write_rpcs",
)
IO_VAL = struct.Struct(f"<{len(IO_VAL_FIELDS)}Q")
DEV_KEY = struct.Struct("<I")
PROBE_VAL = struct.Struct(f"<II{PROC_LEN}s")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

# enum vfs_op, in order: the names the kernel side puts in events and errors.
VFS_OPS = (
    "read",
    "write",
    "open",
    "flush",
    "fsync",
    "getattr",
    "setattr",
    "lookup",
    "readdir",
    "permission",
    "page_mkwrite",
)
VFS_KEY = struct.Struct(f"<IIIIQ{COMM_LEN}s")  # dev, op, pid, pad, cgroup_id, comm
VFS_VAL_SCALARS = 4  # calls, errors, bytes, latency_ns
VFS_VAL = struct.Struct(f"<{VFS_VAL_SCALARS + HIST_SLOTS}Q")
FILE_KEY = struct.Struct("<IIQ")  # dev, pad, fileid
FILE_VAL_COUNTERS = (
    "reads",
    "writes",
    "read_bytes",
    "write_bytes",
    "other_ops",
    "errors",
    "latency_ns",
    "wire_read_bytes",
    "wire_write_bytes",
    "wire_reads",
    "wire_writes",
    "wire_read_ns",
    "wire_write_ns",
)
FILE_VAL = struct.Struct(f"<{len(FILE_VAL_COUNTERS)}QQII{COMM_LEN}s")
FILE_F_NAMED, FILE_F_MIXED = 1, 2
OWNER_KEY = struct.Struct(f"<IIQ{COMM_LEN}s")  # dev, pid, cgroup_id, comm
OWNER_VAL_FIELDS = (
    "read_rpcs",
    "read_bytes",
    "write_rpcs",
    "write_bytes",
    "commit_rpcs",
    "ambiguous_write_bytes",
)
OWNER_VAL = struct.Struct(f"<{len(OWNER_VAL_FIELDS)}Q")
ERR_KEY = struct.Struct(f"<IHHiI{PROC_LEN}s")  # id, kind, vers, err, opnum, op
ERR_RPC, ERR_XDR, ERR_XDR4, ERR_VFS = 1, 2, 3, 4

# enum bpfnfs_counter, in order.
COUNTERS = (
    "ringbuf_drops",
    "rpc_map_full",
    "io_map_full",
    "clnt_map_full",
    "pair_miss",
    "rpc_events",
    "vfs_map_full",
    "vfs_start_full",
    "file_inserts",
    "owner_map_full",
    "err_map_full",
    "unattributed_writes",
    "unattributed_reads",
    "filtered",
    "pgio_unmatched",
    "vfs_untimed",
    "rpc_exec_estimated",
    "span_unsampled",
    "span_parent_dropped",
    "span_tree_full",
    "span_pending_full",
    "span_tree_lost",
)

# struct tp_offsets field order (40 u16; names starting with _ are padding).
TP_OFFSET_FIELDS = (
    "sl_task_id",
    "sl_client_id",
    "sl_xid",
    "sl_version",
    "sl_progname",
    "sl_procname",
    "sl_backlog",
    "sl_rtt",
    "sl_execute",
    "rq_task_id",
    "rq_client_id",
    "rq_version",
    "rq_procname",
    "te_task_id",
    "te_client_id",
    "te_status",
    "rd_dev",
    "rd_res_count",
    "wb_dev",
    "wb_res_count",
    "rd_fileid",
    "rd_offset",
    "wb_fileid",
    "wb_offset",
    "ir_dev",
    "ir_fileid",
    "ir_offset",
    "cd_dev",
    "cd_fileid",
    "xs_client_id",
    "xs_version",
    "xs_error",
    "xs_procedure",
    "x4_client_id",
    "x4_op",
    "x4_error",
    "iw_dev",
    "iw_fileid",
    "iw_offset",
    "tb_task_id",
    "tb_client_id",
    "ic_dev",
    "ic_fileid",
)
TP_OFFSETS_LEN = 44
# agent_tgid, flags, slow_ns, o_direct, cgroup_v1, sample, pad, off
CONFIG = struct.Struct(f"<IIQIIII{TP_OFFSETS_LEN}H")
# struct bpfnfs_live (.data): flags, filter_tgid, filter_comm; rewritten at run time.
LIVE = struct.Struct(f"<II{COMM_LEN}s")
CFG_F_EVENTS = 1
CFG_F_VFS_PID = 2
CFG_F_FILTER_PID = 4
CFG_F_FILTER_COMM = 8
CFG_F_FILTER_CGROUP = 16
CFG_F_IDMAP_ARGS = 32
CFG_F_RPC_KPROBE = 64
CFG_F_ATOMIC = 128
CFG_F_DIRECT_FNS = 256
CFG_F_WRITE_COUNTED_EARLY = 512
CFG_F_TREES = 1024
CFG_F_SAMPLE_ALL = 2048
# The flags of LIVE (changeable at run time); CONFIG holds the others.
CFG_F_LIVE = CFG_F_VFS_PID | CFG_F_FILTER_PID | CFG_F_FILTER_COMM | CFG_F_FILTER_CGROUP

# Ring buffer records, each after a struct rec_hdr (kind, version, size): struct op_event and
# struct path_event. A layout change bumps its kind's version here and in bpf/bpfnfs.h.
REC_HDR = struct.Struct("<HHI")
REC_OP, REC_PATH = 1, 2
REC_OP_VERSION = 2
REC_PATH_VERSION = 1
# header, ts, latency, queue, rtt, cgroup, fileid, bytes, span, parent, trace, pid, tid, dev, clid,
# task_id, xid, status, kind, vers, keep, pad, comm, proc
OP_EVENT = struct.Struct(f"<HHI10Q6IiHHII{COMM_LEN}s{PROC_LEN}s")
OP_RPC, OP_VFS = 1, 2
KEEP_SLOW, KEEP_ERROR, KEEP_SAMPLED = 1, 2, 4
TREE_CHILDREN = 64  # BPFNFS_TREE_CHILDREN
PATH_EVENT = struct.Struct(f"<HHIQIIII{PATH_LEN}s")  # header, fileid, dev, flags, len, depth, path
PATH_F_TRUNCATED = 1
# (kind, version) -> record size: what the ring's sink keeps.
RECORDS: dict[tuple[int, int], int] = {
    (REC_OP, REC_OP_VERSION): OP_EVENT.size,
    (REC_PATH, REC_PATH_VERSION): PATH_EVENT.size,
}

# Map name -> (key struct size, value struct size) for the start-up layout check.
LAYOUTS: dict[str, tuple[int, int]] = {
    "rpc_stats": (RPC_KEY.size, RPC_VAL.size),
    "clients": (U32.size, CLNT_INFO.size),
    "io_stats": (DEV_KEY.size, IO_VAL.size),
    "mount_probe": (U32.size, PROBE_VAL.size),
    "counters": (U32.size, U64.size),
    "vfs_stats": (VFS_KEY.size, VFS_VAL.size),
    "files": (FILE_KEY.size, FILE_VAL.size),
    "owners": (OWNER_KEY.size, OWNER_VAL.size),
    "errors": (ERR_KEY.size, U64.size),
    "cgroup_filter": (U64.size, 1),
    "pgio": (struct.calcsize("<IIQq"), struct.calcsize(f"<QQII{COMM_LEN}s")),
}
# Global-data section -> its one variable's size (a one-element array map each).
GLOBALS: dict[str, int] = {".rodata": CONFIG.size, ".data": LIVE.size}


def cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def pack_config(
    agent_tgid: int,
    flags: int,
    slow_ns: int,
    o_direct: int,
    offsets: dict[str, int],
    cgroup_v1: int = 0,
    sample: float = 0.0,
) -> bytes:
    """struct bpfnfs_config. cgroup_v1: 0 for cgroup v2 ids, else a v1 controller's subsystem id + 1.
    sample: span trees' ratio of roots kept besides the slow and failed ones (1.0 sets
    CFG_F_SAMPLE_ALL)."""
    offs = [offsets.get(name, 0) for name in TP_OFFSET_FIELDS]
    offs += [0] * (TP_OFFSETS_LEN - len(offs))
    if sample >= 1.0:
        flags |= CFG_F_SAMPLE_ALL
    threshold = min(max(int(sample * 2**32), 0), 2**32 - 1)
    return CONFIG.pack(agent_tgid, flags, slow_ns, o_direct, cgroup_v1, threshold, 0, *offs)


def pack_live(flags: int, filter_tgid: int = 0, filter_comm: str = "") -> bytes:
    """struct bpfnfs_live. flags: CFG_F_LIVE bits only; the comm is truncated to
    what the kernel keeps (15 bytes and the NUL), as bpf_get_current_comm returns it."""
    if flags & ~CFG_F_LIVE:
        raise ValueError(f"not live flags: {flags & ~CFG_F_LIVE:#x}")
    return LIVE.pack(flags, filter_tgid, filter_comm.encode()[: COMM_LEN - 1])
