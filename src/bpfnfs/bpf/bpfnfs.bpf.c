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

/* Zero values for lookup-or-init: too big for the 512-byte stack. In .bss,
 * not .rodata, so that cfg stays the only .rodata variable. */
static struct rpc_val zero_rpc_val;
static struct io_val zero_io_val;

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
	if (status < 0)
		v->errors += 1;
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

static __always_inline void io_done(struct kiocb *iocb, ssize_t ret, bool write)
{
	struct file *f = BPF_CORE_READ(iocb, ki_filp);

	io_account(BPF_CORE_READ(f, f_inode, i_sb, s_dev), BPF_CORE_READ(f, f_flags) & cfg.o_direct,
		   ret, write);
}

SEC("fexit/nfs_file_read")
int BPF_PROG(fexit_nfs_file_read, struct kiocb *iocb, struct iov_iter *to, ssize_t ret)
{
	io_done(iocb, ret, false);
	return 0;
}

SEC("fexit/nfs_file_write")
int BPF_PROG(fexit_nfs_file_write, struct kiocb *iocb, struct iov_iter *from, ssize_t ret)
{
	io_done(iocb, ret, true);
	return 0;
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
	server_bytes(hdr->inode->i_sb->s_dev, hdr->res.count, false);
	return 0;
}

SEC("tp_btf/nfs_writeback_done")
int BPF_PROG(btf_nfs_writeback_done, const struct rpc_task *task, const struct nfs_pgio_header *hdr)
{
	if (!hdr)
		return 0;
	server_bytes(hdr->inode->i_sb->s_dev, hdr->res.count, true);
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
	__u32 _pad;
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
	rpc_account(&h->key, q, r, x, h->status, 0, 0, 0, 0);
	emit_rpc_event(&h->key, q, r, x, h->status, h->task_id, h->xid, 0);
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

/* kprobe/kretprobe pair: the entry stashes what the return needs. */
struct io_entry {
	__u32 dev;
	__u32 direct;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct io_entry);
} io_entries SEC(".maps");

static __always_inline void io_enter(struct kiocb *iocb)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct io_entry e = {};
	struct file *f = BPF_CORE_READ(iocb, ki_filp);

	e.dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	e.direct = (BPF_CORE_READ(f, f_flags) & cfg.o_direct) ? 1 : 0;
	bpf_map_update_elem(&io_entries, &tid, &e, BPF_ANY);
}

static __always_inline void io_exit(ssize_t ret, bool write)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct io_entry *e = bpf_map_lookup_elem(&io_entries, &tid);
	__u32 dev;
	bool direct;

	if (!e)
		return;
	dev = e->dev;
	direct = e->direct;
	bpf_map_delete_elem(&io_entries, &tid);
	io_account(dev, direct, ret, write);
}

SEC("kprobe/nfs_file_read")
int BPF_KPROBE(kp_nfs_file_read, struct kiocb *iocb)
{
	io_enter(iocb);
	return 0;
}

SEC("kretprobe/nfs_file_read")
int BPF_KRETPROBE(krp_nfs_file_read, ssize_t ret)
{
	io_exit(ret, false);
	return 0;
}

SEC("kprobe/nfs_file_write")
int BPF_KPROBE(kp_nfs_file_write, struct kiocb *iocb)
{
	io_enter(iocb);
	return 0;
}

SEC("kretprobe/nfs_file_write")
int BPF_KRETPROBE(krp_nfs_file_write, ssize_t ret)
{
	io_exit(ret, true);
	return 0;
}

SEC("tracepoint/nfs/nfs_readpage_done")
int tp_nfs_readpage_done(void *ctx)
{
	server_bytes(ctx_u32(ctx, cfg.off.rd_dev), ctx_u32(ctx, cfg.off.rd_res_count), false);
	return 0;
}

SEC("tracepoint/nfs/nfs_writeback_done")
int tp_nfs_writeback_done(void *ctx)
{
	server_bytes(ctx_u32(ctx, cfg.off.wb_dev), ctx_u32(ctx, cfg.off.wb_res_count), true);
	return 0;
}
