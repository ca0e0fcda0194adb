"""`make bench`: boot each lab kernel, run the benchmark inside, print the table.

    python3 -m bench [--suites "bookworm"] [--smoke] [--reps N] [--out build/bench] [--docs PATH]
    python3 -m bench --merge RUN1/results.json RUN2/results.json [--out build/bench] [--docs PATH]

Writes OUT/results.json (every figure, per suite), OUT/SUITE/ (the guest's raw
guest.json and agent logs) and, unless --smoke, the results section of
docs/benchmarks.md. Exit status: 0 when every section ran, 1 when a section
reported an error (the table still shows the rest), 2 on bad input or lab errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import guest, report
from lab import kernels, vm
from lab.common import LabError

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench results: begin (make bench rewrites this section) -->", "<!-- bench results: end -->"
BCC_TOOLS = ("/usr/sbin/nfsslower-bpfcc", "/usr/sbin/nfsdist-bpfcc")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--suites", default=os.environ.get("BENCH_SUITES", "bookworm"), help="kernels (default: bookworm)"
    )
    p.add_argument("--smoke", action="store_true", help="one repetition, small sizes (make bench-smoke)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each configuration (default 5)")
    p.add_argument("--out", type=Path, default=REPO / "build" / "bench")
    p.add_argument("--docs", type=Path, default=DOCS, help="Markdown file whose results section is rewritten")
    p.add_argument("--no-bcc", action="store_true", help="leave out BCC's nfsslower and nfsdist")
    p.add_argument("--sections", nargs="*", default=None, help="sections (default: all)")
    p.add_argument("--configs", nargs="*", default=None, help="configurations to compare (default: all)")
    p.add_argument("--workloads", nargs="*", default=None, help="fio workloads (default: all)")
    p.add_argument("--runtime", type=float, default=None, help="seconds per timed workload (default 5)")
    p.add_argument("--meta-files", type=int, default=None, help="files in the metadata storm (default 10000)")
    p.add_argument("--scale", default=None, metavar="FILES,CGROUPS,MOUNTS", help="default 100000,1000,50")
    p.add_argument(
        "--smp", type=int, default=None, help="guest vCPUs (default 2: the agent and the workload; smoke 1)"
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds per VM (default: 2700 smoke, 10800 full)"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="boot nothing: combine the results.json of runs made side by side with different --sections "
        "(e.g. overhead and transport in one VM, scale in another) into OUT/results.json and the docs",
    )
    return p


def _guest_argv(args: argparse.Namespace, out: Path, headers: Path | None) -> str:
    cmd = [sys.executable, "-m", "bench.guest", "--out", str(out), "--reps", str(args.reps)]
    if args.smoke:
        cmd.append("--smoke")
    if headers is not None:
        cmd += ["--bcc-headers", str(headers)]
    for opt in ("sections", "configs", "workloads"):
        if getattr(args, opt):
            cmd += [f"--{opt}", *getattr(args, opt)]
    for opt in ("runtime", "meta_files", "scale"):
        if getattr(args, opt) is not None:
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    return f"cd {shlex.quote(str(REPO))} && {shlex.join(cmd)}"


def run_suite(args: argparse.Namespace, suite: str) -> dict[str, Any]:
    out = (args.out / suite).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    headers: Path | None = None
    bcc_note = None
    if args.no_bcc:
        bcc_note = "left out (--no-bcc)"
    elif not all(Path(t).exists() for t in BCC_TOOLS):
        bcc_note = "left out: bpfcc-tools is not installed (make bench installs it)"
    else:
        headers = kernels.fetch_headers(suite)
    timeout = args.timeout or (2700 if args.smoke else 10800)
    smp = args.smp or (1 if args.smoke else 2)  # smoke: a fair share next to the other lab VMs
    print(f"bench: {suite}: booting the lab VM (timeout {timeout:.0f} s)", file=sys.stderr, flush=True)
    res = vm.run(
        suite, _guest_argv(args, out, headers), out, mem="2048M", smp=smp, timeout=timeout, stream=True
    )
    guest = out / "guest.json"
    doc: dict[str, Any] = json.loads(guest.read_text()) if guest.is_file() else {}
    doc["vm"] = {
        "rc": res.rc,
        "release": res.release,
        "wall_s": round(res.wall_seconds, 1),
        "error": res.error,
    }
    doc.setdefault("meta", {})["bcc"] = bcc_note or "included"
    _summarize_cut_short(doc)
    return doc


def _summarize_cut_short(doc: dict[str, Any]) -> None:
    """A guest stopped during the overhead section (timeout, or killed) kept its runs in
    guest.json but never wrote the summary: make it from the repetitions that completed."""
    if doc.get("overhead") and not doc.get("overhead_summary"):
        doc["overhead_summary"] = guest.summarize_overhead(doc)
        doc["overhead"]["cut_short"] = True


def merge(paths: list[Path]) -> dict[str, Any]:
    """One results document from runs of different sections: per suite, each section is taken
    from the run that has it (a section in two runs is an error: which one would be meant?)."""
    merged: dict[str, Any] | None = None
    for path in paths:
        try:
            res = json.loads(path.read_text())
            suites: dict[str, Any] = res["suites"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabError(f"--merge: {path}: not a bench results.json ({exc})") from None
        if merged is None:
            merged = {**res, "suites": {}, "merged_from": []}
        merged["merged_from"].append(str(path))
        for suite, doc in suites.items():
            into = merged["suites"].setdefault(suite, {"meta": {}, "parts": []})
            ran = [k for k in guest.SECTIONS if doc.get(k)]
            for k in ran:
                if into.get(k):
                    raise LabError(f"--merge: {path}: {suite} {k} is in two of the runs")
                into[k] = doc[k]
            if "overhead" in ran:
                _summarize_cut_short(doc)  # results.json written before run_suite did so
                into["overhead_summary"] = doc["overhead_summary"]
            # The header line's parameters are the overhead run's; other runs only fill gaps.
            meta = doc.get("meta", {})
            into["meta"] = {**into["meta"], **meta} if "overhead" in ran else {**meta, **into["meta"]}
            part_vm = doc.get("vm") or {}
            into["parts"].append({"sections": ran, "vcpus": doc.get("meta", {}).get("vcpus"), "vm": part_vm})
            if "vm" not in into or part_vm.get("rc"):
                into["vm"] = part_vm  # a part that failed fails the whole
    assert merged is not None
    return merged


def _reps(doc: dict[str, Any]) -> str:
    o, want = doc.get("overhead") or {}, doc.get("meta", {}).get("reps")
    if not o.get("cut_short"):
        return f"{want} repetitions"
    done = {(r["rep"], r["config"], r["workload"]) for r in o["runs"]}
    reps = {r for r, _c, _w in done}
    full = [r for r in reps if all((r, c, w) in done for c in o["configs"] for w in o["workloads"])]
    return (
        f"{len(full)} of {want} repetitions complete (cut short; the configurations that finished in the "
        "last one are included)"
    )


def _markdown(results: dict[str, Any]) -> str:
    parts = []
    for suite, doc in results["suites"].items():
        m = doc.get("meta", {})
        parts.append(
            f"### {suite}: kernel {m.get('kernel', '?')}, {m.get('date', '?')}\n\n"
            f"Guest CPU `{m.get('cpu', '?')}` ({m.get('vcpus', '?')} vCPU, QEMU TCG) on host CPU "
            f"`{results['host']['cpu']}` ({results['host']['cores']} cores); {_reps(doc)}, "
            f"{m.get('runtime_s')} s per timed workload, {m.get('size_mib')} MiB files, "
            f"{m.get('meta_files')} files in the metadata storm, on `{m.get('mount')}`. BCC: {m.get('bcc')}."
            + (
                " Run as VMs side by side: "
                + "; ".join(f"{', '.join(p['sections'])} ({p['vcpus']} vCPU)" for p in doc["parts"])
                + "."
                if len(doc.get("parts", [])) > 1
                else ""
            )
        )
        parts += [report.markdown(*t) for t in report.tables(suite, doc)]
    return "\n\n".join(parts) + "\n"


def write_docs(path: Path, results: dict[str, Any]) -> None:
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{_markdown(results)}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    suites = args.suites.split()
    try:
        if not suites:
            raise LabError("--suites: no kernel suite given")
        if args.reps < 1:
            raise LabError(f"--reps must be at least 1, got {args.reps}")
        args.out.mkdir(parents=True, exist_ok=True)
        if args.merge:
            results = merge(args.merge)
        else:
            for s in suites:
                kernels.check_suite(s)
            results = {
                "host": {"cpu": guest.cpu_model(), "cores": os.cpu_count(), "kernel": platform.release()},
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "suites": {},
            }
            for s in suites:
                results["suites"][s] = run_suite(args, s)
    except LabError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    path = args.out / "results.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    print()
    failed = False
    for suite, doc in results["suites"].items():
        for t in report.tables(suite, doc):
            print(report.text(*t) + "\n")
        vm_ = doc.get("vm") or {}
        if vm_.get("rc", 0) != 0:
            failed = True
            err = vm_.get("error")
            print(f"bench: {suite}: guest exit {vm_['rc']}{': ' + err if err else ''}")
    print(f"bench: results in {path}")
    if not args.smoke:
        write_docs(args.docs, results)
        print(f"bench: table written to {args.docs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
