"""Guest side of `make bench`: runs inside a lab VM with /mnt/nfs3 and /mnt/nfs4 mounted.

    python3 -m bench.guest --out DIR [--smoke] [--reps N] [--bcc-headers PATH] [--sections ...]

Writes DIR/guest.json (rewritten after every measurement, so a run cut short keeps
what it had) and the agents' logs. The host side (python3 -m bench) boots the VM,
collects guest.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import agents, counting, transport, workloads
from bench.agents import AgentError
from bench.workloads import WorkloadError

MOUNT = Path("/mnt/nfs4")  # NFSv4.2: the protocol most clients use today
SECTIONS = ("overhead", "counting", "scale", "transport")
# The smoke run (make test): one workload per kind of hook, RPCs, the syscall side cached, metadata.
SMOKE_WORKLOADS = ["randread-4k-direct", "randread-4k-buffered", "metadata"]


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (the guest's or, from the host side, the host's)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _rpc_ops() -> int:
    """RPCs the client has sent on every NFS mount (mountstats' per-op counts)."""
    from bpfnfs.enrich.mountstats import parse_mountstats

    ms = parse_mountstats(Path("/proc/self/mountstats").read_text())
    return sum(op.ops for m in ms.values() for op in m.ops.values())


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Results:
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"meta": meta}

    def put(self, key: str, value: Any) -> None:
        self.doc[key] = value
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def overhead(args: argparse.Namespace, res: Results, specs: dict[str, agents.Spec]) -> None:
    """Every configuration runs every workload once per repetition; the order of the
    configurations rotates from one repetition to the next, so drift in the machine
    (page cache, server state, thermal) does not favour one of them."""
    work = MOUNT / "bench"
    wl = workloads.by_name(args.workloads)
    for w in wl:
        workloads.prepare(w, work, args.size_mib)
    names = list(specs)
    runs: list[dict[str, Any]] = []
    costs: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    res.put(
        "overhead",
        {
            "runs": runs,
            "costs": costs,
            "errors": errors,
            "workloads": [w.name for w in wl],
            "configs": {n: specs[n].title for n in names},
        },
    )
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            spec = specs[name]
            log(f"rep {rep + 1}/{args.reps}: {name}")
            rpc0 = _rpc_ops()
            app_ops = 0
            try:
                run = agents.start(spec, args.out / f"agent-{name}-{rep}.log")
            except AgentError as exc:
                log(f"error: {exc}")
                errors.append({"rep": rep, "config": name, "error": str(exc)})
                res.save()
                continue
            try:
                for w in wl:
                    drop_caches()
                    r = workloads.run(
                        w, work, runtime=args.runtime, size_mib=args.size_mib, meta_files=args.meta_files
                    )
                    app_ops += r.ops
                    runs.append(
                        {
                            "rep": rep,
                            "config": name,
                            "workload": w.name,
                            "ops": r.ops,
                            "seconds": round(r.seconds, 3),
                            "ops_per_s": round(r.ops_per_s, 1),
                            "bytes": r.bytes,
                        }
                    )
                    log(f"  {w.name}: {r.ops_per_s:.0f} ops/s")
                cost = run.stop()
            except (AgentError, WorkloadError) as exc:
                log(f"error: {exc}")
                errors.append({"rep": rep, "config": name, "error": str(exc)})
                if run.proc and run.proc.poll() is None:
                    run.proc.kill()
                    run.proc.wait()
                res.save()
                continue
            rpcs = _rpc_ops() - rpc0
            if spec.argv:
                costs.append({"rep": rep, "config": name, "app_ops": app_ops, "rpcs": rpcs, **vars(cost)})
            res.save()


