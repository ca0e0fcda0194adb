// SPDX-License-Identifier: GPL-2.0
/*
 * bpfnfs kernel programs.
 *
 * One object, two variants of each hook; the loader turns on one variant per
 * hook with bpf_program__set_autoload() (see probes/tiers.py):
 *
 *   tier "btf"     (module BTF for sunrpc/nfs, 5.11+): tp_btf + fexit, typed
 *                   access to rpc_task through CO-RE. Exact ns and every
 *                   mountstats per-op field.
 *   tier "tracefs" (no module BTF, e.g. 5.10): classic tracepoints whose field
 *                   offsets come from tracefs "format" files (in .rodata), a
 *                   raw_tp for nanosecond times, kprobes for nfs_file_*.
 *
 * Everything is aggregated in per-CPU maps that user space reads on an
 * interval; per-op records (slow ops, later traces) go to one ring buffer.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfnfs.h"

char LICENSE[] SEC("license") = "GPL";

/* The only .rodata variable: the loader writes the whole struct. */
const volatile struct bpfnfs_config cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	/* Per-CPU values are big: allocate on use, not max_entries x CPUs up front. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct rpc_key);
	__type(value, struct rpc_val);
} rpc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct clnt_info);
} clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* dev_t */
	__type(value, struct io_val);
} io_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32); /* agent thread id */
	__type(value, struct probe_val);
} mount_probe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* Errors by errno, from every layer (enum err_kind). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct err_key);
	__type(value, __u64);
} errors SEC(".maps");

/* Syscall-side ops per (mount, op, cgroup, comm[, pid]). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vfs_key);
	__type(value, struct vfs_val);
} vfs_stats SEC(".maps");

/* Start of each syscall-side op in flight, by (tid << 32 | op). */
struct vfs_entry {
	__u64 ts;
	struct inode *inode;
	struct dentry *dentry;        /* NULL where the hook has only an inode */
	struct file *file;            /* atomic open: the file it may open */
	__u32 direct;
	__u32 _pad;
};

/* Start-map key of nfs_atomic_open, accounted as VFS_OPEN when it opened the file. */
#define VFS_ATOMIC_OPEN (VFS_OP_MAX + 1)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct vfs_entry);
} vfs_start SEC(".maps");

/* Per-file counters. max_entries is set by the loader (--max-files). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct file_key);
	__type(value, struct file_val);
} files SEC(".maps");

/* Wire I/O billed to the process that caused it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct owner_key);
	__type(value, struct owner_val);
} owners SEC(".maps");

/* READ in flight: who issued it (nfs_initiate_read) until it completes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct read_tag);
	__type(value, struct task_ident);
} read_tags SEC(".maps");

/* READ/WRITE RPCs in flight: initiate time, for the per-file RPC latency. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct read_tag);
	__type(value, __u64);
} pgio_start SEC(".maps");

/* --cgroup: the cgroup and its descendants, kept current by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

/* Zero values for lookup-or-init: too big for the 512-byte stack. In .bss,
 * not .rodata, so that cfg stays the only .rodata variable. */
static struct rpc_val zero_rpc_val;
static struct io_val zero_io_val;
static struct vfs_val zero_vfs_val;
static struct owner_val zero_owner_val;

/* Defined with the attribution programs below; the tier programs call them. */
static __always_inline void read_done_owner(__u32 dev, __u64 fileid, __s64 offset, __u32 count_);
static __always_inline void write_done_owner(__u32 dev, __u64 fileid, __s64 offset, __u32 count_,
					     bool commit);

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/*
 * Bucket k holds (2^k µs, 2^(k+1) µs], bucket 0 holds [0, 2 µs]: upper bounds
 * are inclusive, so a bucket maps onto a Prometheus "le" bucket exactly.
 */
static __always_inline __u32 hist_slot(__u64 ns)
{
	__u64 us = (ns + 999) / 1000;
	__u32 slot;

	if (us <= 2)
		return 0;
	slot = log2_u64(us - 1);
	return slot < BPFNFS_HIST_SLOTS ? slot : BPFNFS_HIST_SLOTS - 1;
}

/* The compiler proves slot < 32 and drops a C mask; the verifier cannot see that
 * proof through register copies. An asm mask on the very register used sticks. */
static __always_inline __u64 hist_index(__u64 ns)
{
	__u64 s = hist_slot(ns);

	asm volatile("%[s] &= 31" : [s] "+r"(s));
	return s;
}

static __always_inline struct rpc_val *rpc_val_get(const struct rpc_key *key)
{
	struct rpc_val *v = bpf_map_lookup_elem(&rpc_stats, key);

	if (v)
		return v;
	/* EEXIST from a racing CPU is fine: the lookup below finds its entry. */
	bpf_map_update_elem(&rpc_stats, key, &zero_rpc_val, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&rpc_stats, key);
	if (!v)
		count(CNT_RPC_MAP_FULL);
	return v;
}

static __always_inline struct io_val *io_val_get(__u32 dev)
{
	struct io_val *v = bpf_map_lookup_elem(&io_stats, &dev);

	if (v)
		return v;
	bpf_map_update_elem(&io_stats, &dev, &zero_io_val, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&io_stats, &dev);
	if (!v)
		count(CNT_IO_MAP_FULL);
	return v;
}

static __always_inline void err_account(__u32 id, __u16 kind, __u16 vers, __s64 err, __u32 opnum,
					const char *op)
{
	struct err_key k = {};
	__u64 one = 1, *v;
	long ret;

	k.id = id;
	k.kind = kind;
	k.vers = vers;
	k.err = err < 0 ? -err : err;
	k.opnum = opnum;
	if (op)
		__builtin_memcpy(k.op, op, sizeof(k.op));
	v = bpf_map_lookup_elem(&errors, &k);
	if (v) {
		*v += 1;
		return;
	}
	/* Inserting sets this CPU's slot to 1. EEXIST: another CPU inserted it first. */
	ret = bpf_map_update_elem(&errors, &k, &one, BPF_NOEXIST);
	if (ret == -17 /* EEXIST */) {
		v = bpf_map_lookup_elem(&errors, &k);
		if (v)
			*v += 1;
	} else if (ret) {
		count(CNT_ERR_MAP_FULL);
	}
}

