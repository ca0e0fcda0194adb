// SPDX-License-Identifier: GPL-2.0
/*
 * bpfnfs kernel programs.
 *
 * One object, two variants of each hook; the loader turns on one variant per
 * hook with bpf_program__set_autoload() (see probes/tiers.py):
 *
 *   tier "btf"     (module BTF for sunrpc/nfs, 5.11+): tp_btf + fentry/fexit,
 *                   typed access to the kernel's structures through CO-RE.
 *                   Exact ns and every mountstats per-op field.
 *   tier "tracefs" (no module BTF, e.g. 5.10): classic tracepoints whose field
 *                   offsets come from tracefs "format" files (in .rodata), a
 *                   raw_tp for nanosecond times, kprobes for nfs_file_*.
 *
 * Counting methods (docs/design.md, "Preemption"): on a preemptible kernel a
 * tp_btf, raw_tp or fentry/fexit program can be preempted on its CPU, and the
 * kernel then skips every run of that program on that CPU until it resumes
 * (counted only in its recursion_misses). Kprobe, kretprobe and classic
 * tracepoint handlers run with preemption disabled, so the "kprobe" counting
 * method uses those on preemptible kernels, whatever the tier; CFG_F_RPC_KPROBE
 * then takes the RPC per-op fields from a kprobe instead of the raw_tp half.
 * With CFG_F_ATOMIC every per-CPU counter is added atomically, because two
 * preemptible programs can interleave on one CPU.
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

/* The only .data variable (explicitly there: zero-initialised, clang would put it
 * in .bss): filters and per-pid keying, rewritten by user space at run time.
 * volatile: read from the map on every use, never folded. */
volatile struct bpfnfs_live live SEC(".data") = {};

/* The cgroup the current task is counted in: cgroup v2's id, or on a host with
 * only v1 hierarchies (cfg.cgroup_v1) the kernfs id of its cgroup in one v1
 * controller's hierarchy, the id user space finds as that directory's inode. */
static __always_inline __u64 current_cgroup_id(void)
{
	struct cgroup_subsys_state *css = NULL;
	struct task_struct *task;
	struct css_set *cset;
	__u32 ssid;

	if (!cfg.cgroup_v1)
		return bpf_get_current_cgroup_id();
	ssid = cfg.cgroup_v1 - 1;
	if (ssid >= BPFNFS_MAX_CGROUP_SUBSYS)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	cset = BPF_CORE_READ(task, cgroups);
	if (!cset || bpf_core_read(&css, sizeof(css), &cset->subsys[ssid]) || !css)
		return 0;
	return BPF_CORE_READ(css, cgroup, kn, id);
}

/* A counter update. cfg is read-only after load, so the verifier keeps one branch. */
#define ADD(lval, v)                                                      \
	do {                                                              \
		if (cfg.flags & CFG_F_ATOMIC)                             \
			__sync_fetch_and_add(&(lval), (v));               \
		else                                                      \
			(lval) += (v);                                    \
	} while (0)

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

/* A syscall-side op in flight, by (tid << 32 | op). */
struct vfs_entry {
	__u64 ts;
	__u64 ctx;
	struct inode *inode;
	struct dentry *dentry;        /* NULL where the hook has only an inode */
	struct file *file;            /* atomic open: the file it may open */
	struct iov_iter *iter;        /* write: what the call consumed of it */
	__u64 count0;                 /* read/write: bytes asked for (iov_iter_count, splice len) */
	__u32 direct;
	__u32 _pad;
	__u64 span;                   /* span trees: this op's span, its parent's, its root's */
	__u64 parent;
	__u64 root;
};

/* Start-map key of nfs_atomic_open, accounted as VFS_OPEN when it opened the file. */
#define VFS_ATOMIC_OPEN (VFS_OP_MAX + 1)
/* nfs_file_direct_read/write: only mountstats' direct bytes, no syscall-side op of
 * their own (nfs_file_read/write, or swap, called them). */
#define VFS_DIRECT_READ (VFS_OP_MAX + 2)
#define VFS_DIRECT_WRITE (VFS_OP_MAX + 3)

/* LRU: an entry whose exit never ran ages out instead of filling the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
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

/* READ/WRITE RPCs in flight: initiate time, the reader, the header. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct read_tag);
	__type(value, struct pgio_val);
} pgio SEC(".maps");

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

/* ---- Span trees (CFG_F_TREES; struct op_event in bpfnfs.h says how) ---- */

/* The innermost syscall-side op in flight on a thread: the parent of what the
 * thread starts. */
struct op_ctx {
	__u64 span;
	__u64 root;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct op_ctx);
} cur_op SEC(".maps");

/* A root that has children: how many it started (only its own thread starts
 * them, so a plain increment), and its decision once it ended. */
struct tree {
	__u32 n;
	__u32 decision;               /* 0 while the root runs, then KEEP_DECIDED | KEEP_* */
	__u64 arrivals;               /* children parked; see child_parked() */
};
#define KEEP_DECIDED 0x80000000u
#define KEEP_ANY (KEEP_SLOW | KEEP_ERROR | KEEP_SAMPLED)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct tree);
} trees SEC(".maps");

struct child_key {
	__u64 root;
	__u32 idx;                    /* order in which the root's thread started it */
	__u32 _pad;
};

/* Children parked until their root is decided. LRU: a tree whose root never
 * ended (its exit was missed) ages out instead of filling the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct child_key);
	__type(value, struct op_event);
} pending SEC(".maps");

/* An RPC an op started: its place in the tree, by (client id << 32 | task id). */
struct rpc_link {
	__u64 parent;
	__u64 root;
	__u32 idx;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rpc_link);
} rpc_links SEC(".maps");

/* Span trees: the fsync or flush in flight on a file, which a COMMIT started
 * elsewhere (nfsiod, after the file's last WRITE) belongs to; and that hint
 * for the starting thread, from nfs_initiate_commit to its rpc_task_begin. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct file_key);
	__type(value, struct op_ctx);
} waiting_ops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct op_ctx);
} commit_hint SEC(".maps");

static struct op_event zero_event;
static struct tree zero_tree;

/* Defined with the attribution programs below; the tier programs call them. */
static __always_inline void read_done_owner(__u32 dev, __u64 fileid, __s64 offset, __u32 count_);
static __always_inline void write_done_owner(__u32 dev, __u64 fileid, __s64 offset, __u32 count_,
					     bool commit);

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		ADD(*v, 1);
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
		ADD(*v, 1);
		return;
	}
	/* Inserting sets this CPU's slot to 1. EEXIST: another CPU inserted it first. */
	ret = bpf_map_update_elem(&errors, &k, &one, BPF_NOEXIST);
	if (ret == -17 /* EEXIST */) {
		v = bpf_map_lookup_elem(&errors, &k);
		if (v)
			ADD(*v, 1);
	} else if (ret) {
		count(CNT_ERR_MAP_FULL);
	}
}

/* Per-CPU value: no other CPU writes this copy (ADD is atomic where a preempted
 * program could interleave with another on this CPU). */
static __always_inline void rpc_account(const struct rpc_key *key, __u64 queue, __u64 rtt,
					__u64 execute, __s32 status, __u64 ntrans, __u64 timeouts,
					__u64 sent, __u64 recv)
{
	struct rpc_val *v = rpc_val_get(key);
	count(CNT_RPC_EVENTS);
	if (!v)
		return;
	ADD(v->ops, 1);
	ADD(v->ntrans, ntrans);
	ADD(v->timeouts, timeouts);
	ADD(v->bytes_sent, sent);
	ADD(v->bytes_recv, recv);
	ADD(v->queue_ns, queue);
	ADD(v->rtt_ns, rtt);
	ADD(v->execute_ns, execute);
	if (status < 0) {
		ADD(v->errors, 1);
		err_account(key->clid, ERR_RPC, key->vers, status, 0, key->proc);
	}
	ADD(v->queue_hist[hist_index(queue)], 1);
	ADD(v->rtt_hist[hist_index(rtt)], 1);
	ADD(v->execute_hist[hist_index(execute)], 1);
}

