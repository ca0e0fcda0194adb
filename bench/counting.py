"""Bench section "counting": what each counting method costs the kernel per NFS operation.

bpfnfs counts through tp_btf and fentry/fexit (the "fentry" method) on kernels whose
BPF programs are not preempted, and through classic tracepoints and kprobes/kretprobes
("kprobe", run with preemption disabled) on preemptible ones (docs/design.md,
"Preemption"). Here each method's programs run alone (the agent is stopped after
attach, as in the probes-only configuration), with the kernel's BPF statistics on
(kernel.bpf_stats_enabled=1: run time and run count per program, "bpf_stats"), under
every workload in turn. Figures per workload and method:

- bpf ns per op: the run time of all bpfnfs programs over the workload, divided by
  the operations fio completed (syscall-side ops; RPCs are fewer or more);
- ops/s: fio's own rate, so the kprobe/kretprobe dispatch that bpf_stats does not
  see (int3 or ftrace trampolines, return probes) shows in the throughput;
- programs' recursion misses: events each method lost (on a preemptible kernel the
  fentry method's).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import agents, workloads

METHODS = ("fentry", "kprobe")
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
# Program names as the kernel keeps them (cut to 15 characters): every bpfnfs program.
OURS = ("btf_", "fe_nfs", "fx_nfs", "kp_nfs", "krp_nfs", "kp_rpc", "raw_rpc", "tp_rpc", "tp_nfs")


def spec(method: str) -> agents.Spec:
    return agents.Spec(
        f"bpfnfs-{method}",
        f"bpfnfs programs only, --counting {method}",
        agents.bpfnfs("run", "--counting", method, "--listen", f"127.0.0.1:{agents.PORT}", "--quiet"),
        ready="attached ",
        freeze=True,
    )


def prog_stats() -> dict[str, tuple[int, int, int]]:
    """name -> (run_time_ns, run_cnt, recursion_misses) of every loaded bpfnfs program."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    stats: dict[str, tuple[int, int, int]] = {}
    for p in json.loads(out.stdout):
        name = p.get("name", "")
        if name.startswith(OURS):
            old = stats.get(name, (0, 0, 0))
            stats[name] = (
                old[0] + int(p.get("run_time_ns", 0)),
                old[1] + int(p.get("run_cnt", 0)),
                old[2] + int(p.get("recursion_misses", 0)),
            )
    return stats


def delta(a: dict[str, tuple[int, int, int]], b: dict[str, tuple[int, int, int]]) -> dict[str, list[int]]:
    return {k: [v[i] - a.get(k, (0, 0, 0))[i] for i in range(3)] for k, v in b.items()}


def summarize(per: dict[str, list[int]], ops: int, seconds: float) -> dict[str, Any]:
    ns = sum(v[0] for v in per.values())
    runs = sum(v[1] for v in per.values())
    top = sorted(per.items(), key=lambda kv: -kv[1][0])[:5]
    return {
        "ops": ops,
        "ops_per_s": round(ops / seconds, 1) if seconds else None,
        "bpf_ns": ns,
        "bpf_runs": runs,
        "bpf_ns_per_op": round(ns / ops, 1) if ops else None,
        "runs_per_op": round(runs / ops, 2) if ops else None,
        "recursion_misses": sum(v[2] for v in per.values()),
        "top_programs": {k: {"ns": v[0], "runs": v[1]} for k, v in top},
    }


def run_counting(
    work: Path,
    out: Path,
    wl: list[workloads.Workload],
    *,
    runtime: float,
    size_mib: int,
    meta_files: int,
    drop_caches: Callable[[], None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    for w in wl:
        workloads.prepare(w, work, size_mib)
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1\n")
    result: dict[str, Any] = {"methods": {}, "workloads": [w.name for w in wl]}
    try:
        for method in METHODS:
            run = agents.start(spec(method), out / f"agent-counting-{method}.log")
            per_workload: dict[str, Any] = {}
            try:
                for w in wl:
                    drop_caches()
                    s0 = prog_stats()
                    r = workloads.run(w, work, runtime=runtime, size_mib=size_mib, meta_files=meta_files)
                    per_workload[w.name] = summarize(delta(s0, prog_stats()), r.ops, r.seconds)
                    log(f"counting {method}: {w.name}: {per_workload[w.name]['bpf_ns_per_op']} BPF ns/op, "
                        f"{r.ops_per_s:.0f} ops/s")  # fmt: skip
            finally:
                run.stop()
            result["methods"][method] = per_workload
    finally:
        STATS_SYSCTL.write_text(before + "\n")
    # kprobe / fentry, per workload: what the preemption-safe method costs in comparison.
    f, k = result["methods"].get("fentry", {}), result["methods"].get("kprobe", {})
    result["ratio_kprobe_to_fentry"] = {
        w: round(k[w]["bpf_ns_per_op"] / f[w]["bpf_ns_per_op"], 2)
        if w in f and w in k and f[w]["bpf_ns_per_op"] and k[w]["bpf_ns_per_op"]
        else None
        for w in result["workloads"]
    }
    return result


__all__ = ["METHODS", "run_counting", "summarize"]
