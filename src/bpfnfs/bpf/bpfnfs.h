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
/* Bound of a cgroup subsystem id (CGROUP_SUBSYS_COUNT is 14 on 6.x kernels). */
#define BPFNFS_MAX_CGROUP_SUBSYS 32

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

/* Syscall-side (VFS) operations on NFS files, hooked at the NFS client's
 * file/inode operations (fentry/fexit, or kprobe/kretprobe). */
enum vfs_op {
	VFS_READ = 0,
	VFS_WRITE,
	VFS_OPEN,                     /* nfs_file_open (v2/v3), nfs4_file_open (v4) */
	VFS_FLUSH,                    /* close(): nfs_file_flush, nfs4_file_flush */
	VFS_FSYNC,
	VFS_GETATTR,                  /* stat() and friends */
	VFS_SETATTR,                  /* chmod, truncate, utimes */
	VFS_LOOKUP,                   /* per directory: name lookups that missed the dcache */
	VFS_READDIR,                  /* one getdents() call */
	VFS_PERMISSION,               /* access checks (path walk, open) */
	VFS_PAGE_MKWRITE,             /* first write fault on a shared mmap page */
	VFS_OP_MAX,
};

/* The NFS client functions the syscall side hooks (fentry/fexit or kprobes).
 * Several map onto one enum vfs_op (three open paths, two flushes, read and
 * splice read); the direct I/O ones count only direct bytes. */
enum vfs_fn {
	FN_FILE_READ = 0,
	FN_FILE_WRITE,
	FN_FILE_SPLICE_READ,          /* 6.5+: splice(2), sendfile(2), copy_file_range fallback */
	FN_FILE_OPEN,
	FN_NFS4_FILE_OPEN,
	FN_ATOMIC_OPEN,
	FN_FILE_FLUSH,
	FN_NFS4_FILE_FLUSH,
	FN_FILE_FSYNC,
	FN_GETATTR,
	FN_SETATTR,
	FN_LOOKUP,
	FN_READDIR,
	FN_PERMISSION,
	FN_PAGE_MKWRITE,
	FN_DIRECT_READ,               /* nfs_file_direct_read: directreadbytes (O_DIRECT, AIO, swap) */
	FN_DIRECT_WRITE,              /* nfs_file_direct_write: directwritebytes */
	VFS_FN_MAX,
};

/* Per (mount, op, cgroup, comm[, pid]): calls, errors, bytes, latency. The pid
 * is 0 unless user space asked for per-process keys (CFG_F_VFS_PID). */
struct vfs_key {
	__u32 dev;
	__u32 op;
	__u32 pid;
	__u32 _pad;
	__u64 cgroup_id;
	char comm[BPFNFS_COMM_LEN];
};

struct vfs_val {
	__u64 calls;
	__u64 errors;
	__u64 bytes;                  /* read/write: what mountstats' bytes: line counts for the call */
	__u64 latency_ns;
	__u64 hist[BPFNFS_HIST_SLOTS]; /* calls whose entry was seen (all but vfs_untimed) */
};

/* Per file: (dev, fileid) in an LRU map. fileid is the full 64-bit NFS fileid. */
struct file_key {
	__u32 dev;
	__u32 _pad;
	__u64 fileid;
};

#define FILE_F_NAMED 1u               /* a path record went out on the ring buffer */
#define FILE_F_MIXED 2u               /* dirtied by more than one cgroup since the last COMMIT/fsync */
struct file_val {
	__u64 reads;
	__u64 writes;
	__u64 read_bytes;
	__u64 write_bytes;
	__u64 other_ops;              /* open, flush, fsync, getattr, setattr, lookup, readdir, mkwrite */
	__u64 errors;
	__u64 latency_ns;             /* sum over all syscall-side ops */
	__u64 wire_read_bytes;        /* READ RPC payload (nfs_readpage_done res.count) */
	__u64 wire_write_bytes;       /* WRITE RPC payload (nfs_writeback_done res.count) */
	__u64 wire_reads;             /* READ RPCs completed (nfs_readpage_done) */
	__u64 wire_writes;            /* WRITE RPCs completed (nfs_writeback_done) */
	__u64 wire_read_ns;           /* sum of nfs_initiate_read -> nfs_readpage_done */
	__u64 wire_write_ns;          /* sum of nfs_initiate_write -> nfs_writeback_done */
	/* who dirtied the pages last: async writeback is billed to them */
	__u64 dirtier_cgroup;
	__u32 dirtier_pid;
	__u32 flags;
	char dirtier_comm[BPFNFS_COMM_LEN];
};

