"""CLI: ``python3 -m lab kernel SUITE...`` and ``python3 -m lab run [options] -- CMD [ARGS...]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lab import kernels, vm
from lab.common import LabError

USAGE_EPILOG = """\
examples:
  python3 -m lab kernel bullseye bookworm trixie
  python3 -m lab run --suite trixie -- 'uname -r; grep nfs /proc/self/mountinfo'
  python3 -m lab run --nfs none --stream -- env PYTHONPATH=src python3 -m bpfnfs --help

A single CMD argument is run with sh -c; several are run as an argv. The guest command runs in
the current directory (read-only; write to $LAB_OUT or /tmp). "run" exits with the command's
status, 124 on timeout, 125 if the guest reported nothing; 2 on lab errors (bad suite, no QEMU,
download failure).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m lab",
        description="NFS lab: Debian kernels under QEMU (TCG) with NFS over loopback.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True)
    k = sub.add_parser("kernel", help="fetch kernels into the cache and print their release and paths")
    k.add_argument("suites", nargs="+", metavar="SUITE", help=f"one of: {', '.join(kernels.SUITES)}")
    k.add_argument("--refresh", action="store_true", help="re-resolve the suite even if a kernel is cached")
    r = sub.add_parser("run", help="boot a kernel and run a command; exits with the command's status")
    r.add_argument("--suite", default="bookworm", help="kernel suite (default: bookworm)")
    r.add_argument(
        "--nfs",
        choices=vm.NFS_MODES,
        default=os.environ.get("LAB_NFS", "full"),
        help="NFS in the guest: full = server + mounts, server = server only, none = no NFS modules"
        " (default: $LAB_NFS, else full)",
    )
    r.add_argument("--mem", default="512M", help="guest memory (default: 512M)")
    r.add_argument("--smp", type=int, default=1, help="guest vCPUs (default: 1)")
    r.add_argument("--timeout", type=float, default=600, help="seconds before QEMU is killed (default: 600)")
    r.add_argument("--out", type=Path, help="result directory (default: build/lab/SUITE)")
    r.add_argument("--stream", action="store_true", help="show the command's output live")
    r.add_argument("command", nargs="+", metavar="CMD", help="command to run in the guest (after --)")
    return p


def _kernel(args: argparse.Namespace) -> int:
    for suite in args.suites:
        kernels.check_suite(suite)
    for suite in args.suites:
        k = kernels.fetch(suite, refresh=args.refresh)
        print(f"{k.suite}\t{k.release}\t{k.vmlinuz}\t{k.modules}")
    return 0


def _run(args: argparse.Namespace) -> int:
    command: list[str] | str = args.command[0] if len(args.command) == 1 else args.command
    out = args.out or Path("build") / "lab" / args.suite
    result = vm.run(
        args.suite,
        command,
        out,
        nfs=args.nfs,
        mem=args.mem,
        smp=args.smp,
        timeout=args.timeout,
        stream=args.stream,
    )
    text = result.output_log.read_text(errors="replace") if result.output_log.is_file() else ""
    if not args.stream:
        sys.stdout.write(text)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")  # keep our summary line off the command's last line
    sys.stdout.flush()
    ev = result.events
    marks = ", ".join(f"{name} {ev[name]:.1f} s" for name in ("nfs-ready", "command-start") if name in ev)
    summary = f"lab: {args.suite} {result.release}: rc={result.rc} in {result.wall_seconds:.1f} s"
    print(summary + (f" ({marks})" if marks else ""), file=sys.stderr)
    if result.error:
        print(f"lab: error: {result.error}; console: {result.console_log}", file=sys.stderr)
    return result.rc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _kernel(args) if args.action == "kernel" else _run(args)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
