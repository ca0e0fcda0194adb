"""Guest side: `bpfnfs top` as a person uses it, in a tmux session.

    python -m lab.check_top --out DIR

Starts `bpfnfs top` in a detached 200x50 tmux session while dd writes and reads a
file on /mnt/nfs3, then presses keys and reads the screen back (tmux capture-pane):
the mount view shows WRITE, `f` lists the file, `s` sorts by bytes, `p` shows dd,
`q` ends the session and leaves no BPF program behind. Every screen read is saved
as DIR/top-*.txt; DIR/top.json holds the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lab.check_cli import Checks, log, our_programs

SESSION = "top"
SOCKET = "bpfnfs-lab"  # a tmux server of our own: nothing else's sessions are touched
# UTF-8, or tmux shows rich's "…" and box characters as "_".
ENV = {**os.environ, "LANG": "C.UTF-8"}
ATTACH_TIMEOUT = 90.0  # attaching takes up to 15 s under TCG, the first interval more
KEY_TIMEOUT = 20.0
# A row that needs the workload busy in the last interval: one dd cycle (write 10 MiB, fsync,
# drop caches, read it back) takes up to 30 s under TCG, its writes under a second of it.
ACTIVITY_TIMEOUT = 75.0
FILE = "/mnt/nfs3/top-file"
# Title line of a mount in every view: "/mnt/nfs3  server:/export  nfs v3  dev 0:52".
TITLE = re.compile(r"^(/\S*)  \S*:\S*  nfs v")


def tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-u", "-L", SOCKET, *args], capture_output=True, text=True, env=ENV)


def session_alive() -> bool:
    return tmux("has-session", "-t", SESSION).returncode == 0


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION).stdout


def section(text: str, mount: str) -> list[str]:
    """The lines under one mount's title, up to the next mount's."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        m = TITLE.match(line)
        if m:
            inside = m.group(1) == mount
        elif inside:
            out.append(line)
    return out


def rows_named(text: str, mount: str, first: str) -> list[str]:
    return [ln for ln in section(text, mount) if ln.split()[:1] == [first]]


class Screens:
    """Reads the pane until a condition holds; every last read is kept in out/top-NAME.txt."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def wait(self, name: str, ok: Callable[[str], bool], timeout: float) -> tuple[bool, str]:
        end = time.monotonic() + timeout
        text = ""
        while True:
            text = screen()
            good = ok(text)
            if good or time.monotonic() > end or not session_alive():
                break
            time.sleep(0.5)
        (self.out / f"top-{name}.txt").write_text(text)
        return good, text


def header(text: str) -> str:
    return text.splitlines()[0] if text.strip() else ""


def top_command(out: Path) -> tuple[str, bool]:
    """The shell command tmux runs, and whether it is the real `bpfnfs top` subcommand."""
    py = shlex.quote(sys.executable)
    r = subprocess.run([sys.executable, "-m", "bpfnfs", "top", "--help"], capture_output=True, text=True)
    if r.returncode == 0:
        cmd = f"{py} -m bpfnfs top --interval 1"
    else:
        code = (
            "from bpfnfs.cli.top import run_top; from bpfnfs.config import Config; "
            "raise SystemExit(run_top(Config(collection={'interval': 1})))"
        )
        cmd = f"{py} -c {shlex.quote(code)}"
    # Its exit status and stderr (the agent's messages, replayed on exit) go to files.
    err, rc = shlex.quote(str(out / "top.stderr")), shlex.quote(str(out / "top.rc"))
    return f"{cmd} 2>{err}; echo $? >{rc}", r.returncode == 0


def start_workload(stop: Path) -> subprocess.Popen[bytes]:
    """dd writing then (caches dropped) reading the file, over and over until `stop` exists."""
    script = f"""
end=$(( $(date +%s) + 400 ))  # a cap only: stop_workload() ends it
while [ ! -e {shlex.quote(str(stop))} ] && [ "$(date +%s)" -lt "$end" ]; do
    dd if=/dev/zero of={FILE} bs=64k count=160 conv=fsync status=none
    echo 3 > /proc/sys/vm/drop_caches
    dd if={FILE} of=/dev/null bs=64k status=none