/* Wire I/O billed to the process that caused it: READs to the task that issued
 * them (nfs_initiate_read runs in the reader, readahead included), WRITEs and
 * COMMITs to the file's last dirtier (the flusher thread issues them). */
struct owner_key {
	__u32 dev;
	__u32 pid;
	__u64 cgroup_id;
	char comm[BPFNFS_COMM_LEN];
};

struct owner_val {
	__u64 read_rpcs;
	__u64 read_bytes;
	__u64 write_rpcs;
	__u64 write_bytes;
	__u64 commit_rpcs;
	__u64 ambiguous_write_bytes;  /* written for a file with several dirtiers (FILE_F_MIXED) */
};

/* Key of a READ or WRITE RPC in flight, from nfs_initiate_read/write to
 * nfs_readpage_done/nfs_writeback_done (write: 0 read, 1 write). */
struct read_tag {
	__u32 dev;
	__u32 write;
	__u64 fileid;
	__s64 offset;
};

struct task_ident {
	__u64 cgroup_id;
	__u32 pid;
	__u32 _pad;
	char comm[BPFNFS_COMM_LEN];
};

/* A READ or WRITE in flight: when it was initiated and by whom (READs: the task
 * that needs the data). */
struct pgio_val {
	__u64 ts;
	struct task_ident id;
};

/* Errors by errno. kind says where the error was seen and what id means. */
enum err_kind {
	ERR_RPC = 1,                  /* RPC task status at completion; id = clid, op = procedure */
	ERR_XDR = 2,                  /* nfs_xdr_status: server's NFSv2/v3 status; id = clid */
	ERR_XDR4 = 3,                 /* nfs4_xdr_status: per NFSv4 operation; id = clid, opnum */
	ERR_VFS = 4,                  /* syscall side; id = dev, opnum = enum vfs_op */
};

struct err_key {
	__u32 id;
	__u16 kind;
	__u16 vers;
	__s32 err;                    /* positive errno, or NFS4ERR_* for statuses without one */
	__u32 opnum;
	char op[BPFNFS_PROC_LEN];
};

/* Self-accounting counters (per-CPU array index). */
enum bpfnfs_counter {
	CNT_RINGBUF_DROPS = 0,        /* ring buffer full: per-op record lost */
	CNT_RPC_MAP_FULL,             /* rpc_stats map full: RPC sample lost */
	CNT_IO_MAP_FULL,
	CNT_CLNT_MAP_FULL,
	CNT_PAIR_MISS,                /* RPC op counted without its fields' half (raw_tp or kprobe) */
	CNT_RPC_EVENTS,               /* rpc_stats_latency firings seen */
	CNT_VFS_MAP_FULL,             /* vfs_stats full: syscall-side sample lost */
	CNT_VFS_START_FULL,           /* unused since the start map became an LRU (kept: index order) */
	CNT_FILE_INSERTS,             /* files added to the LRU (evictions = inserts - live - deleted) */
	CNT_OWNER_MAP_FULL,
	CNT_ERR_MAP_FULL,
	CNT_UNATTRIBUTED_WRITES,      /* WRITE/COMMIT for a file no longer (or never) in the LRU */
	CNT_UNATTRIBUTED_READS,       /* READ completion without its initiate */
	CNT_FILTERED,                 /* syscall-side ops skipped by --pid/--comm/--cgroup */
	CNT_PGIO_UNMATCHED,           /* READ/WRITE completion without its initiate (no latency) */
	CNT_VFS_UNTIMED,              /* syscall-side exit without its entry: counted, latency unknown */
	CNT_RPC_EXEC_ESTIMATED,       /* kprobe method: RPC execute time from µs (tp_btf helper skipped) */
	/* Span trees (CFG_F_TREES): why a span did not reach user space. */
	CNT_SPAN_UNSAMPLED,           /* a root neither slow, nor failed, nor sampled */
	CNT_SPAN_PARENT_DROPPED,      /* a child of such a root */
	CNT_SPAN_TREE_FULL,           /* a child beyond BPFNFS_TREE_CHILDREN of one root */
	CNT_SPAN_PENDING_FULL,        /* no room to hold a child until its root ends */
	CNT_SPAN_TREE_LOST,           /* its root's state was evicted (trees map full) */
	CNT_MAX,
};

