"""The configurations the overhead table compares, and what each agent costs.

A configuration is an argv started before the workloads and stopped after them.
While it runs we know its pid, so its cost comes from the kernel's own books:
CPU from /proc/PID/stat, peak RSS from VmHWM, BPF map memory from the memlock
line of each map fd in /proc/PID/fdinfo. "Attached" is the moment the agent's
log says so (bpfnfs: "attached N programs"; BCC tools: their banner).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import incumbents

PORT = 19763  # not the default 9763: a developer's own agent may hold that
SCRAPE_EVERY = 15.0  # Prometheus' default scrape interval
TICK = os.sysconf("SC_CLK_TCK")
_ATTACH_MS = re.compile(r"attached \d+ programs in (\d+) ms")


class AgentError(RuntimeError):
    """An agent did not start, attach or stop; the message names it and quotes its log."""


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    argv: tuple[str, ...]  # empty: no agent
    ready: str = ""  # a line containing this in the agent's output means attached
    scrape: bool = False  # a Prometheus-like client scrapes /metrics while it runs
    env: tuple[tuple[str, str], ...] = ()
    # Stopped (SIGSTOP) once attached: the programs run in the kernel, user space does nothing.
    # Splits an agent's overhead into its in-kernel part and its user-space part.
    freeze: bool = False


def bpfnfs(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "bpfnfs", *args)


def specs(bcc_headers: Path | None) -> dict[str, Spec]:
    """Every configuration, in table order. The BCC ones only with kernel headers."""
    out = {
        "none": Spec("none", "no agent", ()),
        "bpfnfs-metrics": Spec(
            "bpfnfs-metrics",
            "bpfnfs metrics (exporter, scraped every 15 s)",
            bpfnfs("run", "--listen", f"127.0.0.1:{PORT}", "--quiet"),
            ready="attached ",
            scrape=True,
        ),
        "bpfnfs-probes-only": Spec(
            "bpfnfs-probes-only",
            "bpfnfs programs only (agent stopped after attach)",
            bpfnfs("run", "--listen", f"127.0.0.1:{PORT}", "--quiet"),
            ready="attached ",
            freeze=True,
        ),
        # Traces are per-op records through the ring buffer: -m 0 sends every syscall-side op and
        # every RPC, the default sends those slower than 10 ms. Output goes to /dev/null.
        "bpfnfs-trace-all": Spec(
            "bpfnfs-trace-all",
            "bpfnfs traces, every op (trace -m 0 --rpc --json)",
            bpfnfs("trace", "--min-latency", "0", "--rpc", "--json"),
            ready="attached ",
        ),
        "bpfnfs-trace-default": Spec(
            "bpfnfs-trace-default",
            "bpfnfs traces, default threshold (trace --rpc, 10 ms)",
            bpfnfs("trace", "--rpc", "--json"),
            ready="attached ",
        ),
    }
    if bcc_headers is not None:
        env = tuple(incumbents.bcc_env(bcc_headers).items())
        for name, argv in incumbents.TOOLS.items():
            out[name] = Spec(
                name, incumbents.TITLES[name], tuple(argv), incumbents.ready_marker(name), env=env
            )
    return out


@dataclass
class Cost:
    """What one agent run cost, read just before it was stopped."""

    exec_to_attached_s: float | None = None
    self_reported_attach_ms: float | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_kib: int = 0
    bpf_map_bytes: int = 0
    bpf_maps: int = 0
    scrapes: int = 0
    scrape_bytes: int = 0
    scrape_s_max: float = 0.0


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (all threads)


def status_kib(pid: int, key: str) -> int:
    """One kB figure of /proc/PID/status: VmHWM (peak RSS), VmRSS..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def bpf_map_memory(pid: int) -> tuple[int, int]:
    """(bytes, maps): memlock of every BPF map the process holds a fd of."""
    total = n = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        if "map_type:" not in text:
            continue
        m = re.search(r"^memlock:\s+(\d+)", text, re.M)
        if m:
            total += int(m.group(1))
            n += 1
    return total, n


@dataclass
class Running:
    spec: Spec
    proc: subprocess.Popen[bytes] | None
    log: Path
    t_exec: float
    cost: Cost = field(default_factory=Cost)
    _cpu0: float = 0.0
    _t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _scraper: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.proc.pid) if self.proc else 0.0

    def mark(self) -> None:
        """Start of the measured window (after attach)."""
        self._cpu0 = self.cpu_seconds()
        self._t0 = time.monotonic()

    def _scrape_loop(self) -> None:
        url = f"http://127.0.0.1:{PORT}/metrics"
        while not self._stop.wait(SCRAPE_EVERY):
            t = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    body = r.read()
            except OSError:
                continue
            self.cost.scrapes += 1
            self.cost.scrape_bytes = len(body)
            self.cost.scrape_s_max = max(self.cost.scrape_s_max, time.monotonic() - t)

    def stop(self, timeout: float = 60.0) -> Cost:
        self._stop.set()
        if self._scraper:
            self._scraper.join()
        if self.proc is None:
            return self.cost
        pid = self.proc.pid
        if self.proc.poll() is not None:
            raise AgentError(
                f"{self.spec.name} exited early (status {self.proc.returncode}): {tail(self.log)}"
            )
        self.cost.cpu_s = self.cpu_seconds() - self._cpu0
        self.cost.wall_s = time.monotonic() - self._t0
        self.cost.peak_rss_kib = status_kib(pid, "VmHWM")
        self.cost.bpf_map_bytes, self.cost.bpf_maps = bpf_map_memory(pid)
        if self.spec.freeze:
            os.killpg(pid, signal.SIGCONT)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AgentError(f"{self.spec.name} did not stop within {timeout:.0f} s of SIGINT") from None
        return self.cost


def tail(log: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def start(spec: Spec, log: Path, *, attach_timeout: float = 300.0, sink: Path | None = None) -> Running:
    """Start the agent and wait until it has attached. stdout goes to ``sink`` (default
    /dev/null, but BCC tools print their banner there, so they log to ``log``)."""
    if not spec.argv:
        run = Running(spec, None, log, time.monotonic())
        run.mark()
        return run
    env = {**os.environ, **dict(spec.env), "PYTHONUNBUFFERED": "1"}
    banner_on_stdout = not spec.name.startswith("bpfnfs")
    logf = log.open("wb")
    out = logf if banner_on_stdout and sink is None else (sink.open("wb") if sink else subprocess.DEVNULL)
    t_exec = time.monotonic()
    proc = subprocess.Popen(spec.argv, stdout=out, stderr=logf, env=env, start_new_session=True)
    run = Running(spec, proc, log, t_exec)
    deadline = t_exec + attach_timeout
    while True:
        text = log.read_text(errors="replace")
        if spec.ready in text:
            run.cost.exec_to_attached_s = time.monotonic() - t_exec
            if m := _ATTACH_MS.search(text):
                run.cost.self_reported_attach_ms = float(m.group(1))
            break
        if proc.poll() is not None:
            raise AgentError(
                f"{spec.name} exited with status {proc.returncode} before attaching: {tail(log)}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AgentError(f"{spec.name} did not attach within {attach_timeout:.0f} s: {tail(log)}")
        time.sleep(0.02)
    if spec.scrape:
        run._scraper = threading.Thread(target=run._scrape_loop, name="scraper", daemon=True)
        run._scraper.start()
    if spec.freeze:
        time.sleep(1.0)  # past the first collection
        os.killpg(proc.pid, signal.SIGSTOP)
    run.mark()
    return run
