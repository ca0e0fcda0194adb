"""The agent's own BPF map syscalls, kept from costing the kernel's programs events.

A map syscall (lookup, update, delete, batch lookup) raises the CPU's bpf_prog_active
while it works on the map: every kprobe and classic tracepoint program that fires on
that CPU meanwhile is skipped (and counted in its recursion_misses). On a preemptible
kernel the syscall can be preempted right there, and the counter then stays raised for
the whole time slice of whatever runs instead: measured in the lab on 7.3, an agent
reading its maps every 0.2 s cost its own kprobes hundreds of events per workload. So
on such a kernel each map syscall is made under SCHED_FIFO: no normal task preempts
the thread, and the counter is raised for the syscall itself only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class MapSyscalls:
    def __init__(self) -> None:
        self.enabled = False
        self.refused: str | None = None  # why SCHED_FIFO could not be had (then: off)
        self._local = threading.local()
        self.log: Callable[[str], None] = lambda _m: None

    @contextmanager
    def guard(self) -> Iterator[None]:
        if not self.enabled or self.refused is not None or getattr(self._local, "depth", 0):
            yield
            return
        try:
            saved = (os.sched_getscheduler(0), os.sched_getparam(0))
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError as e:
            self.refused = e.strerror or str(e)
            self.log(
                f"warning: cannot run map reads under SCHED_FIFO ({self.refused}; needs CAP_SYS_NICE): on "
                "this preemptible kernel the agent's own map reads may make kprobes miss events (counted)"
            )
            yield
            return
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            os.sched_setscheduler(0, saved[0], saved[1])


MAP_SYSCALLS = MapSyscalls()

__all__ = ["MAP_SYSCALLS", "MapSyscalls"]