/* Every record on the ring buffer starts with this header. User space sorts
 * records by (kind, version), never by size, and counts (and skips) one whose
 * kind or version it does not know: a layout change bumps its kind's version. */
struct rec_hdr {
	__u16 kind;                   /* enum rec_kind */
	__u16 version;                /* of that kind's layout */
	__u32 size;                   /* bytes of the whole record, header included */
};

enum rec_kind {
	REC_OP = 1,                   /* struct op_event */
	REC_PATH = 2,                 /* struct path_event */
};
#define REC_OP_VERSION 2
#define REC_PATH_VERSION 1

/* One per-operation record: a slow op (bpfnfs trace), or one span of a kept tree.
 *
 * Span trees (CFG_F_TREES). A syscall-side op is a span; ops nested in it (an
 * atomic open's lookup) and the RPCs its thread starts (synchronous calls,
 * readahead and O_DIRECT READs, the WRITEs and COMMIT of fsync and close) are its
 * children: sunrpc:rpc_task_begin fires in the starting thread (rpc_execute), so
 * the thread's innermost op in flight is the parent. RPCs no op started
 * (writeback by the flusher, the v4 lease renewal) are roots of their own.
 * The tail decision is made here when a root ends: kept if it was slow, failed,
 * or sampled. Children wait in a map until then, and leave the kernel only with
 * a kept root (or, if they end after it, on their own once it is decided).
 * A COMMIT that writeback's completion starts in nfsiod while an fsync or a
 * close waits on that file is that op's child (nfs:nfs_initiate_commit names
 * the file in the starting thread, just before its rpc_task_begin). */
enum op_kind {
	OP_RPC = 1,
	OP_VFS = 2,                   /* vers holds the enum vfs_op, dev/fileid the file */
};

struct op_event {
	struct rec_hdr hdr;           /* REC_OP, REC_OP_VERSION */
	__u64 ts_ns;                  /* bpf_ktime_get_ns() at completion */
	__u64 latency_ns;             /* execute time for RPCs, call time for VFS */
	__u64 queue_ns;
	__u64 rtt_ns;
	__u64 cgroup_id;
	__u64 fileid;
	__u64 bytes;
	__u64 span_id;                /* random, never 0 (tree mode; else 0) */
	__u64 parent_id;              /* the parent's span_id; 0 for a root */
	__u64 trace_id;               /* the root's span_id: user space widens it to 128 bits */
	__u32 pid;                    /* tgid; tk_owner for RPCs on the BTF tier */
	__u32 tid;
	__u32 dev;                    /* kernel dev_t: major << 20 | minor */
	__u32 clid;
	__u32 task_id;
	__u32 xid;
	__s32 status;
	__u16 kind;                   /* enum op_kind */
	__u16 vers;
	__u32 keep;                   /* a kept root: KEEP_* reasons; 0 on children */
	__u32 _pad;
	char comm[BPFNFS_COMM_LEN];
	char proc[BPFNFS_PROC_LEN];
};

#define KEEP_SLOW 1u                  /* latency >= slow_ns */
#define KEEP_ERROR 2u                 /* status < 0 */
#define KEEP_SAMPLED 4u               /* chosen by the sample ratio */
#define BPFNFS_TREE_CHILDREN 64       /* children held per root; more are counted and dropped */

/* Path of a file the first time it is seen, so user space can name the
 * (dev, fileid) keys: components leaf first, each NUL-terminated, up to the
 * superblock root. */
#define BPFNFS_PATH_LEN 480
#define PATH_F_TRUNCATED 1u
struct path_event {
	struct rec_hdr hdr;           /* REC_PATH, REC_PATH_VERSION */
	__u64 fileid;
	__u32 dev;
	__u32 flags;
	__u32 len;                    /* bytes used in path */
	__u32 depth;
	char path[BPFNFS_PATH_LEN];
};