def summarize_overhead(doc: dict[str, Any]) -> dict[str, Any]:
    """Per (config, workload): the median ratio of ops/s to "none" in the same repetition,
    and its spread. Per config: the agent's cost figures (medians)."""
    o = doc.get("overhead")
    if not o:
        return {}
    base = {(r["rep"], r["workload"]): r["ops_per_s"] for r in o["runs"] if r["config"] == "none"}
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for name in o["configs"]:
        for w in o["workloads"]:
            rs = [
                r["ops_per_s"] / base[(r["rep"], w)]
                for r in o["runs"]
                if r["config"] == name and r["workload"] == w and base.get((r["rep"], w))
            ]
            abs_ = [r["ops_per_s"] for r in o["runs"] if r["config"] == name and r["workload"] == w]
            ratios.setdefault(name, {})[w] = {
                "median": round(statistics.median(rs), 4) if rs else None,
                "min": round(min(rs), 4) if rs else None,
                "max": round(max(rs), 4) if rs else None,
                "n": len(rs),
                "ops_per_s_median": round(statistics.median(abs_), 1) if abs_ else None,
            }
    cost: dict[str, dict[str, Any]] = {}
    for name in o["configs"]:
        cs = [c for c in o["costs"] if c["config"] == name]
        if not cs:
            continue

        def med(key: str, cs: list[dict[str, Any]] = cs) -> float | None:
            vals = [c[key] for c in cs if c.get(key) is not None]
            return statistics.median(vals) if vals else None

        per10k = [1e4 * c["cpu_s"] / c["app_ops"] for c in cs if c["app_ops"]]
        core = [c["cpu_s"] / c["wall_s"] for c in cs if c["wall_s"]]
        rate = [c["app_ops"] / c["wall_s"] for c in cs if c["wall_s"]]
        cost[name] = {
            "cpu_s_per_10k_ops": round(statistics.median(per10k), 4) if per10k else None,
            "core_fraction": round(statistics.median(core), 4) if core else None,
            "app_ops_per_s": round(statistics.median(rate), 1) if rate else None,
            "peak_rss_mib": round(max(c["peak_rss_kib"] for c in cs) / 1024, 1),
            "exec_to_attached_s": med("exec_to_attached_s"),
            "self_reported_attach_ms": med("self_reported_attach_ms"),
            "bpf_map_mib": round((med("bpf_map_bytes") or 0) / (1 << 20), 2),
            "bpf_maps": med("bpf_maps"),
            "scrape_kib": round((med("scrape_bytes") or 0) / 1024, 1),
            "scrape_s_max": med("scrape_s_max"),
        }
    return {"ratios": ratios, "cost": cost}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.guest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="one repetition, small sizes")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--runtime", type=float, default=None, help="seconds per timed workload (5; smoke 2)")
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--meta-files", type=int, default=None)
    p.add_argument("--workloads", nargs="*", default=None)
    p.add_argument("--configs", nargs="*", default=None)
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--bcc-headers", type=Path, default=None)
    p.add_argument("--scale", default=None, help="files,cgroups,mounts (100000,1000,50; smoke 2000,20,6)")
    args = p.parse_args(argv)
    # The smoke run (make test) proves the bench works at small sizes; explicit options still win.
    small = args.smoke
    if small:
        args.reps, args.size_mib = 1, 16
        # One workload per kind of hook: RPCs, the syscall side cached, metadata.
        args.workloads = args.workloads or SMOKE_WORKLOADS
    args.runtime = args.runtime or (2.0 if small else 5.0)
    args.meta_files = args.meta_files or (300 if small else 10000)
    args.scale = args.scale or ("2000,20,6" if small else "100000,1000,50")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "vcpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "smoke": args.smoke,
        "reps": args.reps,
        "runtime_s": args.runtime,
        "size_mib": args.size_mib,
        "meta_files": args.meta_files,
        "mount": str(MOUNT),
        "python": sys.version.split()[0],
    }
    res = Results(args.out / "guest.json", meta)
    specs = agents.specs(args.bcc_headers)
    if args.configs:
        bad = [c for c in args.configs if c not in specs]
        if bad:
            print(f"bench: unknown configuration {bad[0]!r}; known: {', '.join(specs)}", file=sys.stderr)
            return 2
        specs = {k: v for k, v in specs.items() if k in args.configs or k == "none"}
    failed = False
    if "overhead" in args.sections:
        overhead(args, res, specs)
        res.put("overhead_summary", summarize_overhead(res.doc))
        failed |= bool(res.doc["overhead"]["errors"])
    if "counting" in args.sections:
        try:
            res.put(
                "counting",
                counting.run_counting(
                    MOUNT / "bench",
                    args.out,
                    list(workloads.by_name(args.workloads)),
                    runtime=args.runtime,
                    size_mib=args.size_mib,
                    meta_files=args.meta_files,
                    drop_caches=drop_caches,
                    log=log,
                ),
            )
        except (AgentError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
            log(f"counting: error: {exc}")
            res.put("counting", {"error": str(exc)})
            failed = True
    if "scale" in args.sections:
        from bench.scale import run_scale

        files, cgroups, mounts = (int(x) for x in args.scale.split(","))
        try:
            res.put(
                "scale",
                run_scale(
                    MOUNT / "bench-scale", args.out, files=files, cgroups=cgroups, mounts=mounts, log=log
                ),
            )
        except (AgentError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
            log(f"scale: error: {exc}")
            res.put("scale", {"error": str(exc)})
            failed = True
    if "transport" in args.sections:
        # The last step (0) is fio flat out: the fastest this guest can make records.
        rates = [500, 2000, 0] if args.smoke else [1000, 2000, 5000, 10000, 20000, 0]
        step_s = 2.0 if args.smoke else 5.0
        try:
            t = transport.run_transport(
                MOUNT / "bench-transport", args.out, rates=rates, step_s=step_s, log=log
            )
            res.put("transport", t)
        except (AgentError, WorkloadError, OSError) as exc:
            log(f"transport: error: {exc}")
            res.put("transport", {"error": str(exc)})
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