/* Per-CPU value: plain adds are safe, no other CPU writes this copy. */
static __always_inline void rpc_account(const struct rpc_key *key, __u64 queue, __u64 rtt,
					__u64 execute, __s32 status, __u64 ntrans, __u64 timeouts,
					__u64 sent, __u64 recv)
{
	struct rpc_val *v = rpc_val_get(key);
	count(CNT_RPC_EVENTS);
	if (!v)
		return;
	v->ops += 1;
	v->ntrans += ntrans;
	v->timeouts += timeouts;
	v->bytes_sent += sent;
	v->bytes_recv += recv;
	v->queue_ns += queue;
	v->rtt_ns += rtt;
	v->execute_ns += execute;
	if (status < 0) {
		v->errors += 1;
		err_account(key->clid, ERR_RPC, key->vers, status, 0, key->proc);
	}
	v->queue_hist[hist_index(queue)] += 1;
	v->rtt_hist[hist_index(rtt)] += 1;
	v->execute_hist[hist_index(execute)] += 1;
}

static __always_inline void emit_rpc_event(const struct rpc_key *key, __u64 queue, __u64 rtt,
					   __u64 execute, __s32 status, __u32 task_id, __u32 xid,
					   __u32 owner)
{
	struct op_event *e;
	__u64 id;

	if (!(cfg.flags & CFG_F_EVENTS) || execute < cfg.slow_ns)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_RINGBUF_DROPS);
		return;
	}
	id = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->latency_ns = execute;
	e->queue_ns = queue;
	e->rtt_ns = rtt;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->fileid = 0;
	e->bytes = 0;
	e->pid = owner ? owner : id >> 32;
	e->tid = (__u32)id;
	e->dev = 0;
	e->clid = key->clid;
	e->task_id = task_id;
	e->xid = xid;
	e->status = status;
	e->kind = OP_RPC;
	e->vers = key->vers;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__builtin_memcpy(e->proc, key->proc, sizeof(e->proc));
	/* No wakeup: user space drains on a timer, in batches. */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* ------------------------------------------------------------------------ */
/* Tier "btf": typed access to the task through module BTF.                 */
/* ------------------------------------------------------------------------ */

static __always_inline void note_client(const struct rpc_clnt *clnt)
{
	struct clnt_info info = {};
	struct rpc_clnt *parent;
	__u32 clid = clnt->cl_clid;

	if (bpf_map_lookup_elem(&clients, &clid))
		return;
	/* Probe reads, not direct loads: `p ? p->x : y` would otherwise become one
	 * load from two kinds of pointer, which the verifier rejects. */
	parent = BPF_CORE_READ(clnt, cl_parent);
	info.parent = parent ? BPF_CORE_READ(parent, cl_clid) : clid;
	info.vers = clnt->cl_vers;
	info.flags = CLNT_F_PARENT_KNOWN;
	bpf_probe_read_kernel_str(info.prog, sizeof(info.prog), clnt->cl_program->name);
	if (bpf_map_update_elem(&clients, &clid, &info, BPF_NOEXIST) == -7 /* E2BIG: full */)
		count(CNT_CLNT_MAP_FULL);
}

SEC("tp_btf/rpc_stats_latency")
int BPF_PROG(btf_rpc_stats_latency, const struct rpc_task *task, ktime_t backlog, ktime_t rtt,
	     ktime_t execute)
{
	const struct rpc_clnt *clnt;
	const struct rpc_rqst *req;
	const struct rpc_procinfo *proc;
	struct rpc_key key = {};
	const char *name;
	__u64 ntrans = 0, sent = 0, recv = 0;

	/* 6.12+ types tracepoint arguments as maybe-NULL: check before use. */
	if (!task)
		return 0;
	clnt = task->tk_client;
	req = task->tk_rqstp;
	proc = task->tk_msg.rpc_proc;
	if (!clnt || !proc)
		return 0;
	key.clid = clnt->cl_clid;
	key.vers = clnt->cl_vers;
	name = proc->p_name;
	if (name)
		bpf_probe_read_kernel_str(key.proc, sizeof(key.proc), name);
	else
		__builtin_memcpy(key.proc, "NULL", 5);
	if (req) {
		/* mountstats: om_ntrans += max(rq_ntrans, 1) */
		ntrans = req->rq_ntrans;
		if ((__s64)ntrans < 1)
			ntrans = 1;
		sent = req->rq_xmit_bytes_sent;
		recv = req->rq_reply_bytes_recvd;
	}
	note_client(clnt);
	rpc_account(&key, backlog, rtt, execute, task->tk_status, ntrans, task->tk_timeouts, sent,
		    recv);
	emit_rpc_event(&key, backlog, rtt, execute, task->tk_status, task->tk_pid,
		       req ? bpf_ntohl(req->rq_xid) : 0, task->tk_owner);
	return 0;
}

/* mountstats adds the return value of nfs_file_read/write to normal* bytes,
 * and the O_DIRECT path's byte count to direct* bytes. */
static __always_inline void io_account(__u32 dev, bool direct, ssize_t ret, bool write)
{
	struct io_val *v;

	if (ret <= 0)
		return;
	v = io_val_get(dev);
	if (!v)
		return;
	if (write) {
		v->write_calls += 1;
		if (direct)
			v->direct_write_bytes += ret;
		else
			v->write_bytes += ret;
	} else {
		v->read_calls += 1;
		if (direct)
			v->direct_read_bytes += ret;
		else
			v->read_bytes += ret;
	}
}

static __always_inline void server_bytes(__u32 dev, __u32 count, bool write)
{
	struct io_val *v = io_val_get(dev);

	if (!v)
		return;
	if (write) {
		v->server_write_bytes += count;
		v->write_rpcs += 1;
	} else {
		v->server_read_bytes += count;
		v->read_rpcs += 1;
	}
}

SEC("tp_btf/nfs_readpage_done")
int BPF_PROG(btf_nfs_readpage_done, const struct rpc_task *task, const struct nfs_pgio_header *hdr)
{
	if (!hdr)
		return 0;
	struct inode *inode = hdr->inode;

	server_bytes(inode->i_sb->s_dev, hdr->res.count, false);
	read_done_owner(inode->i_sb->s_dev, inode->i_ino, hdr->args.offset, hdr->res.count);
	return 0;
}