done
"""
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def stop_workload(p: subprocess.Popen[bytes], stop: Path) -> None:
    stop.touch()
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # its own session: only the loop and its dd
        p.wait()


def check_top(c: Checks, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = our_programs()
    c.add("no bpfnfs programs before start", not base, base)
    cmd, real = top_command(out)
    c.add("`bpfnfs top --help` works", real)
    if not real:
        log("`bpfnfs top` is not a subcommand yet: running run_top() through python -c")
    else:
        r = subprocess.run(
            [sys.executable, "-m", "bpfnfs", "top"], stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        c.add(
            "without a terminal: exit 2 naming the alternatives",
            r.returncode == 2 and "needs a terminal" in r.stderr and "Traceback" not in r.stderr,
            (r.returncode, r.stderr[-300:]),
        )
    tmux("kill-session", "-t", SESSION)  # a leftover of an earlier run
    r = tmux("new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50", "-c", os.getcwd(), cmd)
    c.add("tmux session starts", r.returncode == 0, r.stderr)
    (out / "top.cmd").write_text(cmd + "\n")
    shots = Screens(out)
    stop = Path(tempfile.mkdtemp(prefix="top-")) / "stop"
    work: subprocess.Popen[bytes] | None = None
    try:
        ok, text = shots.wait(
            "attached", lambda t: bool(re.search(r"tier (btf|tracefs)", header(t))), ATTACH_TIMEOUT
        )
        c.add(
            "header names bpfnfs top and the tier", ok and header(text).startswith("bpfnfs top"), header(text)
        )
        work = start_workload(stop)
        ok, text = shots.wait("mounts", lambda t: bool(rows_named(t, "/mnt/nfs3", "WRITE")), ATTACH_TIMEOUT)
        c.add("mount view: /mnt/nfs3 has a WRITE row", ok, text[-1500:])
        if ok:
            cols = rows_named(text, "/mnt/nfs3", "WRITE")[0].split()
            c.add("mount view: WRITE ops/s is a positive number", float(cols[1]) > 0, cols)
        c.add("mount view lists /mnt/nfs4 too", "/mnt/nfs4" in text, text[-800:])
        tmux("send-keys", "-t", SESSION, "f")
        ok, text = shots.wait("files", lambda t: "view files" in header(t) and FILE in t, KEY_TIMEOUT)
        c.add(f"f: files view lists {FILE}", ok, text[-1500:])
        tmux("send-keys", "-t", SESSION, "s")
        ok, text = shots.wait("files-bytes", lambda t: "sort bytes" in header(t), KEY_TIMEOUT)
        c.add("s: header shows sort bytes", ok, header(text))
        tmux("send-keys", "-t", SESSION, "p")
        ok, text = shots.wait(
            "processes",
            lambda t: "view processes" in header(t) and bool(re.search(r"^dd \[\d+\]", t, re.M)),
            ACTIVITY_TIMEOUT,
        )
        c.add("p: processes view has a dd row", ok, text[-1500:])
        c.add("p: sort stays bytes", "sort bytes" in header(text), header(text))
        tmux("send-keys", "-t", SESSION, "o")
        ok, text = shots.wait(
            "ops",
            lambda t: "view ops" in header(t) and bool(rows_named(t, "/mnt/nfs3", "write")),
            ACTIVITY_TIMEOUT,
        )
        c.add("o: ops view has a write row for /mnt/nfs3", ok, text[-1500:])
        stop_workload(work, stop)
        work = None
        tmux("send-keys", "-t", SESSION, "q")
        end = time.monotonic() + 10
        while session_alive() and time.monotonic() < end:
            time.sleep(0.2)
        c.add("q: the session ends within 10 s", not session_alive())
        rc_file = out / "top.rc"
        rc = rc_file.read_text().strip() if rc_file.exists() else None
        c.add("q: exit status 0", rc == "0", rc)
        err = (out / "top.stderr").read_text(errors="replace") if (out / "top.stderr").exists() else ""
        c.add("no traceback on stderr", "Traceback" not in err, err[-1500:])
        c.add("agent messages are replayed after the screen", "attached" in err, err[-500:])
        left = our_programs()
        c.add("no bpfnfs programs left after q", not left, left)
    finally:
        if work is not None:
            stop_workload(work, stop)
        if session_alive():
            (out / "top-last.txt").write_text(screen())
            tmux("kill-session", "-t", SESSION)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.check_top")
    ap.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args(argv)
    c = Checks("lab.check_top")
    check_top(c, ns.out)
    (ns.out / "top.json").write_text(json.dumps({"checks": c.items, "failed": c.failed}, indent=1))
    log(f"top: {len(c.items)} checks, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
