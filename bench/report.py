"""The bench's table: printed after a run, and the same figures as Markdown for docs/benchmarks.md.

Targets come from the issue; they are shown next to each figure and never asserted
(a shared TCG guest is noisy). Ratios are ops/s with the agent over ops/s without it,
in the same repetition; the median over repetitions is shown with its min-max.
"""

from __future__ import annotations

from typing import Any

from bench import agents, incumbents

TARGET_RATIO = {"bpfnfs-metrics": 0.99, "bpfnfs-trace-all": 0.97}
TARGET_CORE_AT_10K = 0.02  # fraction of a core at 10,000 ops/s
TARGET_RSS_MIB = 40.0
TARGET_ATTACH_S = 1.0


def _in_table_order(names: Any) -> list[str]:
    """Configurations as the bench defines them (results.json has its keys sorted)."""
    order = [*agents.specs(None), *incumbents.TOOLS]
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def _ratio(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("median") is None:
        return "-"
    if cell["n"] == 1:
        return f"{cell['median']:.3f}"
    return f"{cell['median']:.3f} ({cell['min']:.2f}-{cell['max']:.2f})"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ok" if ok else " MISS")


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def tables(suite: str, doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for each section that ran."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    summ = doc.get("overhead_summary") or {}
    o = doc.get("overhead") or {}
    if summ.get("ratios"):
        configs = [c for c in _in_table_order(o["configs"]) if c != "none"]
        header = ["workload", "no agent ops/s", *configs]
        rows = []
        for w in o["workloads"]:
            row = [w, _num(summ["ratios"]["none"][w]["ops_per_s_median"], "{:.0f}")]
            for c in configs:
                cell = summ["ratios"].get(c, {}).get(w)
                target = TARGET_RATIO.get(c)
                ok = (
                    None if target is None or not cell or cell["median"] is None else cell["median"] >= target
                )
                row.append(_ratio(cell) + _mark(ok))
            rows.append(row)
        out.append((f"{suite}: overhead, ops/s ratio to no agent, median (min-max)", header, rows))
    if summ.get("cost"):
        header = [
            "config",
            "CPU s per 10k ops",
            "% core (at ops/s)",
            "peak RSS MiB",
            "exec->attached s",
            "load+attach ms",
            "BPF maps MiB",
        ]
        rows = []
        for c in _in_table_order(summ["cost"]):
            k = summ["cost"][c]
            at10k = k["cpu_s_per_10k_ops"]
            rows.append(
                [
                    c,
                    _num(at10k, "{:.3f}") + (_mark(at10k <= TARGET_CORE_AT_10K) if at10k is not None else ""),
                    f"{100 * (k['core_fraction'] or 0):.1f} % ({k['app_ops_per_s'] or 0:.0f})",
                    f"{k['peak_rss_mib']:.1f}"
                    + (_mark(k["peak_rss_mib"] <= TARGET_RSS_MIB) if "bpfnfs" in c else ""),
                    _num(k["exec_to_attached_s"], "{:.1f}")
                    + (
                        _mark(k["exec_to_attached_s"] <= TARGET_ATTACH_S)
                        if "bpfnfs" in c and k["exec_to_attached_s"] is not None
                        else ""
                    ),
                    _num(k["self_reported_attach_ms"], "{:.0f}"),
                    _num(k["bpf_map_mib"]),
                ]
            )
        out.append(
            (
                f"{suite}: agent cost (medians; CPU s per 10k ops = fraction of a core at 10k ops/s)",
                header,
                rows,
            )
        )
    ct = doc.get("counting")
    if ct:
        if "error" in ct:
            out.append((f"{suite}: counting methods", ["error"], [[ct["error"]]]))
        else:
            f, k = ct["methods"].get("fentry", {}), ct["methods"].get("kprobe", {})
            rows = []
            for w in ct["workloads"]:
                fw, kw = f.get(w, {}), k.get(w, {})
                rows.append(
                    [
                        w,
                        _num(fw.get("bpf_ns_per_op"), "{:.0f}"),
                        _num(kw.get("bpf_ns_per_op"), "{:.0f}"),
                        _num(ct["ratio_kprobe_to_fentry"].get(w)),
                        _num(fw.get("ops_per_s"), "{:.0f}"),
                        _num(kw.get("ops_per_s"), "{:.0f}"),
                        f"{fw.get('recursion_misses', 0)} / {kw.get('recursion_misses', 0)}",
                    ]
                )
            head = [
                "workload",
                "fentry BPF ns/op",
                "kprobe BPF ns/op",
                "kprobe/fentry",
                "fentry ops/s",
                "kprobe ops/s",
                "misses fentry / kprobe",
            ]
            out.append((f"{suite}: counting methods, kernel cost per op (bpf_stats)", head, rows))
    sc = doc.get("scale")
    if sc:
        if "error" in sc:
            out.append((f"{suite}: scale", ["error"], [[sc["error"]]]))
        else:
            out.append((f"{suite}: scale", ["figure", "value"], [[k, str(v)] for k, v in _scale_rows(sc)]))
    tr = doc.get("transport")
    if tr:
        if "error" in tr:
            out.append((f"{suite}: transport", ["error"], [[tr["error"]]]))
        else:
            rows = [
                [
                    str(s["target_ops_per_s"] or "max"),
                    f"{s['ops_per_s']:.0f}",
                    str(s["ops"]),
                    str(s["printed"]),
                    str(s["lost"]),
                    "yes" if s["exact"] else "NO",
                ]
                for s in tr["steps"]
            ]
            ov = tr["overload"]
            rows.append(
                [
                    "consumer stopped",
                    f"{ov['ops_per_s']:.0f}",
                    str(ov["ops"]),
                    str(ov["printed"]),
                    str(ov["lost"]),
                    "accounted" if ov["accounted"] else "NOT accounted",
                ]
            )
            head = ["target ops/s", "achieved ops/s", "reads", "printed", "lost", "exact"]
            best = tr.get("max_lossless_ops_per_s")
            bound = (
                " (fio flat out: the producer was the limit)"
                if tr.get("max_lossless_is_producer_bound")
                else ""
            )
            title = f"{suite}: transport, trace -m 0: lossless up to {_num(best, '{:.0f}')} records/s{bound}"
            out.append((title, head, rows))
    return out


def _scale_rows(sc: dict[str, Any]) -> list[tuple[str, Any]]:
    """The scale section's figures, flattened; whatever bench.scale returned, in order."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif isinstance(v, list):
            rows.append((prefix, ", ".join(str(x) for x in v)))
        else:
            rows.append((prefix, v))

    walk("", sc)
    return rows


def text(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown(title: str, header: list[str], rows: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