SEC("tp_btf/nfs_writeback_done")
int BPF_PROG(btf_nfs_writeback_done, const struct rpc_task *task, const struct nfs_pgio_header *hdr)
{
	if (!hdr)
		return 0;
	struct inode *inode = hdr->inode;

	server_bytes(inode->i_sb->s_dev, hdr->res.count, true);
	write_done_owner(inode->i_sb->s_dev, inode->i_ino, hdr->args.offset, hdr->res.count, false);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Tier "tracefs": no module BTF. Field offsets come from tracefs formats.  */
/* ------------------------------------------------------------------------ */

/* Variable ctx offsets are rejected by the verifier: read through a probe. */
static __always_inline __u32 ctx_u32(void *ctx, __u16 off)
{
	__u32 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), ctx + off);
	return v;
}

static __always_inline __u64 ctx_u64(void *ctx, __u16 off)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), ctx + off);
	return v;
}

/* __data_loc fields hold (len << 16 | offset) of a string inside the record. */
static __always_inline void ctx_str(void *ctx, __u16 off, char *dst, __u32 size)
{
	__u32 loc = ctx_u32(ctx, off);

	bpf_probe_read_kernel_str(dst, size, ctx + (loc & 0xffff));
}

/*
 * The classic tracepoint has the key (client, procedure) but times only in
 * µs (ktime_to_us); raw_tp has the exact ktime_t values but no offsets to
 * read the task. Both programs hang off the same tracepoint call and run
 * back to back on one CPU with preemption off, so each stashes its half in
 * a per-CPU slot and whichever runs second accounts the pair. The µs values
 * must equal ns / 1000, which proves the pairing.
 */
struct sl_half {
	__u64 have_raw;
	__u64 have_tp;
	__u64 ns[3];          /* backlog, rtt, execute from raw_tp */
	__u64 us[3];          /* the same from the classic tracepoint */
	__s32 status;
	__u32 task_id;
	__u32 xid;
	__u32 owner;
	/* From the rpc_task itself, when vmlinux BTF describes it (5.10 does, though
	 * sunrpc is a module): the per-op fields mountstats has beyond the times. */
	__u64 ntrans, timeouts, sent, recv;
	struct rpc_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_half);
} sl_pair SEC(".maps");

/* rpc_task_end fires in rpc_exit_task() just before the stats are counted:
 * its status is tk_status at counting time. Keyed by client << 32 | task. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __s32);
} task_status SEC(".maps");

static __always_inline void sl_account(struct sl_half *h)
{
	__u64 q = h->ns[0], r = h->ns[1], x = h->ns[2];

	if (q / 1000 != h->us[0] || r / 1000 != h->us[1] || x / 1000 != h->us[2]) {
		/* Not the same event: fall back to the µs values. */
		count(CNT_PAIR_MISS);
		q = h->us[0] * 1000;
		r = h->us[1] * 1000;
		x = h->us[2] * 1000;
	}
	rpc_account(&h->key, q, r, x, h->status, h->ntrans, h->timeouts, h->sent, h->recv);
	emit_rpc_event(&h->key, q, r, x, h->status, h->task_id, h->xid, h->owner);
	h->have_raw = 0;
	h->have_tp = 0;
}

SEC("raw_tp/rpc_stats_latency")
int raw_rpc_stats_latency(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	struct sl_half *h = bpf_map_lookup_elem(&sl_pair, &zero);

	if (!h)
		return 0;
	h->ns[0] = ctx->args[1];
	h->ns[1] = ctx->args[2];
	h->ns[2] = ctx->args[3];
	h->ntrans = h->timeouts = h->sent = h->recv = 0;
	h->owner = 0;
	if (bpf_core_type_exists(struct rpc_task)) {
		const struct rpc_task *task = (const void *)ctx->args[0];
		const struct rpc_rqst *req = BPF_CORE_READ(task, tk_rqstp);

		if (req) {
			h->ntrans = BPF_CORE_READ(req, rq_ntrans);
			if ((__s64)h->ntrans < 1)
				h->ntrans = 1;
			h->sent = BPF_CORE_READ(req, rq_xmit_bytes_sent);
			h->recv = BPF_CORE_READ(req, rq_reply_bytes_recvd);
		}
		h->timeouts = BPF_CORE_READ(task, tk_timeouts);
		h->owner = BPF_CORE_READ(task, tk_owner);
	}
	if (h->have_tp)
		sl_account(h);
	else
		h->have_raw = 1;
	return 0;
}

SEC("tracepoint/sunrpc/rpc_stats_latency")
int tp_rpc_stats_latency(void *ctx)
{
	__u32 zero = 0;
	struct sl_half *h = bpf_map_lookup_elem(&sl_pair, &zero);
	__u64 tkey;
	__s32 *st;

	if (!h)
		return 0;
	__builtin_memset(&h->key, 0, sizeof(h->key));
	h->key.clid = ctx_u32(ctx, cfg.off.sl_client_id);
	h->key.vers = ctx_u32(ctx, cfg.off.sl_version);
	ctx_str(ctx, cfg.off.sl_procname, h->key.proc, sizeof(h->key.proc));
	h->task_id = ctx_u32(ctx, cfg.off.sl_task_id);
	h->xid = ctx_u32(ctx, cfg.off.sl_xid);
	h->us[0] = ctx_u64(ctx, cfg.off.sl_backlog);
	h->us[1] = ctx_u64(ctx, cfg.off.sl_rtt);
	h->us[2] = ctx_u64(ctx, cfg.off.sl_execute);
	if (!bpf_map_lookup_elem(&clients, &h->key.clid)) {
		/* No parent pointer on this tier: user space infers it. */
		struct clnt_info info = {};

		info.parent = h->key.clid;
		info.vers = h->key.vers;
		ctx_str(ctx, cfg.off.sl_progname, info.prog, sizeof(info.prog));
		bpf_map_update_elem(&clients, &h->key.clid, &info, BPF_NOEXIST);
	}
	tkey = ((__u64)h->key.clid << 32) | h->task_id;
	st = bpf_map_lookup_elem(&task_status, &tkey);
	h->status = st ? *st : 0;
	if (st)
		bpf_map_delete_elem(&task_status, &tkey);
	if (h->have_raw) {
		sl_account(h);
	} else {
		h->have_tp = 1;
	}
	return 0;
}