#define REC_HDR(kind_, version_, type_) \
	((struct rec_hdr){ .kind = (kind_), .version = (version_), .size = sizeof(type_) })

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
	__u16 rd_fileid, rd_offset, wb_fileid, wb_offset;
	/* nfs:nfs_initiate_read, nfs:nfs_commit_done (both tiers) */
	__u16 ir_dev, ir_fileid, ir_offset, cd_dev, cd_fileid;
	/* nfs:nfs_xdr_status, nfs4:nfs4_xdr_status (both tiers) */
	__u16 xs_client_id, xs_version, xs_error, xs_procedure;
	__u16 x4_client_id, x4_op, x4_error;
	/* nfs:nfs_initiate_write (both tiers) */
	__u16 iw_dev, iw_fileid, iw_offset;
	/* sunrpc:rpc_task_begin, nfs:nfs_initiate_commit (both tiers, span trees only) */
	__u16 tb_task_id, tb_client_id, ic_dev, ic_fileid;
	__u16 _pad[1];
};

struct bpfnfs_config {
	__u32 agent_tgid;             /* the agent's own pid: mount probe filter */
	__u32 flags;
	__u64 slow_ns;                /* emit an op_event when latency >= slow_ns */
	__u32 o_direct;               /* O_DIRECT of this architecture */
	/* 0: cgroup ids are cgroup v2's (bpf_get_current_cgroup_id). n > 0: the host
	 * has only cgroup v1 controller hierarchies (v2's id is the root for every
	 * task), so ids are the kernfs ids of the cgroups in the hierarchy of the
	 * controller whose subsystem id is n - 1 (the line order of /proc/cgroups). */
	__u32 cgroup_v1;
	/* Span trees: a root that is neither slow nor failed is kept when
	 * bpf_get_prandom_u32() < sample (ratio * 2^32; CFG_F_SAMPLE_ALL for 1). */
	__u32 sample;
	__u32 _pad;
	struct tp_offsets off;
};

/* Syscall-side filters and per-pid keying: user space rewrites it at run time
 * (SIGHUP), with a map update of the object's .data, and the programs read it
 * per event. A change takes effect with the next event, without reloading or
 * re-attaching anything. The only .data variable, so user space writes the
 * map's whole value. Its flags are the CFG_F_LIVE ones; .rodata's are the rest.
 * An update is not atomic for a reader: one event may see old and new fields. */
struct bpfnfs_live {
	__u32 flags;                  /* CFG_F_VFS_PID | CFG_F_FILTER_* */
	__u32 filter_tgid;            /* CFG_F_FILTER_PID: only this process */
	char filter_comm[BPFNFS_COMM_LEN]; /* CFG_F_FILTER_COMM */
};

#define CFG_F_EVENTS 1u           /* per-op records on the ring buffer */
#define CFG_F_VFS_PID 2u          /* key syscall-side stats by pid too */
#define CFG_F_FILTER_PID 4u
#define CFG_F_FILTER_COMM 8u
#define CFG_F_FILTER_CGROUP 16u   /* ids in the cgroup_filter map (the cgroup and below) */
#define CFG_F_IDMAP_ARGS 32u      /* kprobes on 5.12+: getattr/setattr/permission take idmap first */
#define CFG_F_RPC_KPROBE 64u      /* kprobe method: RPC per-op fields from kprobe/rpc_count_iostats_metrics */
#define CFG_F_DIRECT_FNS 256u     /* nfs_file_direct_{read,write} are hooked: they count direct bytes */
#define CFG_F_WRITE_COUNTED_EARLY 512u /* 5.19+: nfs_file_write counts before a failing sync */
#define CFG_F_TREES 1024u         /* per-op records as span trees, decided at the root (see op_event) */
#define CFG_F_SAMPLE_ALL 2048u    /* span trees: keep every root */
#define CFG_F_ATOMIC 128u         /* preemptible kernel: per-CPU counters with atomic adds, since two
				   * programs can interleave on one CPU */
/* The flags of struct bpfnfs_live (changeable at run time); the others are .rodata's. */
#define CFG_F_LIVE (CFG_F_VFS_PID | CFG_F_FILTER_PID | CFG_F_FILTER_COMM | CFG_F_FILTER_CGROUP)

#endif /* __BPFNFS_H */