static __always_inline __u64 new_span_id(void)
{
	__u64 id = ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();

	return id ? id : 1;
}

/* Why a root that ended is kept (0: dropped). */
static __always_inline __u32 keep_of(__u64 lat, __s32 status)
{
	__u32 k = 0;

	if (lat >= cfg.slow_ns)
		k |= KEEP_SLOW;
	if (status < 0)
		k |= KEEP_ERROR;
	if ((cfg.flags & CFG_F_SAMPLE_ALL) || (cfg.sample && bpf_get_prandom_u32() < cfg.sample))
		k |= KEEP_SAMPLED;
	return k;
}

static __always_inline struct tree *tree_get(__u64 root)
{
	struct tree *t = bpf_map_lookup_elem(&trees, &root);

	if (t)
		return t;
	bpf_map_update_elem(&trees, &root, &zero_tree, BPF_NOEXIST);
	return bpf_map_lookup_elem(&trees, &root);
}

/* A parked child leaves `pending` exactly once: whoever deletes it (its root's
 * decision, or the child itself when it parked after that) sends it on.
 * Global functions (not static) are verified once, on their own, not at every
 * call site: tree_decide() calls this in a loop, and every exit program calls
 * tree_decide(). Their arguments are scalars, as 5.10 requires. */
__noinline int child_release(__u64 root, __u32 idx, __u32 decision)
{
	struct child_key ck = { .root = root, .idx = idx };
	struct op_event *c = bpf_map_lookup_elem(&pending, &ck);
	struct op_event *r;

	if (!c || !c->hdr.kind)
		return 0; /* not parked yet: it will see the decision itself */
	if (!(decision & KEEP_ANY)) {
		if (!bpf_map_delete_elem(&pending, &ck))
			count(CNT_SPAN_PARENT_DROPPED);
		return 0;
	}
	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		if (!bpf_map_delete_elem(&pending, &ck))
			count(CNT_RINGBUF_DROPS);
		return 0;
	}
	__builtin_memcpy(r, c, sizeof(*r));
	if (!bpf_map_delete_elem(&pending, &ck))
		bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	else
		bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
	return 0;
}

/* A root ended: record its decision, then send on (or drop) the children parked
 * so far. One that parks later sees the decision itself (child_parked). The
 * decision is stored with an atomic add, a full barrier: the children's headers
 * are read only after it is visible. */
__noinline int tree_decide(__u64 root, __u32 keep)
{
	struct tree *t = bpf_map_lookup_elem(&trees, &root);
	__u32 i, n;

	if (!t)
		return 0; /* no child was started */
	__sync_fetch_and_add(&t->decision, keep | KEEP_DECIDED);
	n = t->n;
	for (i = 0; i < BPFNFS_TREE_CHILDREN; i++) {
		if (i >= n)
			break;
		child_release(root, i, keep);
	}
	return 0;
}

/* The parked slot for child idx of root (filled by the caller, then
 * child_parked), or NULL: counted. */
static __always_inline struct op_event *child_slot(struct child_key *ck, struct tree **tp)
{
	struct tree *t = bpf_map_lookup_elem(&trees, &ck->root);

	if (!t) {
		count(CNT_SPAN_TREE_LOST);
		return NULL;
	}
	if (ck->idx >= BPFNFS_TREE_CHILDREN) {
		count(CNT_SPAN_TREE_FULL);
		return NULL;
	}
	if (bpf_map_update_elem(&pending, ck, &zero_event, BPF_NOEXIST)) {
		count(CNT_SPAN_PENDING_FULL);
		return NULL;
	}
	*tp = t;
	return bpf_map_lookup_elem(&pending, ck);
}

/* The header goes in last: a root deciding meanwhile skips a record without
 * one. The atomic add orders that store before the look at the decision, so
 * the root sees the record, or the child sees the decision (or both: then the
 * delete in child_release picks one). */
static __always_inline void child_parked(struct child_key *ck, struct op_event *c, struct tree *t)
{
	__u32 d;

	asm volatile("" ::: "memory");
	c->hdr = REC_HDR(REC_OP, REC_OP_VERSION, struct op_event);
	__sync_fetch_and_add(&t->arrivals, 1);
	d = *(volatile __u32 *)&t->decision;
	if (d)
		child_release(ck->root, ck->idx, d);
}

/* Span ids of an op record. idx: a child's place among its root's. */
struct span_ids {
	__u64 span;
	__u64 parent;
	__u64 root;
	__u32 idx;
	__u32 has_tree;               /* a syscall-side root: it may have children */
};

/* Where an op record is written: the ring (a slow op; in tree mode a kept
 * root), a parked slot (a child in tree mode), or nowhere (NULL). *tp is set
 * for a parked slot; keep is the root's reasons. */
static __always_inline struct op_event *record_slot(const struct span_ids *s, __u64 lat, __s32 status,
						    struct child_key *ck, struct tree **tp, __u32 *keep)
{
	struct op_event *e;