SEC("tracepoint/sunrpc/rpc_task_end")
int tp_rpc_task_end(void *ctx)
{
	__u64 tkey = ((__u64)ctx_u32(ctx, cfg.off.te_client_id) << 32) | ctx_u32(ctx, cfg.off.te_task_id);
	__s32 status = (__s32)ctx_u32(ctx, cfg.off.te_status);

	bpf_map_update_elem(&task_status, &tkey, &status, BPF_ANY);
	return 0;
}

/* Mount probe, both tiers: the agent's statfs() on a mount point issues one
 * FSSTAT (v3) or STATFS (v4) RPC on that superblock's own rpc_clnt. */
SEC("tracepoint/sunrpc/rpc_request")
int tp_rpc_request(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct probe_val pv = {};
	__u32 tid = (__u32)id;

	if ((id >> 32) != cfg.agent_tgid)
		return 0;
	pv.clid = ctx_u32(ctx, cfg.off.rq_client_id);
	pv.vers = ctx_u32(ctx, cfg.off.rq_version);
	ctx_str(ctx, cfg.off.rq_procname, pv.proc, sizeof(pv.proc));
	bpf_map_update_elem(&mount_probe, &tid, &pv, BPF_ANY);
	return 0;
}

SEC("tracepoint/nfs/nfs_readpage_done")
int tp_nfs_readpage_done(void *ctx)
{
	__u32 dev = ctx_u32(ctx, cfg.off.rd_dev), n = ctx_u32(ctx, cfg.off.rd_res_count);

	server_bytes(dev, n, false);
	read_done_owner(dev, ctx_u64(ctx, cfg.off.rd_fileid), ctx_u64(ctx, cfg.off.rd_offset), n);
	return 0;
}

SEC("tracepoint/nfs/nfs_writeback_done")
int tp_nfs_writeback_done(void *ctx)
{
	__u32 dev = ctx_u32(ctx, cfg.off.wb_dev), n = ctx_u32(ctx, cfg.off.wb_res_count);

	server_bytes(dev, n, true);
	write_done_owner(dev, ctx_u64(ctx, cfg.off.wb_fileid), ctx_u64(ctx, cfg.off.wb_offset), n,
			 false);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Syscall side: the NFS client's file and inode operations.                */
/* Entry stashes (ts, inode, dentry) per (thread, op); exit accounts. The    */
/* btf tier enters through fentry/fexit, the tracefs tier through kprobes;   */
/* both share everything below.                                             */
/* ------------------------------------------------------------------------ */

#define MAX_ERRNO 4095

static __always_inline bool comm_matches(void)
{
	char c[BPFNFS_COMM_LEN];
	int i;

	bpf_get_current_comm(c, sizeof(c));
	for (i = 0; i < BPFNFS_COMM_LEN; i++) {
		if (c[i] != cfg.filter_comm[i])
			return false;
		if (!c[i])
			break;
	}
	return true;
}

/* --pid / --comm / --cgroup, checked once per op at entry. */
static __always_inline bool filtered_out(void)
{
	__u32 f = cfg.flags;

	if (!(f & (CFG_F_FILTER_PID | CFG_F_FILTER_COMM | CFG_F_FILTER_CGROUP)))
		return false;
	if ((f & CFG_F_FILTER_PID) && (bpf_get_current_pid_tgid() >> 32) != cfg.filter_tgid)
		goto out;
	if ((f & CFG_F_FILTER_COMM) && !comm_matches())
		goto out;
	if (f & CFG_F_FILTER_CGROUP) {
		__u64 cg = bpf_get_current_cgroup_id();

		if (!bpf_map_lookup_elem(&cgroup_filter, &cg))
			goto out;
	}
	return false;
out:
	count(CNT_FILTERED);
	return true;
}

static __always_inline void vfs_enter2(__u32 op, struct inode *inode, struct dentry *dentry, __u32 direct,
				       struct file *file)
{
	__u64 key = (bpf_get_current_pid_tgid() << 32) | op;
	struct vfs_entry e = {};

	if (!inode || filtered_out())
		return;
	e.ts = bpf_ktime_get_ns();
	e.inode = inode;
	e.dentry = dentry;
	e.file = file;
	e.direct = direct;
	if (bpf_map_update_elem(&vfs_start, &key, &e, BPF_ANY))
		count(CNT_VFS_START_FULL);
}

static __always_inline void vfs_enter(__u32 op, struct inode *inode, struct dentry *dentry, __u32 direct)
{
	vfs_enter2(op, inode, dentry, direct, 0);
}

static __always_inline void vfs_enter_file(__u32 op, struct file *f)
{
	if (!f)
		return;
	vfs_enter(op, BPF_CORE_READ(f, f_inode), BPF_CORE_READ(f, f_path.dentry),
		  (BPF_CORE_READ(f, f_flags) & cfg.o_direct) ? 1 : 0);
}

static __always_inline void vfs_enter_kiocb(__u32 op, struct kiocb *iocb)
{
	vfs_enter_file(op, BPF_CORE_READ(iocb, ki_filp));
}

static __always_inline void vfs_enter_dentry(__u32 op, struct dentry *d)
{
	if (d)
		vfs_enter(op, BPF_CORE_READ(d, d_inode), d, 0);
}

/* Leaf-first path components up to the superblock root, into a ring record.
 * Offsets are masked so the verifier can bound every write. */
static __always_inline void emit_path(__u32 dev, __u64 fileid, struct dentry *d)
{
	struct path_event *e;
	__u32 off = 0, depth = 0;
	int i;

	if (!d)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_RINGBUF_DROPS);
		return;
	}
	e->kind = OP_PATH;
	e->fileid = fileid;
	e->dev = dev;
	e->flags = 0;
	for (i = 0; i < 32; i++) {
		struct dentry *parent = BPF_CORE_READ(d, d_parent);
		const unsigned char *name;
		long n;

		if (!parent || parent == d)
			break;
		if (off > 255) {
			e->flags |= PATH_F_TRUNCATED;
			break;
		}
		name = BPF_CORE_READ(d, d_name.name);
		n = bpf_probe_read_kernel_str(&e->path[off & 255], 224, name);
		if (n <= 0)
			break;
		off += n;
		depth++;
		d = parent;
	}
	if (i == 32)
		e->flags |= PATH_F_TRUNCATED;
	e->len = off;
	e->depth = depth;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

