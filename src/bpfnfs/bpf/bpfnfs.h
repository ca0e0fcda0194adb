/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Records, keys and configuration shared by the BPF programs and user space.
 *
 * This is the single source of truth for every layout user space reads.
 * src/bpfnfs/collect/records.py mirrors it with struct formats and checks
 * the sizes against the loaded object's BTF-declared map sizes at start-up.
 * Keep fields naturally aligned and sizes multiples of 8.
 */
#ifndef __BPFNFS_H
#define __BPFNFS_H

#define BPFNFS_PROG_LEN 16   /* RPC program name: "nfs", "nfsacl", "nlockmgr" */
#define BPFNFS_PROC_LEN 24   /* RPC procedure name: longest NFSv4 one is 20 */
#define BPFNFS_HIST_SLOTS 32 /* log2(µs) buckets: [0,2) [2,4) ... up to ~71 min */
#define BPFNFS_COMM_LEN 16

/* Per (RPC client, version, procedure): what mountstats keeps per op, plus
 * latency histograms. Filled from sunrpc:rpc_stats_latency, which fires in
 * rpc_count_iostats_metrics() right after the mountstats counters move. */
struct rpc_key {
	__u32 clid;                   /* rpc_clnt->cl_clid */
	__u32 vers;                   /* RPC program version */
	char proc[BPFNFS_PROC_LEN];   /* procedure name as mountstats prints it */
};

struct rpc_val {
	__u64 ops;
	__u64 ntrans;                 /* BTF tier only */
	__u64 timeouts;               /* BTF tier only */
	__u64 bytes_sent;             /* BTF tier only */
	__u64 bytes_recv;             /* BTF tier only */
	__u64 queue_ns;
	__u64 rtt_ns;
	__u64 execute_ns;
	__u64 errors;                 /* tk_status < 0 when counted */
	__u64 queue_hist[BPFNFS_HIST_SLOTS];
	__u64 rtt_hist[BPFNFS_HIST_SLOTS];
	__u64 execute_hist[BPFNFS_HIST_SLOTS];
};

/* RPC clients seen, so user space can rebuild mountstats' parent chains
 * (a mount's per-op lines sum its rpc_clnt and every cl_parent above it). */
#define CLNT_F_PARENT_KNOWN 1u
struct clnt_info {
	__u32 parent;                 /* parent clid (== clid at the root) */
	__u32 vers;
	__u32 flags;
	__u32 _pad;
	char prog[BPFNFS_PROG_LEN];
};

/* Syscall-side bytes per superblock, as the mountstats "bytes:" line counts
 * them: nfs_file_read/nfs_file_write return values. */
struct io_val {
	__u64 read_calls;
	__u64 read_bytes;             /* buffered: normalreadbytes */
	__u64 direct_read_bytes;      /* O_DIRECT: directreadbytes */
	__u64 write_calls;
	__u64 write_bytes;            /* buffered: normalwritebytes */
	__u64 direct_write_bytes;     /* O_DIRECT: directwritebytes */
	__u64 server_read_bytes;      /* nfs_readpage_done res.count: serverreadbytes */
	__u64 server_write_bytes;     /* nfs_writeback_done res.count: serverwritebytes */
	__u64 read_rpcs;              /* READ or READ_PLUS completions with data */
	__u64 write_rpcs;
};

/* Answer to the mount probe: the agent's own statfs() on a mount point
 * issues one FSSTAT/STATFS RPC on that superblock's rpc_clnt. */
struct probe_val {
	__u32 clid;
	__u32 vers;
	char proc[BPFNFS_PROC_LEN];
};

/* Self-accounting counters (per-CPU array index). */
enum bpfnfs_counter {
	CNT_RINGBUF_DROPS = 0,        /* ring buffer full: per-op record lost */
	CNT_RPC_MAP_FULL,             /* rpc_stats map full: RPC sample lost */
	CNT_IO_MAP_FULL,
	CNT_CLNT_MAP_FULL,
	CNT_PAIR_MISS,                /* tracefs tier: raw_tp/tracepoint halves did not pair */
	CNT_RPC_EVENTS,               /* rpc_stats_latency firings seen */
	CNT_MAX,
};

/* One per-operation record on the ring buffer (slow ops now; traces later).
 * Fixed size so user space drains a batch with one iter_unpack. */
enum op_kind {
	OP_RPC = 1,
	OP_VFS_READ = 2,
	OP_VFS_WRITE = 3,
};

struct op_event {
	__u64 ts_ns;                  /* bpf_ktime_get_ns() at completion */
	__u64 latency_ns;             /* execute time for RPCs, call time for VFS */
	__u64 queue_ns;
	__u64 rtt_ns;
	__u64 cgroup_id;
	__u64 fileid;
	__u64 bytes;
	__u32 pid;                    /* tgid; tk_owner for RPCs on the BTF tier */
	__u32 tid;
	__u32 dev;                    /* kernel dev_t: major << 20 | minor */
	__u32 clid;
	__u32 task_id;
	__u32 xid;
	__s32 status;
	__u16 kind;
	__u16 vers;
	char comm[BPFNFS_COMM_LEN];
	char proc[BPFNFS_PROC_LEN];
};

/* Read-only configuration, written by the loader before load. It is the only
 * variable in .rodata, so the loader can set it as the map's whole value. */
struct tp_offsets {
	/* sunrpc:rpc_stats_latency (sl_progname fills clients on this tier) */
	__u16 sl_task_id, sl_client_id, sl_xid, sl_version;
	__u16 sl_progname, sl_procname, sl_backlog, sl_rtt;
	__u16 sl_execute;
	/* sunrpc:rpc_request */
	__u16 rq_task_id, rq_client_id, rq_version, rq_procname;
	/* sunrpc:rpc_task_end */
	__u16 te_task_id, te_client_id, te_status;
	/* nfs:nfs_readpage_done / nfs:nfs_writeback_done */
	__u16 rd_dev, rd_res_count, wb_dev, wb_res_count;
	__u16 _pad[4];
};

struct bpfnfs_config {
	__u32 agent_tgid;             /* the agent's own pid: mount probe filter */
	__u32 flags;
	__u64 slow_ns;                /* emit an op_event when latency >= slow_ns */
	__u32 o_direct;               /* O_DIRECT of this architecture */
	__u32 _pad;
	struct tp_offsets off;
};

#define CFG_F_EVENTS 1u           /* per-op records on the ring buffer */

#endif /* __BPFNFS_H */
