"""Events the kernel dropped before a bpfnfs program saw them, per counting hook.

The kernel skips a run of a program when that program is already running on the CPU
(tp_btf, raw_tp, fentry/fexit: a preempted or nested run of the same program), or
when any kprobe/classic tracepoint program or a BPF map syscall holds the CPU's
bpf_prog_active (kprobes, classic tracepoints). It counts every skip in the
program's recursion_misses (5.12+): each one is an event lost to its hook.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bpfnfs.loader.progstats import ProgStats
from bpfnfs.probes.hooks import hook_of


@dataclass(frozen=True)
class HookLoss:
    hook: str
    programs: tuple[str, ...]  # the attached programs counting for it
    lost: int | None  # events skipped there; None: the kernel keeps no miss counter (< 5.12)


def hook_losses(programs: Iterable[str], stats: dict[str, ProgStats]) -> dict[str, HookLoss]:
    """programs: the attached program names; stats: what the kernel keeps about them."""
    by_hook: dict[str, list[str]] = {}
    for p in programs:
        h = hook_of(p)
        if h is not None:
            by_hook.setdefault(h, []).append(p)
    out: dict[str, HookLoss] = {}
    for hook, progs in by_hook.items():
        misses = [stats[p].recursion_misses if p in stats else None for p in progs]
        lost = None if any(m is None for m in misses) else sum(m or 0 for m in misses)
        out[hook] = HookLoss(hook, tuple(sorted(progs)), lost)
    return out


def total_lost(losses: dict[str, HookLoss]) -> int | None:
    """All events lost, or None if the kernel keeps no miss counters at all."""
    known = [x.lost for x in losses.values() if x.lost is not None]
    if not known and losses:
        return None
    return sum(known)


# Self-accounting counters that mean something was lost: shown under the table when non-zero.
LOSS_COUNTERS = (
    "ringbuf_drops",
    "rpc_map_full",
    "io_map_full",
    "vfs_map_full",
    "owner_map_full",
    "err_map_full",
    "kretprobe_missed",
)


def loss_notes(snapshot: Any) -> list[str]:
    """What was lost, in words, for the table's and top's footer (collect.snapshot.Snapshot)."""
    c = snapshot.counters
    notes = [f"{k} {c[k]}" for k in LOSS_COUNTERS if c.get(k)]
    lost = {h: x.lost for h, x in snapshot.hooks.items() if x.lost}
    if lost:
        each = ", ".join(f"{h} {n}" for h, n in sorted(lost.items()))
        notes.append(f"events the kernel skipped before bpfnfs saw them: {each}")
    if c.get("vfs_untimed"):
        notes.append(f"syscall-side ops counted without latency {c['vfs_untimed']}")
    if c.get("file_evictions"):
        notes.append(f"file LRU evictions {c['file_evictions']} (--max-files {snapshot.files_capacity})")
    return notes


def losses_dict(snapshot: Any) -> dict[str, Any]:
    """The kernel's per-program figures and each hook's losses, for JSON (None: not available)."""
    return {
        "events_lost": total_lost(snapshot.hooks),
        "hooks": {
            h: {"lost": x.lost, "programs": list(x.programs)} for h, x in sorted(snapshot.hooks.items())
        },
        "programs": {
            name: {
                "recursion_misses": s.recursion_misses,
                "run_count": s.run_cnt,
                "run_time_ns": s.run_time_ns,
            }
            for name, s in sorted(snapshot.programs.items())
        },
    }


__all__ = ["LOSS_COUNTERS", "HookLoss", "hook_losses", "loss_notes", "losses_dict", "total_lost"]