static __always_inline void current_ident(struct task_ident *id)
{
	id->cgroup_id = bpf_get_current_cgroup_id();
	id->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(id->comm, sizeof(id->comm));
}

static __always_inline void file_account(__u32 op, __u32 dev, __u64 fileid, struct dentry *d, __u64 lat,
					 __s64 bytes, bool err)
{
	struct file_key k = { .dev = dev, .fileid = fileid };
	struct file_val *v = bpf_map_lookup_elem(&files, &k);

	if (!v) {
		struct file_val zero = {};

		if (!bpf_map_update_elem(&files, &k, &zero, BPF_NOEXIST))
			count(CNT_FILE_INSERTS);
		v = bpf_map_lookup_elem(&files, &k);
		if (!v)
			return;
	}
	/* Shared across CPUs (plain LRU hash): atomic adds. */
	if (op == VFS_READ) {
		__sync_fetch_and_add(&v->reads, 1);
		if (bytes > 0)
			__sync_fetch_and_add(&v->read_bytes, bytes);
	} else if (op == VFS_WRITE) {
		__sync_fetch_and_add(&v->writes, 1);
		if (bytes > 0) {
			/* Zeroed: bpf_get_current_comm leaves bytes after the NUL as they
			 * were, and these bytes end up in map keys. */
			struct task_ident id = {};

			__sync_fetch_and_add(&v->write_bytes, bytes);
			/* Dirtier of record for the flush that follows. A race between
			 * two writers here leaves one of them: the same bound as below. */
			current_ident(&id);
			if (v->dirtier_cgroup && v->dirtier_cgroup != id.cgroup_id)
				v->flags |= FILE_F_MIXED;
			v->dirtier_cgroup = id.cgroup_id;
			v->dirtier_pid = id.pid;
			__builtin_memcpy(v->dirtier_comm, id.comm, sizeof(id.comm));
		}
	} else {
		__sync_fetch_and_add(&v->other_ops, 1);
		if (op == VFS_FSYNC && !err)
			v->flags &= ~FILE_F_MIXED;
	}
	if (err)
		__sync_fetch_and_add(&v->errors, 1);
	__sync_fetch_and_add(&v->latency_ns, lat);
	if (!(v->flags & FILE_F_NAMED)) {
		v->flags |= FILE_F_NAMED;
		emit_path(dev, fileid, d);
	}
}

static __always_inline void emit_vfs_event(__u32 op, __u32 dev, __u64 fileid, __u64 lat, __s64 ret,
					   __s32 status)
{
	struct op_event *e;
	__u64 id;

	if (!(cfg.flags & CFG_F_EVENTS) || lat < cfg.slow_ns)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_RINGBUF_DROPS);
		return;
	}
	id = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->latency_ns = lat;
	e->queue_ns = 0;
	e->rtt_ns = 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->fileid = fileid;
	e->bytes = ret > 0 && op <= VFS_WRITE ? ret : 0;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->dev = dev;
	e->clid = 0;
	e->task_id = 0;
	e->xid = 0;
	e->status = status;
	e->kind = OP_VFS;
	e->vers = op; /* enum vfs_op: user space names it */
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__builtin_memset(e->proc, 0, sizeof(e->proc));
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* ret: the function's return value; for lookup a dentry pointer or ERR_PTR,
 * for page_mkwrite a vm_fault_t. */
static __always_inline void vfs_exit(__u32 op, __s64 ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 skey = (pid_tgid << 32) | op;
	struct vfs_entry *e = bpf_map_lookup_elem(&vfs_start, &skey);
	struct vfs_key k = {};
	struct vfs_val *v;
	struct inode *inode;
	struct dentry *dentry;
	struct file *file;
	__u64 lat, fileid;
	__s32 status = 0;
	__u32 dev, direct;

	if (!e)
		return;
	lat = bpf_ktime_get_ns() - e->ts;
	inode = e->inode;
	dentry = e->dentry;
	direct = e->direct;
	file = e->file;
	bpf_map_delete_elem(&vfs_start, &skey);

	if (op == VFS_ATOMIC_OPEN) {
		/* NFSv4 opens mostly happen here (OPEN carries the lookup), not in
		 * nfs4_file_open. finish_no_open() leaves f_inode unset: then the
		 * open proper follows through f_op->open and is counted there. */
		op = VFS_OPEN;
		if (ret == 0) {
			inode = BPF_CORE_READ(file, f_inode);
			if (!inode)
				return;
			dentry = BPF_CORE_READ(file, f_path.dentry);
		} else {
			dentry = 0; /* the error belongs to the mount, not to the directory */
		}
	}

	if (op == VFS_LOOKUP) {
		if (ret < 0 && ret >= -MAX_ERRNO)
			status = ret;
	} else if (op == VFS_PAGE_MKWRITE) {
		if (ret & 0x43) /* VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV */
			status = -14; /* EFAULT */
	} else if (ret < 0) {
		status = ret;
	}
	dev = BPF_CORE_READ(inode, i_sb, s_dev);
	fileid = BPF_CORE_READ(inode, i_ino);

	if (op == VFS_READ || op == VFS_WRITE)
		io_account(dev, direct, ret, op == VFS_WRITE);

	k.dev = dev;
	k.op = op;
	k.pid = (cfg.flags & CFG_F_VFS_PID) ? pid_tgid >> 32 : 0;
	k.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(k.comm, sizeof(k.comm));
	v = bpf_map_lookup_elem(&vfs_stats, &k);
	if (!v) {
		bpf_map_update_elem(&vfs_stats, &k, &zero_vfs_val, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&vfs_stats, &k);
	}
	if (v) {
		v->calls += 1;
		if (status)
			v->errors += 1;
		else if ((op == VFS_READ || op == VFS_WRITE) && ret > 0)
			v->bytes += ret;
		v->latency_ns += lat;
		v->hist[hist_index(lat)] += 1;
	} else {
		count(CNT_VFS_MAP_FULL);
	}
	if (status)
		err_account(dev, ERR_VFS, 0, status, op, 0);
	/* Permission checks have no dentry and would only add noise per file;
	 * a failed atomic open has no file yet. */
	if (op != VFS_PERMISSION && !(op == VFS_OPEN && !dentry)) {
		if (op == VFS_LOOKUP && dentry) /* billed to the directory searched */
			dentry = BPF_CORE_READ(dentry, d_parent);
		file_account(op, dev, fileid, dentry, lat, ret, status != 0);
	}
	emit_vfs_event(op, dev, fileid, lat, ret, status);
}

