"""`make demo`: boot the bookworm lab VM (real kernel nfsd, NFSv3 and NFSv4.2
mounts over loopback), run a workload there and show bpfnfs's live table.

    python3 -m lab.demo [--suite bookworm] [--count 15] [--interval 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab import vm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="bookworm", help="Debian suite of the guest kernel (default bookworm)")
    ap.add_argument("--count", type=int, default=15, help="reports before the demo ends (default 15)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between reports (default 2)")
    ns = ap.parse_args(argv)
    out = Path("build") / "lab" / f"demo-{ns.suite}"
    print(f"booting the {ns.suite} lab VM (QEMU, software emulation: about 20 s) ...", flush=True)
    env = {"DEMO_COUNT": str(ns.count), "DEMO_INTERVAL": str(ns.interval)}
    try:
        res = vm.run(
            ns.suite,
            ["sh", "lab/guest/demo.sh"],
            out,
            nfs="full",
            stream=True,
            env=env,
            timeout=120 + ns.count * ns.interval * 3,
        )
    except KeyboardInterrupt:
        return 130
    if res.rc != 0:
        print(
            f"demo ended with status {res.rc} ({res.error or 'see ' + str(res.console_log)})", file=sys.stderr
        )
    return res.rc


if __name__ == "__main__":
    sys.exit(main())
