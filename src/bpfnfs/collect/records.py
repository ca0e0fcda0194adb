"""Python mirror of src/bpfnfs/bpf/bpfnfs.h. Sizes are checked against the
object's maps at load time (collect.snapshot.check_layouts)."""

from __future__ import annotations

import struct

PROG_LEN = 16
PROC_LEN = 24
HIST_SLOTS = 32
COMM_LEN = 16

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

# enum bpfnfs_counter, in order.
COUNTERS = ("ringbuf_drops", "rpc_map_full", "io_map_full", "clnt_map_full", "pair_miss", "rpc_events")

# struct tp_offsets field order (24 u16, the last 4 padding).
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
)
CONFIG = struct.Struct(f"<IIQII{len(TP_OFFSET_FIELDS) + 4}H")
CFG_F_EVENTS = 1

# struct op_event
OP_EVENT = struct.Struct(f"<7Q6IiHH{COMM_LEN}s{PROC_LEN}s")
OP_RPC, OP_VFS_READ, OP_VFS_WRITE = 1, 2, 3

# Map name -> (key struct size, value struct size) for the start-up layout check.
LAYOUTS: dict[str, tuple[int, int]] = {
    "rpc_stats": (RPC_KEY.size, RPC_VAL.size),
    "clients": (U32.size, CLNT_INFO.size),
    "io_stats": (DEV_KEY.size, IO_VAL.size),
    "mount_probe": (U32.size, PROBE_VAL.size),
    "counters": (U32.size, U64.size),
}


def cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("ascii", "replace")


def pack_config(agent_tgid: int, flags: int, slow_ns: int, o_direct: int, offsets: dict[str, int]) -> bytes:
    offs = [offsets.get(name, 0) for name in TP_OFFSET_FIELDS] + [0, 0, 0, 0]
    return CONFIG.pack(agent_tgid, flags, slow_ns, o_direct, 0, *offs)