/* ---- btf tier: fentry/fexit. Argument lists as in 5.12+ (idmap first). ---- */

SEC("fentry/nfs_file_read")
int BPF_PROG(fe_nfs_file_read, struct kiocb *iocb)
{
	vfs_enter_kiocb(VFS_READ, iocb);
	return 0;
}

SEC("fexit/nfs_file_read")
int BPF_PROG(fx_nfs_file_read, struct kiocb *iocb, struct iov_iter *to, ssize_t ret)
{
	vfs_exit(VFS_READ, ret);
	return 0;
}

SEC("fentry/nfs_file_write")
int BPF_PROG(fe_nfs_file_write, struct kiocb *iocb)
{
	vfs_enter_kiocb(VFS_WRITE, iocb);
	return 0;
}

SEC("fexit/nfs_file_write")
int BPF_PROG(fx_nfs_file_write, struct kiocb *iocb, struct iov_iter *from, ssize_t ret)
{
	vfs_exit(VFS_WRITE, ret);
	return 0;
}

SEC("fentry/nfs_file_open")
int BPF_PROG(fe_nfs_file_open, struct inode *inode, struct file *f)
{
	vfs_enter(VFS_OPEN, inode, BPF_CORE_READ(f, f_path.dentry), 0);
	return 0;
}

SEC("fexit/nfs_file_open")
int BPF_PROG(fx_nfs_file_open, struct inode *inode, struct file *f, int ret)
{
	vfs_exit(VFS_OPEN, ret);
	return 0;
}

SEC("fentry/nfs4_file_open")
int BPF_PROG(fe_nfs4_file_open, struct inode *inode, struct file *f)
{
	vfs_enter(VFS_OPEN, inode, BPF_CORE_READ(f, f_path.dentry), 0);
	return 0;
}

SEC("fexit/nfs4_file_open")
int BPF_PROG(fx_nfs4_file_open, struct inode *inode, struct file *f, int ret)
{
	vfs_exit(VFS_OPEN, ret);
	return 0;
}

SEC("fentry/nfs_atomic_open")
int BPF_PROG(fe_nfs_atomic_open, struct inode *dir, struct dentry *d, struct file *f)
{
	vfs_enter2(VFS_ATOMIC_OPEN, dir, d, 0, f);
	return 0;
}

SEC("fexit/nfs_atomic_open")
int BPF_PROG(fx_nfs_atomic_open, struct inode *dir, struct dentry *d, struct file *f, unsigned int flags,
	     unsigned short mode, int ret)
{
	vfs_exit(VFS_ATOMIC_OPEN, ret);
	return 0;
}

SEC("fentry/nfs_file_flush")
int BPF_PROG(fe_nfs_file_flush, struct file *f)
{
	vfs_enter_file(VFS_FLUSH, f);
	return 0;
}

SEC("fexit/nfs_file_flush")
int BPF_PROG(fx_nfs_file_flush, struct file *f, void *id, int ret)
{
	vfs_exit(VFS_FLUSH, ret);
	return 0;
}

SEC("fentry/nfs4_file_flush")
int BPF_PROG(fe_nfs4_file_flush, struct file *f)
{
	vfs_enter_file(VFS_FLUSH, f);
	return 0;
}

SEC("fexit/nfs4_file_flush")
int BPF_PROG(fx_nfs4_file_flush, struct file *f, void *id, int ret)
{
	vfs_exit(VFS_FLUSH, ret);
	return 0;
}

SEC("fentry/nfs_file_fsync")
int BPF_PROG(fe_nfs_file_fsync, struct file *f)
{
	vfs_enter_file(VFS_FSYNC, f);
	return 0;
}

SEC("fexit/nfs_file_fsync")
int BPF_PROG(fx_nfs_file_fsync, struct file *f, loff_t start, loff_t end, int datasync, int ret)
{
	vfs_exit(VFS_FSYNC, ret);
	return 0;
}

SEC("fentry/nfs_getattr")
int BPF_PROG(fe_nfs_getattr, void *idmap, const struct path *path)
{
	vfs_enter_dentry(VFS_GETATTR, BPF_CORE_READ(path, dentry));
	return 0;
}

SEC("fexit/nfs_getattr")
int BPF_PROG(fx_nfs_getattr, void *idmap, const struct path *path, void *stat, u32 mask,
	     unsigned int flags, int ret)
{
	vfs_exit(VFS_GETATTR, ret);
	return 0;
}

SEC("fentry/nfs_setattr")
int BPF_PROG(fe_nfs_setattr, void *idmap, struct dentry *d)
{
	vfs_enter_dentry(VFS_SETATTR, d);
	return 0;
}

SEC("fexit/nfs_setattr")
int BPF_PROG(fx_nfs_setattr, void *idmap, struct dentry *d, void *attr, int ret)
{
	vfs_exit(VFS_SETATTR, ret);
	return 0;
}

SEC("fentry/nfs_lookup")
int BPF_PROG(fe_nfs_lookup, struct inode *dir, struct dentry *d)
{
	vfs_enter(VFS_LOOKUP, dir, d, 0);
	return 0;
}

/* The verifier types the return value as a dentry pointer, on which no
 * arithmetic is allowed: copy it out of the context as a plain number. */
SEC("fexit/nfs_lookup")
int fx_nfs_lookup(unsigned long long *ctx)
{
	long ret = 0;

	bpf_probe_read_kernel(&ret, sizeof(ret), &ctx[3]);
	vfs_exit(VFS_LOOKUP, ret);
	return 0;
}

