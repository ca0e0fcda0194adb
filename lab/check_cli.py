"""Guest side: the `bpfnfs` command as a person runs it.

    python3 -m lab.check_cli --out DIR [--late]

Default: NFS is mounted. Checks --json output, the table, SIGTERM cleanup
(no BPF program left, per `bpftool prog`), and a refused --tier.
--late: the lab booted with no NFS at all; bpfnfs starts first, says it is
waiting, and must attach and count once the modules load and a mount appears.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BPFNFS = [sys.executable, "-m", "bpfnfs"]
# Kernel program names are cut to 15 characters; these prefixes cover every bpfnfs program.
OUR_PROGS = ("btf_", "fe_nfs", "fx_nfs", "kp_nfs", "krp_nfs", "kp_rpc", "raw_rpc", "tp_rpc", "tp_nfs")


def log(msg: str) -> None:
    print(f"lab.check_cli: {msg}", flush=True)


def our_programs() -> list[str]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return [p.get("name", "") for p in json.loads(out.stdout) if p.get("name", "").startswith(OUR_PROGS)]


class Checks:
    """Named pass/fail checks of one guest program, logged as they are added."""

    def __init__(self, prog: str = "lab.check_cli") -> None:
        self.prog = prog
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: Any = None) -> None:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        line = f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if not ok and detail is not None else "")
        print(f"{self.prog}: {line}", flush=True)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.items if not c["ok"])


def start(args: list[str], out: Path, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    so, se = out / f"{name}.stdout", out / f"{name}.stderr"
    p = subprocess.Popen([*BPFNFS, *args], stdout=so.open("wb"), stderr=se.open("wb"))
    return p, so, se


def docs(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written, or a table
    return out


def wait_for(path: Path, text: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def stop(p: subprocess.Popen[bytes]) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout=30)


def mounted(c: Checks, out: Path) -> None:
    base = our_programs()
    c.add("no bpfnfs programs before start", not base, base)
    # JSON: two documents, both mounts, in per-interval and total form.
    r = subprocess.run(
        [*BPFNFS, "--json", "--count", "2", "--interval", "1"], capture_output=True, text=True, timeout=120
    )
    (out / "json.stdout").write_text(r.stdout)
    (out / "json.stderr").write_text(r.stderr)
    docs = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    c.add("--json --count 2 exits 0", r.returncode == 0, r.stderr[-500:])
    c.add("--json printed 2 documents", len(docs) == 2, len(docs))
    if docs:
        mps = {m["mount_point"] for m in docs[-1]["mounts"]}
        c.add("--json lists both mounts", {"/mnt/nfs3", "/mnt/nfs4"} <= mps, sorted(mps))
        c.add("--json names the tier", docs[-1]["tier"] in ("btf", "tracefs"), docs[-1]["tier"])
    c.add("tier is announced on stderr", "tier " in r.stderr, r.stderr[-300:])
    # Table while a writer runs; then SIGTERM.
    p, so, _se = start(["--interval", "1"], out, "table")
    # Write only once the first table is out: attaching takes seconds under TCG.
    c.add("table appears", wait_for(so, "mounted on /mnt/nfs3", 60), so.read_text()[-300:])
    subprocess.run(
        "dd if=/dev/zero of=/mnt/nfs3/cli-dd bs=1M count=4 conv=fsync status=none", shell=True, check=True
    )
    ok = wait_for(so, "WRITE", 15)
    rc = stop(p)
    text = so.read_text()
    c.add("table shows WRITE ops", ok, text[-600:])
    c.add("SIGTERM exits 0", rc == 0, rc)
    left = our_programs()
    c.add("no bpfnfs programs left after SIGTERM", not left, left)
    # Bad input: unknown flag and a tier this kernel cannot serve.
    r = subprocess.run([*BPFNFS, "--interval", "-1"], capture_output=True, text=True)
    c.add("bad --interval exits 2", r.returncode == 2 and "interval" in r.stderr, r.stderr)
    # Not root: dropping to nobody clears every capability.
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *BPFNFS, "--count", "1"],
        capture_output=True,
        text=True,
    )
    c.add(
        "non-root exits 2 naming the fix",
        r.returncode == 2 and "sudo" in r.stderr and "Traceback" not in r.stderr,
        r.stderr,
    )
    # Filters: invalid values exit 2 naming the flag; valid ones narrow the view.
    for args, word in (
        (["--pid", "999999"], "filter.pid 999999: no such process"),
        (["--comm", "x" * 20], "filter.comm (--comm)"),
        (["--cgroup", "/no/such/cgroup"], "filter.cgroup /no/such/cgroup"),
        (["--mount", "relative"], "filter.mount (--mount)"),
        (["--server", "bad host!"], "filter.server (--server)"),
        (["--by", "container"], "--by"),
    ):
        r = subprocess.run([*BPFNFS, *args, "--count", "1"], capture_output=True, text=True, timeout=120)
        c.add(
            f"bad filter {' '.join(args)[:30]} exits 2",
            r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr,
            r.stderr[-300:],
        )
    p, so, _se = start(
        ["--json", "--interval", "1", "--by", "process", "--comm", "dd", "--mount", "/mnt/nfs4"], out, "filt"
    )
    wait_for(so, "mounts", 60)
    subprocess.run(
        "dd if=/dev/zero of=/mnt/nfs4/filt-dd bs=64k count=16 conv=fsync status=none", shell=True, check=True
    )
    subprocess.run("cat /mnt/nfs4/filt-dd > /dev/null", shell=True, check=True)
    time.sleep(2.5)
    stop(p)
    docs = [json.loads(line) for line in so.read_text().splitlines() if line.strip()]
    mps = {m["mount_point"] for d in docs for m in d["mounts"]}
    comms = {r["comm"] for d in docs for m in d["mounts"] for r in m.get("rows", []) if r.get("calls")}
    wrote = sum(r["write_bytes"] for d in docs for m in d["mounts"] for r in m.get("rows", []))
    c.add("--mount /mnt/nfs4 shows only that mount", mps == {"/mnt/nfs4"}, sorted(mps))
    c.add("--comm dd shows only dd's syscalls", comms == {"dd"}, sorted(comms))
    c.add("--comm dd counts dd's bytes", wrote == 16 * 65536, wrote)
    for by in ("op", "cgroup", "file"):
        r = subprocess.run([*BPFNFS, "--by", by, "--count", "1"], capture_output=True, text=True, timeout=120)
        c.add(f"--by {by} table exits 0", r.returncode == 0 and "mounted on" in r.stdout, r.stderr[-300:])
    if not Path("/sys/kernel/btf/nfs").exists():
        r = subprocess.run([*BPFNFS, "--tier", "btf", "--count", "1"], capture_output=True, text=True)
        c.add(
            "--tier btf without module BTF exits 2 with a reason",
            r.returncode == 2 and "module BTF" in r.stderr and "Traceback" not in r.stderr,
            r.stderr,
        )


def _late_writes(stdout: Path) -> int:
    """The largest write_bytes the JSON stream has shown for /mnt/nfs4 so far."""
    writes = 0
    for line in stdout.read_text(errors="replace").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        for m in d["mounts"]:
            if m["mount_point"] == "/mnt/nfs4":
                writes = max(writes, m["totals"]["io"]["write_bytes"])
    return writes


def late(c: Checks, out: Path) -> None:
    c.add("nfs module not loaded at start", not Path("/sys/module/nfs").exists())
    p, so, se = start(["--json", "--interval", "1"], out, "late")
    c.add("says it waits for the modules", wait_for(se, "waiting for", 20), se.read_text()[-300:])
    # Modules and server first, no mount yet: bpfnfs attaches and says there is nothing to show.
    r = subprocess.run(["sh", "lab/guest/nfs-up.sh", "server"], capture_output=True, text=True)
    c.add("NFS server came up after bpfnfs started", r.returncode == 0, r.stderr[-500:])
    # Loading takes 15-40 s under TCG (libbpf's BTF searches, fentry most): wait on what it says.
    c.add("attaches once the modules appear", wait_for(se, "attached", 120), se.read_text()[-400:])
    c.add("says there are no NFS mounts yet", wait_for(se, "no NFS mounts yet", 15), se.read_text()[-400:])
    r = subprocess.run(["sh", "lab/guest/nfs-up.sh", "mount"], capture_output=True, text=True)
    c.add("mounts appear after bpfnfs attached", r.returncode == 0, r.stderr[-500:])
    if "waiting for nfsv4" in se.read_text():
        # The v4.2 mount loaded nfsv4: its programs attach as a second object, maps shared.
        c.add(
            "attaches the nfsv4 programs when the v4 mount loads nfsv4",
            wait_for(se, "nfsv4 loaded: attached", 120),
            se.read_text()[-400:],
        )
    subprocess.run(
        "dd if=/dev/zero of=/mnt/nfs4/late-dd bs=1M count=2 conv=fsync status=none", shell=True, check=True
    )
    # The next intervals' documents carry the mount (mountinfo refresh) and its writes.
    end = time.monotonic() + 30
    while _late_writes(so) < 2 << 20 and time.monotonic() < end:
        time.sleep(0.5)
    rc = stop(p)
    c.add("SIGTERM exits 0", rc == 0, rc)
    writes = _late_writes(so)
    c.add("counts the late mount's writes", writes >= 2 << 20, writes)
    left = our_programs()
    c.add("no bpfnfs programs left after SIGTERM", not left, left)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.check_cli")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--late", action="store_true")
    ns = ap.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    c = Checks()
    (late if ns.late else mounted)(c, ns.out)
    name = "cli-late.json" if ns.late else "cli.json"
    (ns.out / name).write_text(json.dumps({"checks": c.items, "failed": c.failed}, indent=1))
    log(f"{len(c.items)} checks, {c.failed} failed")
    return 0 if not c.failed else 3


if __name__ == "__main__":
    sys.exit(main())
