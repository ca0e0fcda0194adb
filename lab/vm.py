"""Boot a lab kernel under QEMU (TCG) and run one command in it.

The guest sees the host root read-only over 9p with a tmpfs overlay, so it runs the host's own
binaries; only ``out_dir`` (mounted at the same path in the guest) is written through to the host.
The kernel console goes to serial port 1, the command's output to serial port 2, so the command's
output can be streamed live without kernel messages mixed in.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, TextIO

from lab import initramfs, kernels
from lab.common import LabError

NfsMode = Literal["full", "server", "none"]
NFS_MODES: tuple[NfsMode, ...] = ("full", "server", "none")
GUEST_INIT = initramfs.GUEST_DIR / "init.sh"
GUEST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
QEMU = "qemu-system-x86_64"
RC_TIMEOUT = 124
RC_NO_REPORT = 125
# Guest mounts its own filesystems over these, which would hide a result share placed there.
_HIDDEN = (Path("/proc"), Path("/sys"), Path("/dev"), Path("/run"))
_EVENT = re.compile(r"lab-event: (\S+)")
_FAILURE = re.compile(r"(Kernel panic.*|lab-stage1: FAILED: .*|lab-init: FAILED: .*|nfs-up: FAILED: .*)")


@dataclass(frozen=True)
class VMResult:
    rc: int  # the guest command's exit status; 124 on timeout, 125 if the guest reported nothing
    console_log: Path  # kernel console + command output, each line prefixed with seconds since start
    output_log: Path  # the command's output alone, as the guest wrote it
    wall_seconds: float  # QEMU start to exit
    release: str  # guest uname -r
    events: dict[str, float] = field(default_factory=dict)  # stage2, nfs-ready, command-start, ...
    error: str | None = None  # why there is no command status (timeout, setup failure, QEMU error)


def run(
    suite: str,
    command: list[str] | str,
    out_dir: Path,
    *,
    nfs: bool | NfsMode = True,
    mem: str = "512M",
    smp: int = 1,
    timeout: float = 600,
    stream: bool = False,
    env: dict[str, str] | None = None,
    cgroup: str = "v2",
) -> VMResult:
    """Boot ``suite``'s kernel, run ``command`` (argv list, or a string for ``sh -c``) and power off.

    The command runs with cwd = the current directory, PATH=/usr/sbin:/usr/bin:/sbin:/bin, plus
    ``env``. NFS: True/"full" = server + mounts at /mnt/nfs3 (v3) and /mnt/nfs4 (v4.2);
    "server" = server only; False/"none" = no NFS modules loaded. cgroup: "v2" (cgroup2 at
    /sys/fs/cgroup) or "v1" (systemd's legacy layout: one v1 hierarchy per controller, no cgroup2).
    """
    if cgroup not in ("v1", "v2"):
        raise LabError(f"unknown cgroup layout {cgroup!r} (choose from: v1, v2)")
    mode: NfsMode = "full" if nfs is True else "none" if nfs is False else nfs
    if mode not in NFS_MODES:
        raise LabError(f"unknown NFS mode {mode!r} (choose from: {', '.join(NFS_MODES)})")
    kernels.check_suite(suite)
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise LabError(f"{QEMU} not found (install qemu-system-x86 on the host)")
    out = _prepare_out_dir(out_dir)
    cwd = Path.cwd()
    _check_cmdline_path(cwd, "working directory")
    _check_cmdline_path(GUEST_INIT, "lab directory")
    kernel = kernels.fetch(suite)
    initrd = initramfs.build(kernel)
    # The uncompressed ELF skips ~4 s of decompression under TCG; BPFNFS_LAB_PVH=0 opts out.
    use_pvh = os.environ.get("BPFNFS_LAB_PVH", "1") != "0"
    image = (kernels.pvh_image(kernel) if use_pvh else None) or kernel.vmlinuz
    rows, cols = _terminal_size() if stream else (24, 80)
    (out / "cmd.sh").write_text(_command_script(command, cwd, out, suite, mode, env or {}))
    append = " ".join(
        [
            "console=ttyS0 quiet panic=-1 mitigations=off nokaslr rdinit=/init",
            f"lab.init={GUEST_INIT} lab.out={out} lab.nfs={mode} lab.rows={rows} lab.cols={cols}",
            f"lab.cgroup={cgroup}",
            kernels.cmdline(suite),
        ]
    ).strip()
    with tempfile.TemporaryDirectory(prefix="bpfnfs-lab-") as tmp:
        cmd_pipe = Path(tmp) / "cmd"
        for suffix in (".in", ".out"):
            os.mkfifo(cmd_pipe.with_name(f"cmd{suffix}"))
        argv = [
            qemu,
            "-accel", "tcg,tb-size=128",  # the default 1 GiB translation cache doubles QEMU's RSS
            "-M", "pc", "-cpu", "max", "-smp", str(smp), "-m", mem,
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", "stdio",
            "-chardev", f"pipe,id=cmdout,path={_qemu_opt(cmd_pipe)}",
            "-serial", "chardev:cmdout",
            "-kernel", str(image), "-initrd", str(initrd), "-append", append,
            # multidevs=remap: / spans several host filesystems, whose inode numbers could collide.
            "-virtfs", _virtfs("/", "hostroot", readonly=True),
            "-virtfs", _virtfs(out, "labout", readonly=False),
            "-virtfs", _virtfs(kernel.modules, "labmods", readonly=True),
        ]  # fmt: skip
        return _boot(argv, cmd_pipe.with_name("cmd.out"), out, kernel.release, timeout, stream)


def _prepare_out_dir(out_dir: Path) -> Path:
    out = out_dir.expanduser().resolve()
    if any(out == h or h in out.parents for h in _HIDDEN):
        raise LabError(
            f"out dir {out} is under a directory the guest mounts over ({', '.join(map(str, _HIDDEN))})"
        )
    _check_cmdline_path(out, "out dir")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "setup-error", "console.log", "output.log", "cmd.sh"):
        (out / stale).unlink(missing_ok=True)
    return out


def _check_cmdline_path(path: Path, what: str) -> None:
    # Paths travel on the kernel command line and through shell word splitting in the guest.
    if not path.is_absolute() or re.search(r"[\s\"'\\]", str(path)):
        raise LabError(f"{what} {str(path)!r} must be an absolute path without spaces, quotes or backslashes")


def _qemu_opt(value: str | Path) -> str:
    return str(value).replace(",", ",,")  # QEMU option values escape commas by doubling them


def _virtfs(path: str | Path, tag: str, *, readonly: bool) -> str:
    opts = f"local,path={_qemu_opt(path)},mount_tag={tag},security_model=none,multidevs=remap"
    return opts + (",readonly=on" if readonly else "")


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return 24, 80
    return size.lines, size.columns


def _command_script(
    command: list[str] | str, cwd: Path, out: Path, suite: str, mode: NfsMode, env: dict[str, str]
) -> str:
    exports = {
        "PATH": GUEST_PATH,  # first, so a host PATH (pyenv shims) is never picked up
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": os.environ.get("TERM", "dumb"),
        "LAB_OUT": str(out),
        "LAB_SUITE": suite,
        "LAB_NFS": mode,
    }
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LabError(f"invalid environment variable name {key!r}")
        exports[key] = value
    if isinstance(command, str):
        argv = ["/bin/sh", "-c", command]
    elif command:
        argv = list(command)
    else:
        raise LabError("no command given")
    lines = [
        "# Written by lab/vm.py; run by lab/guest/init.sh inside the guest.",
        f"cd {shlex.quote(str(cwd))} || exit 125",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines.append(f"exec {shlex.join(argv)}")
    return "\n".join(lines) + "\n"


def _set_pdeathsig() -> None:
    """In the QEMU child: die with the parent, so even a SIGKILLed harness leaves no QEMU behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class _Lines:
    """Split a byte stream into lines, calling ``emit`` with each complete line (and the tail at the end)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._emit(line.rstrip(b"\r").decode(errors="replace"))

    def close(self) -> None:
        if self._buf:
            self._emit(self._buf.rstrip(b"\r").decode(errors="replace"))
            self._buf = b""


def _live_writer() -> Callable[[bytes], None]:
    """Write the command's bytes to our stdout at once: a person may be watching a live table."""
    binary: BinaryIO | None = getattr(sys.stdout, "buffer", None)
    if binary is not None:

        def write_bytes(data: bytes) -> None:
            binary.write(data)
            binary.flush()

        return write_bytes
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write_text(data: bytes) -> None:  # a replaced sys.stdout (e.g. under pytest) has no .buffer
        sys.stdout.write(decoder.decode(data))
        sys.stdout.flush()

    return write_text


class _Streams:
    """Route QEMU's console, the command's serial port and QEMU's stderr to the logs."""

    def __init__(self, console: TextIO, output: BinaryIO, live: Callable[[bytes], None] | None) -> None:
        self.start = time.monotonic()
        self.events: dict[str, float] = {}
        self.qemu_errors: list[str] = []
        self.failures: list[str] = []  # guest lines explaining a missing exit status
        self._console = console
        self._output = output
        self._live = live
        self._lines = {
            "console": _Lines(self._on_console),
            "command": _Lines(self._on_command),
            "qemu": _Lines(self._on_qemu),
        }

    def elapsed(self) -> float:
        return round(time.monotonic() - self.start, 3)

    def note(self, line: str) -> None:
        self._console.write(f"[{self.elapsed():8.3f}] {line}\n")

    def feed(self, stream: str, data: bytes) -> None:
        if stream == "command":
            self._output.write(data)
            if self._live is not None:
                self._live(data)
        self._lines[stream].feed(data)

    def close(self) -> None:
        for lines in self._lines.values():
            lines.close()

    def _on_console(self, line: str) -> None:
        if m := _EVENT.search(line):
            self.events.setdefault(m.group(1), self.elapsed())
        elif m := _FAILURE.search(line):
            self.failures.append(m.group(1))
        self.note(line)

    def _on_command(self, line: str) -> None:
        self.note(f"| {line}")

    def _on_qemu(self, line: str) -> None:
        self.qemu_errors.append(line)
        self.note(f"qemu: {line}")


def _boot(argv: list[str], cmd_fifo: Path, out: Path, release: str, timeout: float, stream: bool) -> VMResult:
    # O_RDWR: the FIFO then never reports EOF before QEMU opens it; the end is QEMU's exit.
    cmd_fd = os.open(cmd_fifo, os.O_RDWR | os.O_NONBLOCK)
    with (
        (out / "console.log").open("w", encoding="utf-8") as console,
        (out / "output.log").open("wb") as output,
    ):
        streams = _Streams(console, output, _live_writer() if stream else None)
        try:
            timed_out, qemu_rc = _run_qemu(argv, cmd_fd, streams, streams.start + timeout)
        finally:
            os.close(cmd_fd)
            streams.close()
        wall = streams.elapsed()
        streams.note(f"lab: QEMU exited with status {qemu_rc}")
    problems = streams.failures + [f"QEMU: {line}" for line in streams.qemu_errors]
    return _result(out, release, wall, streams.events, timed_out, timeout, problems)


def _run_qemu(argv: list[str], cmd_fd: int, streams: _Streams, deadline: float) -> tuple[bool, int]:
    """Run QEMU until it exits or the deadline passes; QEMU is killed on any way out of here."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a terminal ^C reaches only us; we then kill QEMU ourselves
        preexec_fn=_set_pdeathsig,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "console")
            sel.register(proc.stderr, selectors.EVENT_READ, "qemu")
            sel.register(cmd_fd, selectors.EVENT_READ, "command")
            open_pipes = 2  # QEMU's stdout and stderr; both reach EOF when it exits
            while open_pipes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True, -signal.SIGKILL
                for key, _ in sel.select(min(remaining, 1.0)):
                    try:
                        data = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not data and key.data != "command":
                        sel.unregister(key.fileobj)
                        open_pipes -= 1
                    elif data:
                        streams.feed(key.data, data)
        _drain(cmd_fd, streams)
        return False, proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _drain(fd: int, streams: _Streams) -> None:
    """Read what the command wrote just before power-off and is still in the FIFO."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            return
        streams.feed("command", data)


def _result(
    out: Path,
    release: str,
    wall: float,
    events: dict[str, float],
    timed_out: bool,
    timeout: float,
    problems: list[str],
) -> VMResult:
    rc, error = _status(out, timed_out, timeout, problems)
    return VMResult(rc, out / "console.log", out / "output.log", wall, release, events, error)


def _status(out: Path, timed_out: bool, timeout: float, problems: list[str]) -> tuple[int, str | None]:
    if timed_out:
        return RC_TIMEOUT, f"timed out after {timeout:g} s"
    rc_file = out / "rc"
    text = rc_file.read_text().strip() if rc_file.is_file() else ""
    if text.lstrip("-").isdigit():
        return int(text), None
    if problems:
        return RC_NO_REPORT, problems[0]  # the first one is the cause; QEMU's first line names the option
    setup = out / "setup-error"
    if setup.is_file():
        return RC_NO_REPORT, "guest setup failed: " + setup.read_text().strip()
    return RC_NO_REPORT, "the guest reported no exit status (see the console log)"