SEC("fentry/nfs_readdir")
int BPF_PROG(fe_nfs_readdir, struct file *f)
{
	vfs_enter_file(VFS_READDIR, f);
	return 0;
}

SEC("fexit/nfs_readdir")
int BPF_PROG(fx_nfs_readdir, struct file *f, void *dctx, int ret)
{
	vfs_exit(VFS_READDIR, ret);
	return 0;
}

SEC("fentry/nfs_permission")
int BPF_PROG(fe_nfs_permission, void *idmap, struct inode *inode)
{
	vfs_enter(VFS_PERMISSION, inode, 0, 0);
	return 0;
}

SEC("fexit/nfs_permission")
int BPF_PROG(fx_nfs_permission, void *idmap, struct inode *inode, int mask, int ret)
{
	vfs_exit(VFS_PERMISSION, ret);
	return 0;
}

SEC("fentry/nfs_vm_page_mkwrite")
int BPF_PROG(fe_nfs_vm_page_mkwrite, struct vm_fault *vmf)
{
	vfs_enter_file(VFS_PAGE_MKWRITE, BPF_CORE_READ(vmf, vma, vm_file));
	return 0;
}

SEC("fexit/nfs_vm_page_mkwrite")
int BPF_PROG(fx_nfs_vm_page_mkwrite, struct vm_fault *vmf, unsigned int ret)
{
	vfs_exit(VFS_PAGE_MKWRITE, ret);
	return 0;
}

/* ---- tracefs tier: kprobes. Argument lists as in 5.10 (no idmap). ---- */

/* RET: the function's return type. An int return leaves the upper half of rax
 * undefined, so it must be narrowed before its sign means anything. */