	*tp = NULL;
	*keep = 0;
	if (cfg.flags & CFG_F_TREES) {
		if (!s->span)
			return NULL;
		if (s->parent) {
			ck->root = s->root;
			ck->idx = s->idx;
			return child_slot(ck, tp);
		}
		*keep = keep_of(lat, status);
		if (s->has_tree)
			tree_decide(s->span, *keep);
		if (!*keep) {
			count(CNT_SPAN_UNSAMPLED);
			return NULL;
		}
	} else if (!(cfg.flags & CFG_F_EVENTS) || lat < cfg.slow_ns) {
		return NULL;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		count(CNT_RINGBUF_DROPS);
	return e;
}

static __always_inline void record_done(struct op_event *e, const struct span_ids *s, __u32 keep,
					struct child_key *ck, struct tree *t)
{
	e->span_id = s->span;
	e->parent_id = s->parent;
	e->trace_id = s->root;
	e->keep = keep;
	e->_pad = 0;
	if (t) {
		child_parked(ck, e, t);
		return;
	}
	e->hdr = REC_HDR(REC_OP, REC_OP_VERSION, struct op_event);
	/* No wakeup: user space drains on a timer, in batches. */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* An RPC's place in a tree: a child of the op that started it, or a root. */
static __always_inline void rpc_span(struct span_ids *s, __u32 clid, __u32 task_id)
{
	__u64 lkey = ((__u64)clid << 32) | task_id;
	struct rpc_link *l;

	__builtin_memset(s, 0, sizeof(*s));
	if (!(cfg.flags & CFG_F_TREES))
		return;
	s->span = new_span_id();
	s->root = s->span;
	l = bpf_map_lookup_elem(&rpc_links, &lkey);
	if (!l)
		return;
	s->parent = l->parent;
	s->root = l->root;
	s->idx = l->idx;
	bpf_map_delete_elem(&rpc_links, &lkey);
}

static __always_inline void emit_rpc_event(const struct rpc_key *key, __u64 queue, __u64 rtt,
					   __u64 execute, __s32 status, __u32 task_id, __u32 xid,
					   __u32 owner)
{
	struct child_key ck = {};
	struct span_ids s;
	struct op_event *e;
	struct tree *t;
	__u32 keep;
	__u64 id;

	rpc_span(&s, key->clid, task_id);
	e = record_slot(&s, execute, status, &ck, &t, &keep);
	if (!e)
		return;
	id = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->latency_ns = execute;
	e->queue_ns = queue;
	e->rtt_ns = rtt;
	e->cgroup_id = current_cgroup_id();
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
	record_done(e, &s, keep, &ck, t);
}


/* ------------------------------------------------------------------------ */
/* Tier "btf": typed access to the task through module BTF.                 */
/* ------------------------------------------------------------------------ */

/* Probe reads, not direct loads: the kprobe method passes an untrusted pointer, and
 * `p ? p->x : y` on BTF pointers becomes one load from two kinds of pointer, which
 * the verifier rejects. */
static __always_inline void note_client(const struct rpc_clnt *clnt)
{
	struct clnt_info info = {};
	struct rpc_clnt *parent;
	__u32 clid = BPF_CORE_READ(clnt, cl_clid);

	if (bpf_map_lookup_elem(&clients, &clid))
		return;
	parent = BPF_CORE_READ(clnt, cl_parent);
	info.parent = parent ? BPF_CORE_READ(parent, cl_clid) : clid;
	info.vers = BPF_CORE_READ(clnt, cl_vers);
	info.flags = CLNT_F_PARENT_KNOWN;
	bpf_probe_read_kernel_str(info.prog, sizeof(info.prog), BPF_CORE_READ(clnt, cl_program, name));
	if (bpf_map_update_elem(&clients, &clid, &info, BPF_NOEXIST) == -7 /* E2BIG: full */)
		count(CNT_CLNT_MAP_FULL);
}

SEC("tp_btf/rpc_stats_latency")
int BPF_PROG(btf_rpc_stats_latency, const struct rpc_task *task,
		ktime_t backlog, ktime_t rtt, ktime_t execute)
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

/* mountstats' bytes: line for one read or write call (docs/design.md lists the
 * kernel's nfs_add_stats call sites per version). calls: a read or write call
 * through the file operations (not the direct I/O functions they call). */
static __always_inline void io_account(__u32 dev, bool direct, __u64 bytes, bool write, bool calls)
{
	struct io_val *v = io_val_get(dev);

	if (!v)
		return;
	if (write) {
		if (calls)
			ADD(v->write_calls, 1);
		if (direct)
			ADD(v->direct_write_bytes, bytes);
		else
			ADD(v->write_bytes, bytes);
	} else {
		if (calls)
			ADD(v->read_calls, 1);
		if (direct)
			ADD(v->direct_read_bytes, bytes);
		else
			ADD(v->read_bytes, bytes);
	}
}

static __always_inline void server_bytes(__u32 dev, __u32 count, bool write)
{
	struct io_val *v = io_val_get(dev);

	if (!v)
		return;
	if (write) {
		ADD(v->server_write_bytes, count);
		ADD(v->write_rpcs, 1);
	} else {
		ADD(v->server_read_bytes, count);
		ADD(v->read_rpcs, 1);
	}
}

SEC("tp_btf/nfs_readpage_done")
int BPF_PROG(btf_nfs_readpage_done, const struct rpc_task *task,
		const struct nfs_pgio_header *hdr)
{
	if (!hdr)
		return 0;
	struct inode *inode = hdr->inode;

	server_bytes(inode->i_sb->s_dev, hdr->res.count, false);
	read_done_owner(inode->i_sb->s_dev, inode->i_ino, hdr->args.offset, hdr->res.count);
	return 0;
}

SEC("tp_btf/nfs_writeback_done")
int BPF_PROG(btf_nfs_writeback_done, const struct rpc_task *task,
		const struct nfs_pgio_header *hdr)
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

/*
 * Kprobe method, RPC ops: rpc_count_iostats_metrics(task, op_metrics) has the task
 * in hand just before it counts it and fires rpc_stats_latency. Its kprobe (and
 * the classic tracepoint) run with preemption disabled, unlike the raw_tp half of
 * the tracefs tier, preemptible since 7.x's SRCU tracepoints. The kprobe leaves the
 * per-op fields for the tracepoint, keyed (client << 32 | task id); the execute time
 * comes in ns from a tp_btf helper when it ran (it is preemptible: when skipped, the
 * tracepoint's µs value is used to ±0.5 µs, and counted).
 */
struct rpc_fields {
	__u64 ntrans;
	__u64 timeouts;
	__u64 sent;
	__u64 recv;
	__u64 backlog;                /* ns: rq_xtime - tk_start, as the kernel adds it */
	__u64 rtt;                    /* ns: rq_rtt */
	__s32 status;
	__u32 owner;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct rpc_fields);
} rpc_fields SEC(".maps");

struct exec_ns {
	__u32 clid;
	__u32 task_id;
	__u64 execute;
};

/* Per thread: the exact execute time of the RPC being counted (tp_btf helper). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct exec_ns);
} rpc_exec SEC(".maps");

SEC("kprobe/rpc_count_iostats_metrics")
int BPF_KPROBE(kp_rpc_count_iostats_metrics, const struct rpc_task *task, void *op_metrics)
{
	const struct rpc_rqst *req = BPF_CORE_READ(task, tk_rqstp);
	const struct rpc_clnt *clnt = BPF_CORE_READ(task, tk_client);
	struct rpc_fields f = {};
	__u64 key, xtime;

	if (!op_metrics || !req || !clnt) /* the kernel counts nothing either */
		return 0;
	f.ntrans = BPF_CORE_READ(req, rq_ntrans);
	if ((__s64)f.ntrans < 1) /* mountstats: om_ntrans += max(rq_ntrans, 1) */
		f.ntrans = 1;
	f.timeouts = BPF_CORE_READ(task, tk_timeouts);
	f.sent = BPF_CORE_READ(req, rq_xmit_bytes_sent);
	f.recv = BPF_CORE_READ(req, rq_reply_bytes_recvd);
	xtime = BPF_CORE_READ(req, rq_xtime);
	if (xtime)
		f.backlog = xtime - BPF_CORE_READ(task, tk_start);
	f.rtt = BPF_CORE_READ(req, rq_rtt);
	f.status = BPF_CORE_READ(task, tk_status);
	f.owner = BPF_CORE_READ(task, tk_owner);
	note_client(clnt);
	key = ((__u64)BPF_CORE_READ(clnt, cl_clid) << 32) | BPF_CORE_READ(task, tk_pid);
	bpf_map_update_elem(&rpc_fields, &key, &f, BPF_ANY);
	return 0;
}

SEC("tp_btf/rpc_stats_latency")
int BPF_PROG(btf_rpc_execute_ns, const struct rpc_task *task, ktime_t backlog, ktime_t rtt,
	     ktime_t execute)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_ns x = {};

	if (!task)
		return 0;
	x.clid = BPF_CORE_READ(task, tk_client, cl_clid);
	x.task_id = BPF_CORE_READ(task, tk_pid);
	x.execute = execute;
	bpf_map_update_elem(&rpc_exec, &tid, &x, BPF_ANY);
	return 0;
}

