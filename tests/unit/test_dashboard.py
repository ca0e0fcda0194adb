"""The Grafana dashboard (deploy/grafana/bpfnfs.json) and its query extraction (lab/dashboard.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from lab.common import LabError
from lab.dashboard import dashboard_queries, iter_panels, metric_names, promtool_check, rule_file, substitute

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "bpfnfs.json"
PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)

# Every metric bpfnfs exports (histograms by their base name). Per-mount series carry mount/server/export/
# nfs_version labels; the agent's self metrics do not.
PER_MOUNT_METRICS = {
    "bpfnfs_mount_info",
    "bpfnfs_rpc_operations_total",
    "bpfnfs_rpc_retransmissions_total",
    "bpfnfs_rpc_timeouts_total",
    "bpfnfs_rpc_sent_bytes_total",
    "bpfnfs_rpc_received_bytes_total",
    "bpfnfs_rpc_queue_seconds",
    "bpfnfs_rpc_rtt_seconds",
    "bpfnfs_rpc_execute_seconds",
    "bpfnfs_rpc_errors_total",
    "bpfnfs_server_errors_total",
    "bpfnfs_read_bytes_total",
    "bpfnfs_write_bytes_total",
    "bpfnfs_server_read_bytes_total",
    "bpfnfs_server_write_bytes_total",
    "bpfnfs_vfs_operation_duration_seconds",
    "bpfnfs_vfs_errors_total",
    "bpfnfs_process_operations_total",
    "bpfnfs_process_operation_seconds_total",
    "bpfnfs_process_errors_total",
    "bpfnfs_process_read_bytes_total",
    "bpfnfs_process_write_bytes_total",
    "bpfnfs_process_server_read_bytes_total",
    "bpfnfs_process_server_write_bytes_total",
    "bpfnfs_file_operations_total",
    "bpfnfs_file_read_bytes_total",
    "bpfnfs_file_write_bytes_total",
    "bpfnfs_file_server_read_bytes_total",
    "bpfnfs_file_server_write_bytes_total",
    "bpfnfs_file_operation_seconds_total",
    "bpfnfs_file_errors_total",
}
SELF_METRICS = {
    "bpfnfs_build_info",
    "bpfnfs_probe_attached",
    "bpfnfs_events_lost_total",
    "bpfnfs_map_evictions_total",
    "bpfnfs_map_full_total",
    "bpfnfs_kretprobe_missed_total",
    "bpfnfs_files_tracked",
    "bpfnfs_files_capacity",
}
KNOWN_METRICS = PER_MOUNT_METRICS | SELF_METRICS
HISTOGRAMS = {
    "bpfnfs_rpc_queue_seconds",
    "bpfnfs_rpc_rtt_seconds",
    "bpfnfs_rpc_execute_seconds",
    "bpfnfs_vfs_operation_duration_seconds",
}

DATASOURCE = "${datasource}"
INSTANCE_MATCHER = 'instance=~"$instance"'
MOUNT_MATCHER = 'mount=~"$mount"'
# A selector: metric name plus optional {matchers}, label values may hold braces.
SELECTOR = re.compile(r'(?<![\w:])(bpfnfs_\w+)\s*(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?')
RANGE = re.compile(r"\[([^\]]*)\]")


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return list(iter_panels(dash["panels"]))


def _content_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _panels(dash) if p["type"] != "row"]


def _raw_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _content_panels(dash) for t in p.get("targets", [])]


# ---------------------------------------------------------------- dashboard structure


def test_valid_json_uid_title(dash: dict[str, Any]) -> None:
    assert dash["uid"] == "bpfnfs-client"
    assert dash["title"] == "bpfnfs — NFS client"
    assert dash["schemaVersion"] >= 36
    assert dash.get("id") is None  # importable: no instance-specific id


def test_panel_ids_unique_and_grid_positions(dash: dict[str, Any]) -> None:
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= g.keys(), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]


def _overlaps(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    bad = []
    for i, a in enumerate(panels):
        for b in panels[i + 1 :]:
            ga, gb = a["gridPos"], b["gridPos"]
            if (
                ga["x"] < gb["x"] + gb["w"]
                and gb["x"] < ga["x"] + ga["w"]
                and ga["y"] < gb["y"] + gb["h"]
                and gb["y"] < ga["y"] + ga["h"]
            ):
                bad.append((a["title"], b["title"]))
    return bad


def test_panels_do_not_overlap(dash: dict[str, Any]) -> None:
    assert _overlaps(dash["panels"]) == []
    for row in dash["panels"]:
        if row["type"] == "row" and row.get("collapsed"):
            assert row["panels"], f"collapsed row {row['title']} is empty"
            assert _overlaps(row["panels"]) == []
        elif row["type"] == "row":
            assert row.get("panels", []) == []  # an expanded row's panels follow it at top level


def test_every_panel_and_target_uses_the_datasource_variable(dash: dict[str, Any]) -> None:
    for p in _content_panels(dash):
        assert p["datasource"]["uid"] == DATASOURCE, p["title"]
        assert p["datasource"]["type"] == "prometheus", p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]


def test_panel_types_and_units(dash: dict[str, Any]) -> None:
    for p in _content_panels(dash):
        assert p["type"] in {"timeseries", "table", "stat", "gauge"}, p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]


def _expected_unit(exprs: list[str]) -> str | None:
    """The unit a timeseries panel must have, judged from what its queries compute."""
    units = set()
    for e in exprs:
        if e.startswith("histogram_quantile(") or "_seconds_sum" in e or "_seconds_total" in e:
            units.add("s")
        elif "_bytes_total" in e:
            units.add("Bps")
        elif "operations_total" in e or "_seconds_count" in e:
            units.add("ops")
        else:
            return None
    return units.pop() if len(units) == 1 else None


def test_units_match_the_queries(dash: dict[str, Any]) -> None:
    checked = 0
    for p in _content_panels(dash):
        if p["type"] != "timeseries":
            continue
        expected = _expected_unit([t["expr"] for t in p["targets"]])
        if expected:
            assert p["fieldConfig"]["defaults"]["unit"] == expected, p["title"]
            checked += 1
    assert checked >= 15


def test_variables(dash: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["multi"] and inst["includeAll"]
    assert inst["datasource"]["uid"] == DATASOURCE
    assert re.sub(r"\s", "", inst["definition"]) == "label_values(bpfnfs_build_info,instance)"
    mount = variables["mount"]
    assert mount["type"] == "query" and mount["multi"] and mount["includeAll"]
    assert mount["datasource"]["uid"] == DATASOURCE
    mount_query = 'label_values(bpfnfs_mount_info{instance=~"$instance"},mount)'
    assert re.sub(r"\s", "", mount["definition"]) == mount_query
    for v in (inst, mount):
        q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        assert q == v["definition"]


# ---------------------------------------------------------------- queries


def test_only_known_metrics(dash: dict[str, Any]) -> None:
    used: set[str] = set()
    for title, expr in _raw_exprs(dash):
        names = metric_names(expr)
        assert names, f"{title}: no bpfnfs metric in {expr}"
        assert names <= KNOWN_METRICS, f"{title}: unknown {names - KNOWN_METRICS}"
        used |= names
    # The panels the dashboard promises, by the metrics they need.
    assert {
        "bpfnfs_rpc_operations_total",
        "bpfnfs_read_bytes_total",
        "bpfnfs_write_bytes_total",
        "bpfnfs_server_read_bytes_total",
        "bpfnfs_server_write_bytes_total",
        "bpfnfs_rpc_execute_seconds",
        "bpfnfs_rpc_rtt_seconds",
        "bpfnfs_rpc_queue_seconds",
        "bpfnfs_rpc_retransmissions_total",
        "bpfnfs_rpc_timeouts_total",
        "bpfnfs_rpc_errors_total",
        "bpfnfs_server_errors_total",
        "bpfnfs_vfs_errors_total",
        "bpfnfs_vfs_operation_duration_seconds",
        "bpfnfs_process_read_bytes_total",
        "bpfnfs_process_write_bytes_total",
        "bpfnfs_process_operations_total",
        "bpfnfs_process_server_read_bytes_total",
        "bpfnfs_process_server_write_bytes_total",
        "bpfnfs_file_read_bytes_total",
        "bpfnfs_file_write_bytes_total",
        "bpfnfs_file_operations_total",
        "bpfnfs_events_lost_total",
        "bpfnfs_map_full_total",
        "bpfnfs_map_evictions_total",
        "bpfnfs_probe_attached",
        "bpfnfs_files_tracked",
        "bpfnfs_files_capacity",
    } <= used


def test_every_selector_filters_instance_and_mount(dash: dict[str, Any]) -> None:
    for title, expr in _raw_exprs(dash):
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{title}: {expr}"
        for name, matchers in selectors:
            assert INSTANCE_MATCHER in matchers, f"{title}: {name} lacks {INSTANCE_MATCHER}"
            base = metric_names(name).pop()
            if base in PER_MOUNT_METRICS:
                assert MOUNT_MATCHER in matchers, f"{title}: {name} lacks {MOUNT_MATCHER}"


def test_rates_use_grafana_windows(dash: dict[str, Any]) -> None:
    for title, expr in _raw_exprs(dash):
        for window in RANGE.findall(expr):
            assert window in {"$__rate_interval", "$__range"}, f"{title}: [{window}]"
        for name in re.findall(r"(?<![\w:])bpfnfs_\w+_(?:total|bucket|sum|count)\b", expr):
            # Counters are only ever read through rate().
            assert re.search(rf"rate\({name}\{{", expr), f"{title}: {name} outside rate()"


def test_histogram_quantiles_aggregate_by_le(dash: dict[str, Any]) -> None:
    exprs = [e for _, e in _raw_exprs(dash)]
    quantiles = [e for e in exprs if "histogram_quantile" in e]
    assert quantiles
    for e in quantiles:
        assert re.search(r"sum by \(le(, \w+)*\) \(rate\(bpfnfs_\w+_bucket\{", e), e
    for q in ("0.5", "0.9", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({q}, sum by (le, op) (rate(bpfnfs_rpc_execute_seconds_bucket{{")
            for e in exprs
        ), q
    assert any(e.startswith("sum by (mount) (rate(bpfnfs_rpc_operations_total{") for e in exprs)


def test_tables_are_instant(dash: dict[str, Any]) -> None:
    tables = [p for p in _content_panels(dash) if p["type"] == "table"]
    assert any(
        "bpfnfs_file_read_bytes_total" in t["expr"] and t["expr"].startswith("topk(10,")
        for p in tables
        for t in p["targets"]
    )
    assert any(
        "bpfnfs_probe_attached" in t["expr"]
        for p in _content_panels(dash)
        if p["type"] in {"table", "stat"}
        for t in p["targets"]
    )
    for p in tables:
        for t in p["targets"]:
            assert t["instant"] is True and t.get("format") == "table", p["title"]


def test_dashboard_queries_cover_every_target_and_substitute(dash: dict[str, Any]) -> None:
    queries = dashboard_queries(DASHBOARD)
    assert len(queries) == len(_raw_exprs(dash))
    titles = {t for t, _ in queries}
    collapsed = [p for row in dash["panels"] if row.get("collapsed") for p in row["panels"]]
    assert collapsed and {p["title"] for p in collapsed} <= titles
    for title, expr in queries:
        assert "$" not in expr and "[[" not in expr, f"{title}: {expr}"
        for window in RANGE.findall(expr):
            assert window in {"1m", "1h"}, f"{title}: {expr}"

    custom = dashboard_queries(DASHBOARD, rate_interval="2m", instance="host:9877", mount="/mnt/a|/mnt/b")
    exprs = [e for _, e in custom]
    assert any('mount=~"/mnt/a|/mnt/b"' in e for e in exprs)
    assert all('instance=~"host:9877"' in e for e in exprs)
    assert any("[2m]" in e for e in exprs)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_every_query_parses_with_promtool() -> None:
    assert PROMTOOL is not None
    promtool_check([e for _, e in dashboard_queries(DASHBOARD)], promtool=PROMTOOL)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_promtool_check_rejects_bad_promql() -> None:
    assert PROMTOOL is not None
    with pytest.raises(LabError, match="parse error"):
        promtool_check(["sum(rate(bpfnfs_rpc_operations_total[1m]))", "sum by (op (x)"], promtool=PROMTOOL)


# ---------------------------------------------------------------- lab/dashboard.py helpers


def test_metric_names() -> None:
    e = (
        "histogram_quantile(0.99, sum by (le, op)"
        ' (rate(bpfnfs_rpc_execute_seconds_bucket{mount=~"$mount"}[5m])))'
        " / on() group_left sum(bpfnfs_rpc_execute_seconds_sum) + bpfnfs_rpc_execute_seconds_count"
        ' + bpfnfs_files_tracked + count(bpfnfs_probe_attached{probe="bpfnfs_fake_in_a_label"})'
        ' + absent(x{job="bpfnfs_ignored"}) + not_bpfnfs_metric'
    )
    assert metric_names(e) == {"bpfnfs_rpc_execute_seconds", "bpfnfs_files_tracked", "bpfnfs_probe_attached"}
    assert metric_names("rate(bpfnfs_rpc_operations_total[1m])") == {"bpfnfs_rpc_operations_total"}
    assert metric_names("up") == set()
    assert HISTOGRAMS <= KNOWN_METRICS


def test_substitute_variable_forms() -> None:
    values = {"__rate_interval": "1m", "instance": ".*", "mount": "/a", "__range": "1h", "__interval": "1m"}
    assert substitute("x[$__rate_interval] y[${__rate_interval}] [[mount]] ${mount:regex}", values) == (
        "x[1m] y[1m] /a /a"
    )
    assert substitute('a{m=~"^/x$"} [$__range]', values) == 'a{m=~"^/x$"} [1h]'
    with pytest.raises(ValueError, match="unknown Grafana variable"):
        substitute("rate(x[$nope])", values)


def test_nested_panels_of_collapsed_rows(tmp_path: Path) -> None:
    d = {
        "time": {"from": "now-6h", "to": "now"},
        "panels": [
            {"type": "timeseries", "title": "top", "targets": [{"expr": "rate(a[$__interval])"}]},
            {
                "type": "row",
                "title": "r",
                "collapsed": True,
                "panels": [
                    {
                        "type": "timeseries",
                        "title": "inner",
                        "targets": [{"expr": "increase(b[$__range]) / $__range_s"}, {"refId": "B"}],
                    },
                ],
            },
        ],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(d))
    assert dashboard_queries(path, rate_interval="30s") == [
        ("top", "rate(a[30s])"),
        ("inner", "increase(b[6h]) / 21600"),
    ]


def test_rule_file_escapes_expressions() -> None:
    text = rule_file(['sum(x{a="b\\\\c"})', "y"])
    assert text.startswith("groups:\n")
    assert text.count("- record: ") == 2
    assert '"sum(x{a=\\"b\\\\\\\\c\\"})"' in text