#define KPROBE_PAIR(fn, OP, RET, enter_stmt)                    \
	SEC("kprobe/" #fn)                                       \
	int BPF_KPROBE(kp_##fn, void *a0, void *a1)              \
	{                                                        \
		enter_stmt;                                      \
		return 0;                                        \
	}                                                        \
	SEC("kretprobe/" #fn)                                    \
	int BPF_KRETPROBE(krp_##fn, long ret)                    \
	{                                                        \
		vfs_exit(OP, (RET)ret);                          \
		return 0;                                        \
	}

KPROBE_PAIR(nfs_file_read, VFS_READ, long, vfs_enter_kiocb(VFS_READ, a0))
KPROBE_PAIR(nfs_file_write, VFS_WRITE, long, vfs_enter_kiocb(VFS_WRITE, a0))
KPROBE_PAIR(nfs_file_open, VFS_OPEN, int,
	    vfs_enter(VFS_OPEN, a0, BPF_CORE_READ((struct file *)a1, f_path.dentry), 0))
KPROBE_PAIR(nfs4_file_open, VFS_OPEN, int,
	    vfs_enter(VFS_OPEN, a0, BPF_CORE_READ((struct file *)a1, f_path.dentry), 0))
SEC("kprobe/nfs_atomic_open")
int BPF_KPROBE(kp_nfs_atomic_open, struct inode *dir, struct dentry *d, struct file *f)
{
	vfs_enter2(VFS_ATOMIC_OPEN, dir, d, 0, f);
	return 0;
}

SEC("kretprobe/nfs_atomic_open")
int BPF_KRETPROBE(krp_nfs_atomic_open, long ret)
{
	vfs_exit(VFS_ATOMIC_OPEN, (int)ret);
	return 0;
}

KPROBE_PAIR(nfs_file_flush, VFS_FLUSH, int, vfs_enter_file(VFS_FLUSH, a0))
KPROBE_PAIR(nfs4_file_flush, VFS_FLUSH, int, vfs_enter_file(VFS_FLUSH, a0))
KPROBE_PAIR(nfs_file_fsync, VFS_FSYNC, int, vfs_enter_file(VFS_FSYNC, a0))
/* 5.12+ put an idmap (user_namespace, later mnt_idmap) first. Chosen outside
 * BPF_CORE_READ, which would turn the cfg access into a CO-RE relocation. */
static __always_inline void *idmap_arg(void *a0, void *a1)
{
	return (cfg.flags & CFG_F_IDMAP_ARGS) ? a1 : a0;
}

static __always_inline void getattr_enter(struct path *p)
{
	vfs_enter_dentry(VFS_GETATTR, BPF_CORE_READ(p, dentry));
}

KPROBE_PAIR(nfs_getattr, VFS_GETATTR, int, getattr_enter(idmap_arg(a0, a1)))
KPROBE_PAIR(nfs_setattr, VFS_SETATTR, int, vfs_enter_dentry(VFS_SETATTR, idmap_arg(a0, a1)))
KPROBE_PAIR(nfs_lookup, VFS_LOOKUP, long, vfs_enter(VFS_LOOKUP, a0, a1, 0))
KPROBE_PAIR(nfs_readdir, VFS_READDIR, int, vfs_enter_file(VFS_READDIR, a0))
KPROBE_PAIR(nfs_permission, VFS_PERMISSION, int, vfs_enter(VFS_PERMISSION, idmap_arg(a0, a1), 0, 0))
KPROBE_PAIR(nfs_vm_page_mkwrite, VFS_PAGE_MKWRITE, unsigned int,
	    vfs_enter_file(VFS_PAGE_MKWRITE, BPF_CORE_READ((struct vm_fault *)a0, vma, vm_file)))

/* ------------------------------------------------------------------------ */
/* Wire I/O billed to its owner, and server-reported errors (both tiers).   */
/* ------------------------------------------------------------------------ */

static __always_inline struct owner_val *owner_get(__u32 dev, const struct task_ident *id)
{
	struct owner_key k = {};
	struct owner_val *v;

	k.dev = dev;
	if (id) {
		k.pid = id->pid;
		k.cgroup_id = id->cgroup_id;
		__builtin_memcpy(k.comm, id->comm, sizeof(k.comm));
	}
	v = bpf_map_lookup_elem(&owners, &k);
	if (v)
		return v;
	bpf_map_update_elem(&owners, &k, &zero_owner_val, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&owners, &k);
	if (!v)
		count(CNT_OWNER_MAP_FULL);
	return v;
}

/* READ/WRITE RPCs are keyed (dev, fileid, offset) from initiate to done: the
 * done tracepoints run in rpciod or a kworker, so only the request identifies them. */
static __always_inline void pgio_begin(__u32 dev, __u64 fileid, __s64 offset, __u32 write)
{
	struct read_tag t = { .dev = dev, ._pad = write, .fileid = fileid, .offset = offset };
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&pgio_start, &t, &now, BPF_ANY);
}

/* Time since the matching initiate, 0 if there was none (a short READ or WRITE
 * is resent from its new offset without a new initiate). */
static __always_inline __u64 pgio_end(__u32 dev, __u64 fileid, __s64 offset, __u32 write)
{
	struct read_tag t = { .dev = dev, ._pad = write, .fileid = fileid, .offset = offset };
	__u64 *start = bpf_map_lookup_elem(&pgio_start, &t);
	__u64 lat;

	if (!start) {
		count(CNT_PGIO_UNMATCHED);
		return 0;
	}
	lat = bpf_ktime_get_ns() - *start;
	bpf_map_delete_elem(&pgio_start, &t);
	return lat;
}

/* nfs_initiate_read runs in the task that needs the data (readahead included). */
SEC("tracepoint/nfs/nfs_initiate_read")
int tp_nfs_initiate_read(void *ctx)
{
	struct read_tag t = {};
	struct task_ident id = {};

	t.dev = ctx_u32(ctx, cfg.off.ir_dev);
	t.fileid = ctx_u64(ctx, cfg.off.ir_fileid);
	t.offset = ctx_u64(ctx, cfg.off.ir_offset);
	current_ident(&id);
	bpf_map_update_elem(&read_tags, &t, &id, BPF_ANY);
	pgio_begin(t.dev, t.fileid, t.offset, 0);
	return 0;
}

SEC("tracepoint/nfs/nfs_initiate_write")
int tp_nfs_initiate_write(void *ctx)
{
	pgio_begin(ctx_u32(ctx, cfg.off.iw_dev), ctx_u64(ctx, cfg.off.iw_fileid),
		   ctx_u64(ctx, cfg.off.iw_offset), 1);
	return 0;
}

static __always_inline void read_done_owner(__u32 dev, __u64 fileid, __s64 offset, __u32 count_)
{
	struct read_tag t = { .dev = dev, .fileid = fileid, .offset = offset };
	struct task_ident *id = bpf_map_lookup_elem(&read_tags, &t);
	struct owner_val *v;
	struct task_ident copy;
	struct file_key fk = { .dev = dev, .fileid = fileid };
	struct file_val *fv;
	__u64 lat = pgio_end(dev, fileid, offset, 0);

	if (id) {
		copy = *id;
		bpf_map_delete_elem(&read_tags, &t);
		v = owner_get(dev, &copy);
	} else {
		count(CNT_UNATTRIBUTED_READS);
		v = owner_get(dev, 0);
	}
	if (v) {
		v->read_rpcs += 1;
		v->read_bytes += count_;
	}
	fv = bpf_map_lookup_elem(&files, &fk);
	if (fv) {
		__sync_fetch_and_add(&fv->wire_read_bytes, count_);
		__sync_fetch_and_add(&fv->wire_reads, 1);
		__sync_fetch_and_add(&fv->wire_read_ns, lat);
	}
}

static __always_inline void write_done_owner(__u32 dev, __u64 fileid, __s64 offset, __u32 count_,
					     bool commit)
{
	struct file_key fk = { .dev = dev, .fileid = fileid };
	struct file_val *fv = bpf_map_lookup_elem(&files, &fk);
	struct task_ident id = {};
	struct owner_val *v;
	bool mixed = false;
	__u64 lat = commit ? 0 : pgio_end(dev, fileid, offset, 1);

	if (fv && !commit) {
		__sync_fetch_and_add(&fv->wire_write_bytes, count_);
		__sync_fetch_and_add(&fv->wire_writes, 1);
		__sync_fetch_and_add(&fv->wire_write_ns, lat);
	}
	if (fv && fv->dirtier_cgroup) {
		id.cgroup_id = fv->dirtier_cgroup;
		id.pid = fv->dirtier_pid;
		__builtin_memcpy(id.comm, fv->dirtier_comm, sizeof(id.comm));
		mixed = fv->flags & FILE_F_MIXED;
		if (commit)
			fv->flags &= ~FILE_F_MIXED;
		v = owner_get(dev, &id);
	} else {
		count(CNT_UNATTRIBUTED_WRITES);
		v = owner_get(dev, 0);
	}
	if (!v)
		return;
	if (commit) {
		v->commit_rpcs += 1;
		return;
	}
	v->write_rpcs += 1;
	v->write_bytes += count_;
	if (mixed)
		v->ambiguous_write_bytes += count_;
}

SEC("tracepoint/nfs/nfs_commit_done")
int tp_nfs_commit_done(void *ctx)
{
	write_done_owner(ctx_u32(ctx, cfg.off.cd_dev), ctx_u64(ctx, cfg.off.cd_fileid), 0, 0, true);
	return 0;
}

/* NFSv2/v3 status of a reply, as errno (negative in an unsigned long). */
SEC("tracepoint/nfs/nfs_xdr_status")
int tp_nfs_xdr_status(void *ctx)
{
	char proc[BPFNFS_PROC_LEN] = {};

	ctx_str(ctx, cfg.off.xs_procedure, proc, sizeof(proc));
	err_account(ctx_u32(ctx, cfg.off.xs_client_id), ERR_XDR, ctx_u32(ctx, cfg.off.xs_version),
		    (__s64)ctx_u64(ctx, cfg.off.xs_error), 0, proc);
	return 0;
}

/* Per NFSv4 operation inside a COMPOUND: which op failed, with what. */
SEC("tracepoint/nfs4/nfs4_xdr_status")
int tp_nfs4_xdr_status(void *ctx)
{
	err_account(ctx_u32(ctx, cfg.off.x4_client_id), ERR_XDR4, 4, (__s64)ctx_u64(ctx, cfg.off.x4_error),
		    ctx_u32(ctx, cfg.off.x4_op), 0);
	return 0;
}