static __always_inline void rpc_stats_kprobe_method(void *ctx)
{
	struct rpc_key key = {};
	struct rpc_fields f = {};
	struct rpc_fields *fp;
	struct exec_ns *x;
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), task_id;
	__u64 us[3], execute, tkey;

	key.clid = ctx_u32(ctx, cfg.off.sl_client_id);
	key.vers = ctx_u32(ctx, cfg.off.sl_version);
	ctx_str(ctx, cfg.off.sl_procname, key.proc, sizeof(key.proc));
	task_id = ctx_u32(ctx, cfg.off.sl_task_id);
	us[0] = ctx_u64(ctx, cfg.off.sl_backlog);
	us[1] = ctx_u64(ctx, cfg.off.sl_rtt);
	us[2] = ctx_u64(ctx, cfg.off.sl_execute);
	tkey = ((__u64)key.clid << 32) | task_id;
	fp = bpf_map_lookup_elem(&rpc_fields, &tkey);
	if (fp && fp->backlog / 1000 == us[0] && fp->rtt / 1000 == us[1]) {
		f = *fp;
		bpf_map_delete_elem(&rpc_fields, &tkey);
	} else {
		/* The kprobe was skipped: count the op, with its times to ±0.5 µs. */
		count(CNT_PAIR_MISS);
		f.backlog = us[0] * 1000 + 500;
		f.rtt = us[1] * 1000 + 500;
		if (fp)
			bpf_map_delete_elem(&rpc_fields, &tkey);
	}
	x = bpf_map_lookup_elem(&rpc_exec, &tid);
	if (x && x->clid == key.clid && x->task_id == task_id && x->execute / 1000 == us[2]) {
		execute = x->execute;
	} else {
		execute = us[2] * 1000 + 500;
		count(CNT_RPC_EXEC_ESTIMATED);
	}
	rpc_account(&key, f.backlog, f.rtt, execute, f.status, f.ntrans, f.timeouts, f.sent, f.recv);
	emit_rpc_event(&key, f.backlog, f.rtt, execute, f.status, task_id, ctx_u32(ctx, cfg.off.sl_xid),
		       f.owner);
}

SEC("tracepoint/sunrpc/rpc_stats_latency")
int tp_rpc_stats_latency(void *ctx)
{
	__u32 zero = 0;
	struct sl_half *h;
	__u64 tkey;
	__s32 *st;

	if (cfg.flags & CFG_F_RPC_KPROBE) {
		rpc_stats_kprobe_method(ctx);
		return 0;
	}
	h = bpf_map_lookup_elem(&sl_pair, &zero);
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
 * FSSTAT (v3) or STATFS (v4) RPC on that superblock's own rpc_clnt. Not a
 * counting hook: a probe that went unseen is simply made again. */
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

/* Span trees: an RPC starts in the thread that runs rpc_execute(), so the
 * thread's op in flight (cur_op) is its parent. Both tiers, tree mode only. */
SEC("tracepoint/sunrpc/rpc_task_begin")
int tp_rpc_task_begin(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct rpc_link l = {};
	struct op_ctx *cur, parent;
	struct tree *t;
	__u64 lkey;

	cur = bpf_map_lookup_elem(&cur_op, &tid);
	if (cur) {
		parent = *cur;
	} else {
		cur = bpf_map_lookup_elem(&commit_hint, &tid);
		if (!cur)
			return 0;
		parent = *cur;
		bpf_map_delete_elem(&commit_hint, &tid);
	}
	t = tree_get(parent.root);
	if (!t) {
		count(CNT_SPAN_TREE_LOST);
		return 0;
	}
	l.parent = parent.span;
	l.root = parent.root;
	l.idx = t->n++;
	lkey = ((__u64)ctx_u32(ctx, cfg.off.tb_client_id) << 32) | ctx_u32(ctx, cfg.off.tb_task_id);
	bpf_map_update_elem(&rpc_links, &lkey, &l, BPF_ANY);
	return 0;
}

/* Span trees: a COMMIT started outside any op (nfsiod, when writeback's last
 * WRITE completed) for a file an fsync or close is waiting on. */
SEC("tracepoint/nfs/nfs_initiate_commit")
int tp_nfs_initiate_commit(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct file_key fk = {};
	struct op_ctx *w;

	if (bpf_map_lookup_elem(&cur_op, &tid))
		return 0; /* the thread's own op is the parent */
	fk.dev = ctx_u32(ctx, cfg.off.ic_dev);
	fk.fileid = ctx_u64(ctx, cfg.off.ic_fileid);
	w = bpf_map_lookup_elem(&waiting_ops, &fk);
	if (w)
		bpf_map_update_elem(&commit_hint, &tid, w, BPF_ANY);
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
/* Each program describes its call (struct vfs_call) from its arguments;    */
/* entry stashes it with a timestamp per (thread, op), exit accounts. The   */
/* btf tier enters through fentry/fexit, the tracefs tier through kprobes;  */
/* both share everything below.                                             */
/* ------------------------------------------------------------------------ */

#define MAX_ERRNO 4095
#define EIOCBQUEUED 529               /* AIO submitted: not an error, the bytes count */

struct vfs_call {
	struct inode *inode;
	struct dentry *dentry;
	struct file *file;
	struct iov_iter *iter;
	__u64 count;                  /* bytes asked for (iov_iter_count, splice len), now */
	__u32 op;                     /* enum vfs_op, or VFS_ATOMIC_OPEN */
	__u32 direct;
};

static __always_inline bool comm_matches(void)
{
	char c[BPFNFS_COMM_LEN];
	int i;

	bpf_get_current_comm(c, sizeof(c));
	for (i = 0; i < BPFNFS_COMM_LEN; i++) {
		if (c[i] != live.filter_comm[i])
			return false;
		if (!c[i])
			break;
	}
	return true;
}

/* --pid / --comm / --cgroup: true when this task is not to be counted. Reads the
 * live (.data) settings, so a filter changed at run time applies from the next call. */
static __always_inline bool filtered_out(void)
{
	__u32 f = live.flags;

	if (!(f & (CFG_F_FILTER_PID | CFG_F_FILTER_COMM | CFG_F_FILTER_CGROUP)))
		return false;
	if ((f & CFG_F_FILTER_PID) && (bpf_get_current_pid_tgid() >> 32) != live.filter_tgid)
		return true;
	if ((f & CFG_F_FILTER_COMM) && !comm_matches())
		return true;
	if (f & CFG_F_FILTER_CGROUP) {
		__u64 cg = current_cgroup_id();

		if (!bpf_map_lookup_elem(&cgroup_filter, &cg))
			return true;
	}
	return false;
}

static __always_inline void call_init(struct vfs_call *c, __u32 op, struct inode *inode,
				      struct dentry *dentry)
{
	c->op = op;
	c->inode = inode;
	c->dentry = dentry;
}

static __always_inline void call_file(struct vfs_call *c, __u32 op, struct file *f)
{
	__builtin_memset(c, 0, sizeof(*c));
	if (!f)
		return;
	call_init(c, op, BPF_CORE_READ(f, f_inode), BPF_CORE_READ(f, f_path.dentry));
	c->file = f;
	c->direct = (BPF_CORE_READ(f, f_flags) & cfg.o_direct) ? 1 : 0;
}

/* read/write: the iov_iter says how many bytes the call asks for (and, after a
 * buffered write, how many it consumed). */
static __always_inline void call_kiocb(struct vfs_call *c, __u32 op, struct kiocb *iocb,
				       struct iov_iter *iter)
{
	call_file(c, op, BPF_CORE_READ(iocb, ki_filp));
	c->iter = iter;
	c->count = iter ? BPF_CORE_READ(iter, count) : 0;
}

static __always_inline void call_dentry(struct vfs_call *c, __u32 op, struct dentry *d)
{
	__builtin_memset(c, 0, sizeof(*c));
	if (d)
		call_init(c, op, BPF_CORE_READ(d, d_inode), d);
}

static __always_inline void call_inode(struct vfs_call *c, __u32 op, struct inode *inode,
				       struct dentry *d)
{
	__builtin_memset(c, 0, sizeof(*c));
	call_init(c, op, inode, d);
}

static __always_inline __u64 vfs_key_of(__u32 op)
{
	return (bpf_get_current_pid_tgid() << 32) | op;
}

static __always_inline void vfs_enter(struct vfs_call *c)
{
	__u64 key = vfs_key_of(c->op);
	struct vfs_entry e = {};

	if (!c->inode)
		return;
	if (filtered_out()) {
		count(CNT_FILTERED);
		return;
	}
	e.ts = bpf_ktime_get_ns();
	e.inode = c->inode;
	e.dentry = c->dentry;
	e.file = c->file;
	e.iter = c->iter;
	e.count0 = c->count;
	e.direct = c->direct;
	if ((cfg.flags & CFG_F_TREES) && c->op != VFS_DIRECT_READ && c->op != VFS_DIRECT_WRITE) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		struct op_ctx *cur = bpf_map_lookup_elem(&cur_op, &tid);
		struct op_ctx now;

		e.span = new_span_id();
		e.parent = cur ? cur->span : 0;
		e.root = cur ? cur->root : e.span;
		now.span = e.span;
		now.root = e.root;
		bpf_map_update_elem(&cur_op, &tid, &now, BPF_ANY);
		if (c->op == VFS_FSYNC || c->op == VFS_FLUSH) {
			struct inode *ino = c->inode;
			struct file_key fk = {};

			fk.dev = BPF_CORE_READ(ino, i_sb, s_dev);
			fk.fileid = BPF_CORE_READ(ino, i_ino);
			bpf_map_update_elem(&waiting_ops, &fk, &now, BPF_ANY);
		}
	}
	bpf_map_update_elem(&vfs_start, &key, &e, BPF_ANY);
}

/* Span trees: the op ended, so its thread's op in flight is its parent again,
 * and the op's place in the tree is known (a nested op is numbered among its
 * root's children now, in the root's thread). */
static __always_inline void vfs_span_end(const struct vfs_entry *e, __u32 op, struct span_ids *s)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct op_ctx back, *w;
	struct tree *t;

	__builtin_memset(s, 0, sizeof(*s));
	if (!(cfg.flags & CFG_F_TREES) || !e->span)
		return;
	if (op == VFS_FSYNC || op == VFS_FLUSH) {
		struct inode *ino = e->inode;
		struct file_key fk = {};

		fk.dev = BPF_CORE_READ(ino, i_sb, s_dev);
		fk.fileid = BPF_CORE_READ(ino, i_ino);
		w = bpf_map_lookup_elem(&waiting_ops, &fk);
		if (w && w->span == e->span)
			bpf_map_delete_elem(&waiting_ops, &fk);
	}
	s->span = e->span;
	s->parent = e->parent;
	s->root = e->root;
	s->has_tree = 1;
	if (!e->parent) {
		bpf_map_delete_elem(&cur_op, &tid);
		return;
	}
	back.span = e->parent;
	back.root = e->root;
	bpf_map_update_elem(&cur_op, &tid, &back, BPF_ANY);
	t = tree_get(e->root);
	if (t)
		s->idx = t->n++;
	else
		s->idx = BPFNFS_TREE_CHILDREN; /* counted as the record is written */
}

