"""The bench's arithmetic and output (bench/guest.py summaries, bench/report.py, docs rewrite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as host
from bench import guest, report, workloads


def _doc() -> dict[str, Any]:
    runs = []
    for rep, (base, metrics) in enumerate([(100.0, 99.0), (200.0, 190.0), (100.0, 101.0)]):
        runs.append({"rep": rep, "config": "none", "workload": "w", "ops_per_s": base})
        runs.append({"rep": rep, "config": "bpfnfs-metrics", "workload": "w", "ops_per_s": metrics})
    costs = [
        {"rep": r, "config": "bpfnfs-metrics", "app_ops": 20000, "rpcs": 5, "cpu_s": 0.2, "wall_s": 10.0,
         "peak_rss_kib": 30 * 1024, "exec_to_attached_s": 0.5, "self_reported_attach_ms": 300.0,
         "bpf_map_bytes": 2 << 20, "bpf_maps": 12, "scrape_bytes": 4096, "scrape_s_max": 0.01, "scrapes": 1}
        for r in range(3)
    ]  # fmt: skip
    return {
        "overhead": {
            "runs": runs,
            "costs": costs,
            "errors": [],
            "workloads": ["w"],
            "configs": {"none": "no agent", "bpfnfs-metrics": "metrics"},
        }
    }


def test_ratio_is_per_repetition_median_with_spread() -> None:
    s = guest.summarize_overhead(_doc())
    cell = s["ratios"]["bpfnfs-metrics"]["w"]
    # 0.99, 0.95, 1.01: paired with "none" of the same repetition, not with a pooled baseline.
    assert cell == {"median": 0.99, "min": 0.95, "max": 1.01, "n": 3, "ops_per_s_median": 101.0}
    assert s["ratios"]["none"]["w"]["median"] == 1.0
    c = s["cost"]["bpfnfs-metrics"]
    assert c["cpu_s_per_10k_ops"] == pytest.approx(0.1)  # 0.2 s over 20,000 ops
    assert c["core_fraction"] == pytest.approx(0.02)
    assert c["peak_rss_mib"] == 30.0 and c["bpf_map_mib"] == 2.0 and c["scrape_kib"] == 4.0


def test_tables_mark_targets() -> None:
    doc = _doc()
    doc["overhead_summary"] = guest.summarize_overhead(doc)
    doc["transport"] = {
        "steps": [
            {
                "target_ops_per_s": 1000,
                "ops_per_s": 999.0,
                "ops": 2000,
                "printed": 2000,
                "lost": 0,
                "exact": True,
            },
            {
                "target_ops_per_s": None,
                "ops_per_s": 5000.0,
                "ops": 9000,
                "printed": 9000,
                "lost": 0,
                "exact": True,
            },
        ],
        "overload": {"ops_per_s": 6000.0, "ops": 90000, "printed": 60000, "lost": 30002, "accounted": True},
        "max_lossless_ops_per_s": 5000.0,
        "max_lossless_is_producer_bound": True,
    }
    doc["scale"] = {"ok": True, "memory": {"rss_peak_kib": 30000}}
    tables = {t[0]: t for t in report.tables("bookworm", doc)}
    over = tables["bookworm: overhead, ops/s ratio to no agent, median (min-max)"]
    assert over[2] == [["w", "100", "0.990 (0.95-1.01) ok"]]
    cost = next(t for name, t in tables.items() if "agent cost" in name)
    assert cost[2][0][3] == "30.0 ok" and cost[2][0][4] == "0.5 ok"
    tr = next(t for name, t in tables.items() if "transport" in name)
    assert "lossless up to 5000 records/s (fio flat out" in tr[0]
    assert tr[2][-1][-1] == "accounted"
    sc = next(t for name, t in tables.items() if "scale" in name)
    assert ["memory.rss_peak_kib", "30000"] in sc[2]
    text = report.text(*over)
    assert text.splitlines()[1].split() == ["workload", "no", "agent", "ops/s", "bpfnfs-metrics"]
    assert "| w | 100 | 0.990 (0.95-1.01) ok |" in report.markdown(*over)


def test_docs_section_is_rewritten_in_place(tmp_path: Path) -> None:
    doc = _doc()
    doc["overhead_summary"] = guest.summarize_overhead(doc)
    doc["meta"] = {"kernel": "6.1.0", "date": "2026-11-23", "cpu": "QEMU", "vcpus": 2, "reps": 3}
    results = {"host": {"cpu": "EPYC", "cores": 2}, "suites": {"bookworm": doc}}
    md = tmp_path / "benchmarks.md"
    md.write_text(f"# Benchmarks\n\nmethod\n\n{host.BEGIN}\nold table\n{host.END}\n\nafter\n")
    host.write_docs(md, results)
    host.write_docs(md, results)  # idempotent
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nmethod\n") and text.endswith("after\n")
    assert "old table" not in text and text.count(host.BEGIN) == 1
    assert "### bookworm: kernel 6.1.0, 2026-11-23" in text and "| w | 100 |" in text


def test_workload_argv_and_bad_names() -> None:
    w = workloads.by_name(["randread-4k-direct"])[0]
    argv = w.argv(w.phases[0], Path("/mnt/x"), 5, 64)
    assert "--direct=1" in argv and "--runtime=5s" in argv and "--size=64M" in argv
    meta = workloads.by_name(["metadata"])[0]
    assert [p["ioengine"] for p in meta.phases] == ["filecreate", "filestat", "filedelete"]
    assert not any(a.startswith("--runtime") for a in meta.argv(meta.phases[0], Path("/m"), 5, 64))
    with pytest.raises(workloads.WorkloadError, match="unknown workload 'nope'"):
        workloads.by_name(["nope"])


def test_host_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert host.main(["--suites", "sid"]) == 2
    assert "sid" in capsys.readouterr().err
    assert host.main(["--reps", "0"]) == 2
    assert "--reps must be at least 1" in capsys.readouterr().err


def test_merge_combines_sections_of_side_by_side_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    over = _doc()
    over["overhead_summary"] = guest.summarize_overhead(over)
    over["meta"] = {"kernel": "6.1.0", "vcpus": 2, "reps": 5, "runtime_s": 3.0}
    over["vm"] = {"rc": 0}
    scale = {"meta": {"kernel": "6.1.0", "vcpus": 1, "reps": 1}, "scale": {"files": 10}, "vm": {"rc": 0}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"host": {"cpu": "EPYC", "cores": 2}, "suites": {"bookworm": scale}}))
    b.write_text(json.dumps({"host": {"cpu": "EPYC", "cores": 2}, "suites": {"bookworm": over}}))
    md = tmp_path / "benchmarks.md"
    assert host.main(["--merge", str(a), str(b), "--out", str(tmp_path / "out"), "--docs", str(md)]) == 0
    merged = json.loads((tmp_path / "out" / "results.json").read_text())["suites"]["bookworm"]
    assert merged["scale"] == {"files": 10} and merged["overhead"] == over["overhead"]
    assert merged["meta"]["reps"] == 5 and merged["meta"]["vcpus"] == 2  # the overhead run's parameters
    assert "Run as VMs side by side: scale (1 vCPU); overhead (2 vCPU)." in md.read_text()
    # The same section twice, or a file that is not a results.json: one line, exit 2.
    assert host.main(["--merge", str(b), str(b), "--out", str(tmp_path / "out"), "--docs", str(md)]) == 2
    assert "overhead is in two of the runs" in capsys.readouterr().err
    assert host.main(["--merge", str(md), "--out", str(tmp_path / "out"), "--docs", str(md)]) == 2
    assert "not a bench results.json" in capsys.readouterr().err


def test_overhead_cut_short_is_summarized_from_what_completed(tmp_path: Path) -> None:
    doc = _doc()
    doc["overhead"]["runs"].append({"rep": 3, "config": "none", "workload": "w", "ops_per_s": 100.0})
    doc["meta"] = {"reps": 5, "vcpus": 2}
    doc["vm"] = {"rc": -9}
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"host": {"cpu": "EPYC", "cores": 2}, "suites": {"bookworm": doc}}))
    md = tmp_path / "benchmarks.md"
    assert host.main(["--merge", str(a), "--out", str(tmp_path), "--docs", str(md)]) == 1  # the VM failed
    assert "3 of 5 repetitions complete (cut short" in md.read_text()
    assert "| w | 100 | 0.990 (0.95-1.01) ok |" in md.read_text()  # the rep 3 "none" alone pairs with nothing
