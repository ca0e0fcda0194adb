"""Transport: the per-op record rate bpfnfs drains without loss, and what happens above it.

The producer is fio reading a cached NFS file in 4 KiB pieces at fixed rates:
every read() is one nfs_file_read and, with `bpfnfs trace --min-latency 0`, one
record through the ring buffer. fio's own count is the oracle: at each rate the
trace must print exactly that many reads of the file and report nothing lost.
Above the drain's capacity records are dropped; we force that by stopping the
consumer (SIGSTOP) while fio runs flat out, and check that every read is either
printed or counted as lost.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import agents, workloads

RING_RECORDS = (8 << 20) // 128  # events map: 8 MiB of 128-byte op records
_LOST = re.compile(r"warning: (\d+) slow-op records lost")
_SUMMARY = re.compile(r"(\d+) operations printed, (\d+) records lost")
FILE_MIB = 4


def _reads_of(events: Path, name: str, start: int) -> tuple[int, int]:
    """(reads of ``name`` printed after byte ``start``, new end offset)."""
    n = 0
    with events.open("rb") as fh:
        fh.seek(start)
        data = fh.read()
    end = start + data.rfind(b"\n") + 1 if b"\n" in data else start
    for line in data[: end - start].splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("op") == "read" and (ev.get("file") or "").endswith(name):
            n += 1
    return n, end


def _lost(log: Path) -> int:
    return sum(int(m.group(1)) for m in _LOST.finditer(log.read_text(errors="replace")))


def _settle(
    run: agents.Running, events: Path, log: Path, quiet_for: float = 2.5, limit: float = 600.0
) -> None:
    """Wait until the trace has printed what it will: the agent is idle (it decodes a backlog
    in one go, silently, so output alone can pause) and output and loss reports stop changing.
    Loss warnings come once per mount refresh, every second."""
    t_end = time.monotonic() + limit
    last: tuple[int, int] = (-1, -1)
    cpu = run.cpu_seconds()
    since = time.monotonic()
    while time.monotonic() < t_end:
        time.sleep(0.5)
        now = (events.stat().st_size, _lost(log))
        cpu_now = run.cpu_seconds()
        busy = cpu_now - cpu > 0.05  # more than 10 % of a CPU over the last half second
        cpu = cpu_now
        if now != last or busy:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return


def _fio(path: Path, rate: int, seconds: float) -> tuple[int, float]:
    argv = [
        "fio",
        "--name=transport",
        f"--filename={path}",
        "--rw=randread",
        "--bs=4k",
        "--ioengine=psync",
        "--invalidate=0",
        "--norandommap=1",
        f"--size={FILE_MIB}M",
        "--time_based=1",
        f"--runtime={seconds:g}s",
        "--output-format=json",
    ]
    if rate:
        argv.append(f"--rate_iops={rate}")
    ops, secs, _ = workloads.run_fio(argv, f"transport at {rate or 'max'} ops/s")
    return ops, secs


def run_transport(
    workdir: Path, logdir: Path, *, rates: list[int], step_s: float, log: Callable[[str], None]
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "transport.dat"
    with data.open("wb") as fh:
        fh.write(b"\0" * (FILE_MIB << 20))
    data.read_bytes()  # into the page cache: reads below never leave the client
    events = Path("/tmp/bench-transport.jsonl")  # guest tmpfs: fast, and gone at power-off
    spec = agents.Spec(
        "bpfnfs-trace-all",
        "trace every op",
        agents.bpfnfs("trace", "--min-latency", "0", "--json"),
        "attached ",
    )
    agent_log = logdir / "transport-agent.log"
    run = agents.start(spec, agent_log, sink=events)
    steps: list[dict[str, Any]] = []
    offset = 0
    try:
        _settle(run, events, agent_log)
        _, offset = _reads_of(events, data.name, 0)
        for rate in rates:
            lost0 = _lost(agent_log)
            ops, secs = _fio(data, rate, step_s)
            _settle(run, events, agent_log)
            printed, offset = _reads_of(events, data.name, offset)
            lost = _lost(agent_log) - lost0
            step = {
                "target_ops_per_s": rate or None,
                "ops": ops,
                "ops_per_s": round(ops / secs, 1) if secs else 0.0,
                "printed": printed,
                "lost": lost,
                "exact": printed == ops and lost == 0,
            }
            log(f"transport: {step}")
            steps.append(step)
        clean = [s for s in steps if s["exact"]]
        best = max(clean, key=lambda s: s["ops_per_s"], default=None)
        # Overload: the consumer stops, so the ring (RING_RECORDS) must overflow.
        peak = max((s["ops_per_s"] for s in steps), default=1000.0) or 1000.0
        over_s = min(180.0, max(step_s, 1.5 * RING_RECORDS / peak + 2))
        lost0 = _lost(agent_log)
        assert run.proc is not None
        run.proc.send_signal(signal.SIGSTOP)
        try:
            ops, secs = _fio(data, 0, over_s)
        finally:
            run.proc.send_signal(signal.SIGCONT)
        _settle(run, events, agent_log)
        printed, offset = _reads_of(events, data.name, offset)
        lost = _lost(agent_log) - lost0
        overload = {
            "seconds": round(secs, 1),
            "ops": ops,
            "ops_per_s": round(ops / secs, 1) if secs else 0.0,
            "printed": printed,
            "lost": lost,
            # fio's open/close records can be among the lost ones: a few beyond its reads.
            "accounted": printed + lost >= ops and printed + lost - ops <= 16,
        }
        log(f"transport overload (consumer stopped): {overload}")
    finally:
        cost = run.stop()
    summary = _SUMMARY.search(agent_log.read_text(errors="replace"))
    return {
        "steps": steps,
        "max_lossless_ops_per_s": best["ops_per_s"] if best else None,
        "max_lossless_is_producer_bound": bool(best and best is steps[-1] and not rates[-1]),
        "overload": overload,
        "final_report": summary.group(0) if summary else None,
        "agent_cpu_s": round(cost.cpu_s, 2),
        "agent_peak_rss_kib": cost.peak_rss_kib,
        "ring_records": RING_RECORDS,
    }