/* A root that ends without a record of its own still decides its tree. */
static __always_inline void vfs_span_abandon(const struct span_ids *s)
{
	if (s->span && !s->parent)
		tree_decide(s->span, 0);
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
	e->hdr = REC_HDR(REC_PATH, REC_PATH_VERSION, struct path_event);
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
	id->cgroup_id = current_cgroup_id();
	id->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(id->comm, sizeof(id->comm));
}

static __always_inline void file_account(__u32 op, __u32 dev, __u64 fileid, struct dentry *d, __u64 lat,
					 __u64 bytes, bool err)
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
		if (bytes)
			__sync_fetch_and_add(&v->read_bytes, bytes);
	} else if (op == VFS_WRITE || (op == VFS_PAGE_MKWRITE && !err)) {
		if (op == VFS_WRITE)
			__sync_fetch_and_add(&v->writes, 1);
		else
			__sync_fetch_and_add(&v->other_ops, 1);
		/* A write fault dirties its page as a write(2) does: writeback of it is billed
		 * to the faulting task too. */
		if (bytes || op == VFS_PAGE_MKWRITE) {
			/* Zeroed: bpf_get_current_comm leaves bytes after the NUL as they
			 * were, and these bytes end up in map keys. */
			struct task_ident id = {};

			if (bytes)
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

static __always_inline void emit_vfs_event(__u32 op, __u32 dev, __u64 fileid, __u64 lat, __u64 bytes,
					   __s32 status, const struct span_ids *s, __u64 now)
{
	struct child_key ck = {};
	struct op_event *e;
	struct tree *t;
	__u32 keep;
	__u64 id;

	e = record_slot(s, lat, status, &ck, &t, &keep);
	if (!e)
		return;
	id = bpf_get_current_pid_tgid();
	e->ts_ns = now;
	e->latency_ns = lat;
	e->queue_ns = 0;
	e->rtt_ns = 0;
	e->cgroup_id = current_cgroup_id();
	e->fileid = fileid;
	e->bytes = bytes;
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
	record_done(e, s, keep, &ck, t);
}

/*
 * Bytes mountstats' bytes: line counts for one read or write (nfs_add_stats in
 * fs/nfs/file.c and direct.c; docs/design.md has the call sites per kernel):
 *  - buffered read, splice read: the return value when positive;
 *  - buffered write: the return value when positive; 5.19+ count the written
 *    bytes before a failing O_SYNC flush (or ENOSPC check) turns the return
 *    negative: then what the call consumed of its iov_iter;
 *  - O_DIRECT read: everything asked for at entry, even for AIO (-EIOCBQUEUED),
 *    errors and reads past EOF; O_DIRECT write: likewise, unless
 *    generic_write_checks refused the write before counting it (ETXTBSY, EFBIG).
 * have: the entry was seen (count0 and the iov_iter are known).
 */
static __always_inline __u64 io_bytes(__u32 op, __u32 direct, __s64 ret, bool have, __u64 count0,
				      struct iov_iter *iter)
{
	if (direct) {
		if (!have)
			return (ret > 0) ? ret : 0;
		if (op == VFS_WRITE && (ret == -26 /* ETXTBSY */ || ret == -27 /* EFBIG */))
			return 0;
		return count0;
	}
	if (ret > 0)
		return ret;
	if (op == VFS_WRITE && have && iter && (cfg.flags & CFG_F_WRITE_COUNTED_EARLY)) {
		__u64 left = BPF_CORE_READ(iter, count);

		return count0 > left ? count0 - left : 0;
	}
	return 0;
}

/* The exit of a call: ret is the function's return value (for lookup a dentry
 * pointer or ERR_PTR, for page_mkwrite a vm_fault_t). */
static __always_inline void vfs_exit(struct vfs_call *c, __s64 ret)
{
	/* One clock reading for the latency and the record's end: a span's start
	 * (end - latency) is then its entry time exactly. */
	__u64 now = bpf_ktime_get_ns();
	__u64 skey = vfs_key_of(c->op);
	struct vfs_entry *e = bpf_map_lookup_elem(&vfs_start, &skey);
	struct vfs_key k = {};
	struct vfs_val *v;
	struct inode *inode = c->inode;
	struct dentry *dentry = c->dentry;
	struct file *file = c->file;
	struct iov_iter *iter = c->iter;
	__u64 lat = 0, fileid, count0 = 0, bytes = 0;
	__u32 op = c->op, dev, direct = c->direct;
	__s32 status = 0;
	bool have = false;
	struct span_ids s = {};

	if (e) {
		have = true;
		vfs_span_end(e, op, &s);
		lat = now - e->ts;
		inode = e->inode;
		dentry = e->dentry;
		direct = e->direct;
		file = e->file;
		iter = e->iter;
		count0 = e->count0;
		bpf_map_delete_elem(&vfs_start, &skey);
	} else {
		/* The entry was skipped (its own misses are reported) or filtered out.
		 * A kretprobe without its entry knows nothing of the call. */
		if (!inode || filtered_out())
			return;
		/* Count the call, without its latency. */
		count(CNT_VFS_UNTIMED);
	}

	if (op == VFS_DIRECT_READ || op == VFS_DIRECT_WRITE) {
		/* Direct bytes only: the read or write call around this one counts as the op. */
		bool write = op == VFS_DIRECT_WRITE;

		if (!inode)
			return;
		io_account(BPF_CORE_READ(inode, i_sb, s_dev), true,
			   io_bytes(write ? VFS_WRITE : VFS_READ, 1, ret, have, count0, iter), write, false);
		return;
	}
	if (op == VFS_ATOMIC_OPEN) {
		/* NFSv4 opens mostly happen here (OPEN carries the lookup), not in
		 * nfs4_file_open. finish_no_open() leaves f_inode unset: then the
		 * open proper follows through f_op->open and is counted there. */
		op = VFS_OPEN;
		if (ret == 0) {
			inode = BPF_CORE_READ(file, f_inode);
			if (!inode) {
				vfs_span_abandon(&s);
				return;
			}
			dentry = BPF_CORE_READ(file, f_path.dentry);
		} else {
			dentry = 0; /* the error belongs to the mount, not to the directory */
		}
	}
	if (!inode) {
		vfs_span_abandon(&s);
		return;
	}

	if (op == VFS_LOOKUP) {
		if (ret < 0 && ret >= -MAX_ERRNO)
			status = ret;
	} else if (op == VFS_PAGE_MKWRITE) {
		if (ret & 0x43) /* VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV */
			status = -14; /* EFAULT */
	} else if (ret < 0 && ret != -EIOCBQUEUED) {
		status = ret;
	}
	dev = BPF_CORE_READ(inode, i_sb, s_dev);
	fileid = BPF_CORE_READ(inode, i_ino);

	if (op == VFS_READ || op == VFS_WRITE) {
		bytes = io_bytes(op, direct, ret, have, count0, iter);
		/* With the direct I/O functions hooked, they count O_DIRECT bytes (swap too). */
		io_account(dev, direct, (direct && (cfg.flags & CFG_F_DIRECT_FNS)) ? 0 : bytes,
			   op == VFS_WRITE, true);
	}

	k.dev = dev;
	k.op = op;
	k.pid = (live.flags & CFG_F_VFS_PID) ? bpf_get_current_pid_tgid() >> 32 : 0;
	k.cgroup_id = current_cgroup_id();
	bpf_get_current_comm(k.comm, sizeof(k.comm));
	v = bpf_map_lookup_elem(&vfs_stats, &k);
	if (!v) {
		bpf_map_update_elem(&vfs_stats, &k, &zero_vfs_val, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&vfs_stats, &k);
	}
	if (v) {
		ADD(v->calls, 1);
		if (status)
			ADD(v->errors, 1);
		ADD(v->bytes, bytes);
		if (have) {
			ADD(v->latency_ns, lat);
			ADD(v->hist[hist_index(lat)], 1);
		}
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
		file_account(op, dev, fileid, dentry, lat, bytes, status != 0);
	}
	if (have)
		emit_vfs_event(op, dev, fileid, lat, bytes, status, &s, now);
}

/* ---- btf tier: fentry/fexit. Argument lists as in 5.12+ (idmap first). ---- */

SEC("fentry/nfs_file_read")
int BPF_PROG(fe_nfs_file_read, struct kiocb *iocb, struct iov_iter *to)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_READ, iocb, to);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_read")
int BPF_PROG(fx_nfs_file_read, struct kiocb *iocb, struct iov_iter *to,
		ssize_t ret)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_READ, iocb, to);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_file_write")
