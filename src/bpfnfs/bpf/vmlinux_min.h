/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Minimal kernel types for bpfnfs's CO-RE programs.
 *
 * Every struct is marked preserve_access_index, so member offsets here are
 * irrelevant: libbpf relocates each access against the running kernel's BTF
 * (vmlinux, and module BTF for sunrpc/nfs types). Only member names and
 * their sizes must be right. Keeping this small (instead of a generated
 * 100k-line vmlinux.h) makes builds fast and independent of the build host.
 */
#ifndef __BPFNFS_VMLINUX_MIN_H
#define __BPFNFS_VMLINUX_MIN_H
/* Tells bpf_tracing.h to use kernel pt_regs member names (di, ax, ...). */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;
typedef __s64 s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
typedef long ssize_t;
typedef unsigned long size_t;
typedef long long loff_t;
typedef __u32 dev_t;
typedef __s64 ktime_t;

enum {
	false = 0,
	true = 1,
};

/* BPF map types and flags used by the programs (uapi values, stable). */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};

/* Register file for kprobes (x86-64 layout, as bpf_tracing.h expects). */
struct pt_regs {
	unsigned long r15;
	unsigned long r14;
	unsigned long r13;
	unsigned long r12;
	unsigned long bp;
	unsigned long bx;
	unsigned long r11;
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long ax;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
	unsigned long ip;
	unsigned long cs;
	unsigned long flags;
	unsigned long sp;
	unsigned long ss;
};

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* ---- vmlinux types (present in vmlinux BTF on every supported kernel) ---- */

struct super_block {
	dev_t s_dev;
	void *s_fs_info;
};

/* i_ino is NFS's 64-bit fileid on 64-bit architectures (nfs_fileid_to_ino_t). */
struct inode {
	struct super_block *i_sb;
	unsigned long i_ino;
};

struct qstr {
	const unsigned char *name;
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
};

struct path {
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
	unsigned int f_flags;
};

struct vm_area_struct {
	struct file *vm_file;
};

struct vm_fault {
	struct vm_area_struct *vma;
};

struct kiocb {
	struct file *ki_filp;
	loff_t ki_pos;
	int ki_flags;
};

/* count sits in an anonymous union on 6.x; CO-RE finds it by name. */
struct iov_iter {
	size_t count;
};

/* ---- sunrpc module types (module BTF: 5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES) ---- */

struct rpc_program {
	const char *name;
	u32 number;
};

struct rpc_procinfo {
	u32 p_proc;
	u32 p_statidx;
	const char *p_name;
};

struct rpc_message {
	const struct rpc_procinfo *rpc_proc;
};

struct rpc_clnt {
	unsigned int cl_clid;
	u32 cl_prog;
	u32 cl_vers;
	const struct rpc_program *cl_program;
	struct rpc_clnt *cl_parent;
};

struct rpc_task;

struct rpc_rqst {
	struct rpc_task *rq_task;
	__be32 rq_xid;
	int rq_ntrans;
	ktime_t rq_xtime;             /* when the request was transmitted */
	ktime_t rq_rtt;
	unsigned long rq_xmit_bytes_sent;
	u32 rq_reply_bytes_recvd;
};

struct xdr_stream {
	struct rpc_rqst *rqst;
};

struct rpc_task {
	ktime_t tk_start;
	struct rpc_message tk_msg;
	struct rpc_clnt *tk_client;
	struct rpc_rqst *tk_rqstp;
	int tk_status;
	unsigned short tk_timeouts;
	unsigned short tk_pid;
	int tk_owner;
};

/* ---- nfs module types ---- */

struct nfs_pgio_res {
	u32 count;
};

struct nfs_pgio_args {
	loff_t offset;
};

struct nfs_pgio_header {
	struct inode *inode;
	struct nfs_pgio_args args;
	struct nfs_pgio_res res;
};

struct nfs_commit_data {
	struct inode *inode;
};

/* cgroup v1 attribution (cfg.cgroup_v1): task -> css_set -> a controller's css ->
 * its cgroup -> the cgroup directory's kernfs node, whose id is the directory's
 * inode number. subsys[] has CGROUP_SUBSYS_COUNT entries, which depends on the
 * kernel's configuration: CO-RE relocates the array's offset, not its length. */
struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct cgroup_subsys_state {
	struct cgroup *cgroup;
};

struct css_set {
	struct cgroup_subsys_state *subsys[1];
};

struct task_struct {
	struct css_set *cgroups;
};

#pragma clang attribute pop

#endif /* __BPFNFS_VMLINUX_MIN_H */