int BPF_PROG(fe_nfs_file_write, struct kiocb *iocb, struct iov_iter *from)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_WRITE, iocb, from);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_write")
int BPF_PROG(fx_nfs_file_write, struct kiocb *iocb, struct iov_iter *from,
		ssize_t ret)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_WRITE, iocb, from);
	vfs_exit(&c, ret);
	return 0;
}

/* 6.5+: splice(2), sendfile(2) and copy_file_range's fallback read an NFS file here
 * (before, generic_file_splice_read went through nfs_file_read). */
SEC("fentry/nfs_file_splice_read")
int BPF_PROG(fe_nfs_file_splice_read, struct file *in, loff_t *ppos,
		void *pipe, size_t len)
{
	struct vfs_call c;

	call_file(&c, VFS_READ, in);
	c.count = len;
	c.direct = 0; /* through the page cache, whatever the file's flags: normalreadbytes */
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_splice_read")
int BPF_PROG(fx_nfs_file_splice_read, struct file *in, loff_t *ppos,
		void *pipe, size_t len, unsigned int flags, ssize_t ret)
{
	struct vfs_call c;

	call_file(&c, VFS_READ, in);
	c.direct = 0;
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_file_open")
int BPF_PROG(fe_nfs_file_open, struct inode *inode, struct file *f)
{
	struct vfs_call c;

	call_inode(&c, VFS_OPEN, inode, BPF_CORE_READ(f, f_path.dentry));
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_open")
int BPF_PROG(fx_nfs_file_open, struct inode *inode, struct file *f, int ret)
{
	struct vfs_call c;

	call_inode(&c, VFS_OPEN, inode, BPF_CORE_READ(f, f_path.dentry));
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs4_file_open")
int BPF_PROG(fe_nfs4_file_open, struct inode *inode, struct file *f)
{
	struct vfs_call c;

	call_inode(&c, VFS_OPEN, inode, BPF_CORE_READ(f, f_path.dentry));
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs4_file_open")
int BPF_PROG(fx_nfs4_file_open, struct inode *inode, struct file *f, int ret)
{
	struct vfs_call c;

	call_inode(&c, VFS_OPEN, inode, BPF_CORE_READ(f, f_path.dentry));
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_atomic_open")
int BPF_PROG(fe_nfs_atomic_open, struct inode *dir, struct dentry *d,
		struct file *f)
{
	struct vfs_call c;

	call_inode(&c, VFS_ATOMIC_OPEN, dir, d);
	c.file = f;
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_atomic_open")
int BPF_PROG(fx_nfs_atomic_open, struct inode *dir, struct dentry *d,
		struct file *f, unsigned int flags, unsigned short mode, int ret)
{
	struct vfs_call c;

	call_inode(&c, VFS_ATOMIC_OPEN, dir, d);
	c.file = f;
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_file_flush")
int BPF_PROG(fe_nfs_file_flush, struct file *f)
{
	struct vfs_call c;

	call_file(&c, VFS_FLUSH, f);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_flush")
int BPF_PROG(fx_nfs_file_flush, struct file *f, void *id, int ret)
{
	struct vfs_call c;

	call_file(&c, VFS_FLUSH, f);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs4_file_flush")
int BPF_PROG(fe_nfs4_file_flush, struct file *f)
{
	struct vfs_call c;

	call_file(&c, VFS_FLUSH, f);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs4_file_flush")
int BPF_PROG(fx_nfs4_file_flush, struct file *f, void *id, int ret)
{
	struct vfs_call c;

	call_file(&c, VFS_FLUSH, f);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_file_fsync")
int BPF_PROG(fe_nfs_file_fsync, struct file *f)
{
	struct vfs_call c;

	call_file(&c, VFS_FSYNC, f);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_fsync")
int BPF_PROG(fx_nfs_file_fsync, struct file *f, loff_t start, loff_t end,
		int datasync, int ret)
{
	struct vfs_call c;

	call_file(&c, VFS_FSYNC, f);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_getattr")
int BPF_PROG(fe_nfs_getattr, void *idmap, const struct path *path)
{
	struct vfs_call c;

	call_dentry(&c, VFS_GETATTR, BPF_CORE_READ(path, dentry));
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_getattr")
int BPF_PROG(fx_nfs_getattr, void *idmap, const struct path *path, void *stat,
		u32 mask, unsigned int flags, int ret)
{
	struct vfs_call c;

	call_dentry(&c, VFS_GETATTR, BPF_CORE_READ(path, dentry));
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_setattr")
int BPF_PROG(fe_nfs_setattr, void *idmap, struct dentry *d)
{
	struct vfs_call c;

	call_dentry(&c, VFS_SETATTR, d);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_setattr")
int BPF_PROG(fx_nfs_setattr, void *idmap, struct dentry *d, void *attr, int ret)
{
	struct vfs_call c;

	call_dentry(&c, VFS_SETATTR, d);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_lookup")
int BPF_PROG(fe_nfs_lookup, struct inode *dir, struct dentry *d)
{
	struct vfs_call c;

	call_inode(&c, VFS_LOOKUP, dir, d);
	vfs_enter(&c);
	return 0;
}

/* The verifier types the return value as a dentry pointer, on which no
 * arithmetic is allowed: copy it out of the context as a plain number. */
SEC("fexit/nfs_lookup")
int BPF_PROG(fx_nfs_lookup, struct inode *dir, struct dentry *d)
{
	struct vfs_call c;
	long ret = 0;

	bpf_probe_read_kernel(&ret, sizeof(ret), &ctx[3]);
	call_inode(&c, VFS_LOOKUP, dir, d);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_readdir")
int BPF_PROG(fe_nfs_readdir, struct file *f)
{
	struct vfs_call c;

	call_file(&c, VFS_READDIR, f);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_readdir")
int BPF_PROG(fx_nfs_readdir, struct file *f, void *dctx, int ret)
{
	struct vfs_call c;

	call_file(&c, VFS_READDIR, f);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_permission")
int BPF_PROG(fe_nfs_permission, void *idmap, struct inode *inode)
{
	struct vfs_call c;

	call_inode(&c, VFS_PERMISSION, inode, 0);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_permission")
int BPF_PROG(fx_nfs_permission, void *idmap, struct inode *inode, int mask,
		int ret)
{
	struct vfs_call c;

	call_inode(&c, VFS_PERMISSION, inode, 0);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_vm_page_mkwrite")
int BPF_PROG(fe_nfs_vm_page_mkwrite, struct vm_fault *vmf)
{
	struct vfs_call c;

	call_file(&c, VFS_PAGE_MKWRITE, BPF_CORE_READ(vmf, vma, vm_file));
	c.direct = 0;
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_vm_page_mkwrite")
int BPF_PROG(fx_nfs_vm_page_mkwrite, struct vm_fault *vmf,
		unsigned int ret)
{
	struct vfs_call c;

	call_file(&c, VFS_PAGE_MKWRITE, BPF_CORE_READ(vmf, vma, vm_file));
	c.direct = 0;
	vfs_exit(&c, ret);
	return 0;
}

/* 5.18+ (the swap flag): the only place direct bytes are counted, for read(2),
 * AIO and swap alike. */
SEC("fentry/nfs_file_direct_read")
int BPF_PROG(fe_nfs_file_direct_read, struct kiocb *iocb,
		struct iov_iter *iter)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_DIRECT_READ, iocb, iter);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_direct_read")
int BPF_PROG(fx_nfs_file_direct_read, struct kiocb *iocb,
		struct iov_iter *iter, bool swap, ssize_t ret)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_DIRECT_READ, iocb, iter);
	vfs_exit(&c, ret);
	return 0;
}

SEC("fentry/nfs_file_direct_write")
int BPF_PROG(fe_nfs_file_direct_write, struct kiocb *iocb,
		struct iov_iter *iter)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_DIRECT_WRITE, iocb, iter);
	vfs_enter(&c);
	return 0;
}

SEC("fexit/nfs_file_direct_write")
int BPF_PROG(fx_nfs_file_direct_write, struct kiocb *iocb,
		struct iov_iter *iter, bool swap, ssize_t ret)
{
	struct vfs_call c;

	call_kiocb(&c, VFS_DIRECT_WRITE, iocb, iter);
	vfs_exit(&c, ret);
	return 0;
}

/* ---- kprobe method (tier tracefs, and any tier on a preemptible kernel) ----
 * Argument lists as in 5.10; CFG_F_IDMAP_ARGS shifts those of 5.12+. */

/* A kretprobe sees no arguments: the exit describes the call from its entry. */
static __always_inline void kret_exit(__u32 op, __s64 ret)
{
	struct vfs_call c = {};

	c.op = op;
	vfs_exit(&c, ret);
}

/* RET: the function's return type. An int return leaves the upper half of rax
 * undefined, so it must be narrowed before its sign means anything. */
#define KPROBE_PAIR(fn, OP, RET, build)                          \
	SEC("kprobe/" #fn)                                       \
	int BPF_KPROBE(kp_##fn, void *a0, void *a1)              \
	{                                                        \
		struct vfs_call c;                               \
		build;                                           \
		vfs_enter(&c);                                   \
		return 0;                                        \
	}                                                        \
	SEC("kretprobe/" #fn)                                    \
	int BPF_KRETPROBE(krp_##fn, long ret)                    \
	{                                                        \
		kret_exit(OP, (RET)ret);                         \
		return 0;                                        \
	}

KPROBE_PAIR(nfs_file_read, VFS_READ, long, call_kiocb(&c, VFS_READ, a0, a1))
KPROBE_PAIR(nfs_file_write, VFS_WRITE, long, call_kiocb(&c, VFS_WRITE, a0, a1))
KPROBE_PAIR(nfs_file_direct_read, VFS_DIRECT_READ, long,
	    call_kiocb(&c, VFS_DIRECT_READ, a0, a1))
KPROBE_PAIR(nfs_file_direct_write, VFS_DIRECT_WRITE, long,
	    call_kiocb(&c, VFS_DIRECT_WRITE, a0, a1))
KPROBE_PAIR(nfs_file_open, VFS_OPEN, int,
	    call_inode(&c, VFS_OPEN, a0, BPF_CORE_READ((struct file *)a1, f_path.dentry)))
KPROBE_PAIR(nfs4_file_open, VFS_OPEN, int,
	    call_inode(&c, VFS_OPEN, a0, BPF_CORE_READ((struct file *)a1, f_path.dentry)))

SEC("kprobe/nfs_file_splice_read")
int BPF_KPROBE(kp_nfs_file_splice_read, struct file *in, loff_t *ppos, void *pipe, size_t len)
{
	struct vfs_call c;

	call_file(&c, VFS_READ, in);
	c.count = len;
	c.direct = 0;
	vfs_enter(&c);
	return 0;
}

SEC("kretprobe/nfs_file_splice_read")
int BPF_KRETPROBE(krp_nfs_file_splice_read, long ret)
{
	kret_exit(VFS_READ, ret);
	return 0;
}

SEC("kprobe/nfs_atomic_open")
int BPF_KPROBE(kp_nfs_atomic_open, struct inode *dir, struct dentry *d, struct file *f)
{
	struct vfs_call c;

	call_inode(&c, VFS_ATOMIC_OPEN, dir, d);
	c.file = f;
	vfs_enter(&c);
	return 0;
}

SEC("kretprobe/nfs_atomic_open")
int BPF_KRETPROBE(krp_nfs_atomic_open, long ret)
{
	kret_exit(VFS_ATOMIC_OPEN, (int)ret);
	return 0;
}

KPROBE_PAIR(nfs_file_flush, VFS_FLUSH, int, call_file(&c, VFS_FLUSH, a0))
KPROBE_PAIR(nfs4_file_flush, VFS_FLUSH, int, call_file(&c, VFS_FLUSH, a0))
KPROBE_PAIR(nfs_file_fsync, VFS_FSYNC, int, call_file(&c, VFS_FSYNC, a0))
/* 5.12+ put an idmap (user_namespace, later mnt_idmap) first. Chosen outside
 * BPF_CORE_READ, which would turn the cfg access into a CO-RE relocation. */
static __always_inline void *idmap_arg(void *a0, void *a1)
{
	return (cfg.flags & CFG_F_IDMAP_ARGS) ? a1 : a0;
}

static __always_inline struct dentry *path_dentry(struct path *p)
{
	return BPF_CORE_READ(p, dentry);
}

KPROBE_PAIR(nfs_getattr, VFS_GETATTR, int,
	    call_dentry(&c, VFS_GETATTR, path_dentry(idmap_arg(a0, a1))))
KPROBE_PAIR(nfs_setattr, VFS_SETATTR, int, call_dentry(&c, VFS_SETATTR, idmap_arg(a0, a1)))
KPROBE_PAIR(nfs_lookup, VFS_LOOKUP, long, call_inode(&c, VFS_LOOKUP, a0, a1))
KPROBE_PAIR(nfs_readdir, VFS_READDIR, int, call_file(&c, VFS_READDIR, a0))
KPROBE_PAIR(nfs_permission, VFS_PERMISSION, int,
	    call_inode(&c, VFS_PERMISSION, idmap_arg(a0, a1), 0))
KPROBE_PAIR(nfs_vm_page_mkwrite, VFS_PAGE_MKWRITE, unsigned int,
	    call_file(&c, VFS_PAGE_MKWRITE, BPF_CORE_READ((struct vm_fault *)a0, vma, vm_file)); c.direct = 0)

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

/*
 * READ/WRITE RPCs are keyed (dev, fileid, offset) from initiate to done: the
 * done tracepoints run in rpciod or a kworker, so only the request identifies
 * them. nfs_initiate_read runs in the task that needs the data (readahead
 * included): it records who that is.
 */
static __always_inline void pgio_begin(__u32 dev, __u64 fileid, __s64 offset, __u32 write)
{
	struct read_tag t = { .dev = dev, .write = write, .fileid = fileid, .offset = offset };
	struct pgio_val pv = {};

	pv.ts = bpf_ktime_get_ns();
	if (!write)
		current_ident(&pv.id);
	bpf_map_update_elem(&pgio, &t, &pv, BPF_ANY);
}

/* The initiate of a completion, taken out of the map; false if there was none (a
 * short READ or WRITE is resent from its new offset without a new initiate). */
static __always_inline bool pgio_end(__u32 dev, __u64 fileid, __s64 offset, __u32 write,
				     struct pgio_val *out)
{
	struct read_tag t = { .dev = dev, .write = write, .fileid = fileid, .offset = offset };
	struct pgio_val *pv = bpf_map_lookup_elem(&pgio, &t);

	if (!pv) {
		count(CNT_PGIO_UNMATCHED);
		return false;
	}
	*out = *pv;
	bpf_map_delete_elem(&pgio, &t);
	return true;
}

SEC("tracepoint/nfs/nfs_initiate_read")
int tp_nfs_initiate_read(void *ctx)
{
	pgio_begin(ctx_u32(ctx, cfg.off.ir_dev), ctx_u64(ctx, cfg.off.ir_fileid),
		   ctx_u64(ctx, cfg.off.ir_offset), 0);
	return 0;
}

SEC("tracepoint/nfs/nfs_initiate_write")
int tp_nfs_initiate_write(void *ctx)
{
	pgio_begin(ctx_u32(ctx, cfg.off.iw_dev), ctx_u64(ctx, cfg.off.iw_fileid),
		   ctx_u64(ctx, cfg.off.iw_offset), 1);
	return 0;
}

SEC("tp_btf/nfs_initiate_read")
int BPF_PROG(btf_nfs_initiate_read, const struct nfs_pgio_header *hdr)
{
	struct inode *inode;

	if (!hdr)
		return 0;
	inode = hdr->inode;
	pgio_begin(inode->i_sb->s_dev, inode->i_ino, hdr->args.offset, 0);
	return 0;
}

SEC("tp_btf/nfs_initiate_write")
int BPF_PROG(btf_nfs_initiate_write, const struct nfs_pgio_header *hdr)
{
	struct inode *inode;

	if (!hdr)
		return 0;
	inode = hdr->inode;
	pgio_begin(inode->i_sb->s_dev, inode->i_ino, hdr->args.offset, 1);
	return 0;
}

static __always_inline void read_done_owner(__u32 dev, __u64 fileid, __s64 offset, __u32 count_)
{
	struct owner_val *v;
	struct pgio_val pv;
	struct file_key fk = { .dev = dev, .fileid = fileid };
	struct file_val *fv;
	__u64 lat = 0;

	if (pgio_end(dev, fileid, offset, 0, &pv)) {
		lat = bpf_ktime_get_ns() - pv.ts;
		v = owner_get(dev, &pv.id);
	} else {
		count(CNT_UNATTRIBUTED_READS);
		v = owner_get(dev, 0);
	}
	if (v) {
		ADD(v->read_rpcs, 1);
		ADD(v->read_bytes, count_);
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
	struct pgio_val pv;
	bool mixed = false;
	__u64 lat = 0;

	if (!commit && pgio_end(dev, fileid, offset, 1, &pv))
		lat = bpf_ktime_get_ns() - pv.ts;
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
		ADD(v->commit_rpcs, 1);
		return;
	}
	ADD(v->write_rpcs, 1);
	ADD(v->write_bytes, count_);
	if (mixed)
		ADD(v->ambiguous_write_bytes, count_);
}

SEC("tracepoint/nfs/nfs_commit_done")
int tp_nfs_commit_done(void *ctx)
{
	write_done_owner(ctx_u32(ctx, cfg.off.cd_dev), ctx_u64(ctx, cfg.off.cd_fileid), 0, 0, true);
	return 0;
}

SEC("tp_btf/nfs_commit_done")
int BPF_PROG(btf_nfs_commit_done, const struct rpc_task *task,
		const struct nfs_commit_data *data)
{
	struct inode *inode;

	if (!data)
		return 0;
	inode = data->inode;
	write_done_owner(inode->i_sb->s_dev, inode->i_ino, 0, 0, true);
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

/* The same from the reply being decoded: the tracepoint records rq_task's client
 * and procedure, read here through CO-RE. */
SEC("tp_btf/nfs_xdr_status")
int BPF_PROG(btf_nfs_xdr_status, const struct xdr_stream *xdr, int error)
{
	const struct rpc_rqst *rqst;
	const struct rpc_task *task;
	char proc[BPFNFS_PROC_LEN] = {};

	if (!xdr)
		return 0;
	rqst = BPF_CORE_READ(xdr, rqst);
	task = BPF_CORE_READ(rqst, rq_task);
	bpf_probe_read_kernel_str(proc, sizeof(proc), BPF_CORE_READ(task, tk_msg.rpc_proc, p_name));
	err_account(BPF_CORE_READ(task, tk_client, cl_clid), ERR_XDR, BPF_CORE_READ(task, tk_client, cl_vers),
		    error, 0, proc);
	return 0;
}

SEC("tp_btf/nfs4_xdr_status")
int BPF_PROG(btf_nfs4_xdr_status, const struct xdr_stream *xdr, u32 op,
		u32 error)
{
	const struct rpc_rqst *rqst;

	if (!xdr)
		return 0;
	rqst = BPF_CORE_READ(xdr, rqst);
	err_account(BPF_CORE_READ(rqst, rq_task, tk_client, cl_clid), ERR_XDR4, 4, error, op, 0);
	return 0;
}
