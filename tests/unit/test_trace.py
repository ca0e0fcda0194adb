"""`bpfnfs trace`: decoding slow-op records into lines and JSON, and the duration flag."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bpfnfs.cli.main import parse_args
from bpfnfs.cli.trace import HEADER, Tracer
from bpfnfs.collect import records as R
from bpfnfs.collect.events import OpRecord, decode_ops
from bpfnfs.config import Config
from bpfnfs.enrich.identity import IdentityResolver
from bpfnfs.enrich.mountinfo import Mount
from bpfnfs.enrich.mounts import NfsMount

DEV = 55


def _mounts() -> list[NfsMount]:
    m = Mount(
        1, 0, 0, DEV, "/sub", "/mnt/a", "rw", (), "nfs", "10.0.0.1:/export", {"vers": "3", "addr": "10.0.0.1"}
    )
    return [NfsMount(m, clid=7)]


def _event(
    kind: int,
    op: int,
    status: int = 0,
    lat: int = 250_000_000,
    span: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> OpRecord:
    span_id, parent_id, trace_id, keep = span
    raw = R.OP_EVENT.pack(
        R.REC_OP,
        R.REC_OP_VERSION,
        R.OP_EVENT.size,
        1_000_000_000,
        lat,
        0,
        0,
        99,
        42,
        4096,
        span_id,
        parent_id,
        trace_id,
        1234,
        1235,
        DEV,
        7,
        3,
        0xABC,
        status,
        kind,
        op,
        keep,
        0,
        b"dd",
        b"READ",
    )
    return decode_ops(raw)[0]


def _tracer(cfg: Config) -> Tracer:
    agent = SimpleNamespace(
        paths={(DEV, 42): ("/sub/dir/f", False)}, events=SimpleNamespace(trace_salt=0x0123456789ABCDEF)
    )
    return Tracer(agent, cfg)  # type: ignore[arg-type]


def test_vfs_event_line_and_json() -> None:
    t = _tracer(Config(trace={"min_latency": 10}))
    op = t.decode(_event(R.OP_VFS, R.VFS_OPS.index("read")), _mounts(), 0)
    assert op is not None
    assert (op.op, op.file, op.mount, op.bytes, op.errno) == ("read", "/mnt/a/dir/f", "/mnt/a", 4096, None)
    line = op.line().split()
    assert line[1:7] == ["dd", "1234", "read", "250.000", "4096", "-"] and line[7] == "/mnt/a/dir/f"
    uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    ident = IdentityResolver({9: f"/kubepods/pod{uid}/{'c' * 64}"}.get).of(9)
    d = json.loads(json.dumps(op.as_dict(ident)))
    assert d["latency_ms"] == 250.0 and d["cgroup"] == f"/kubepods/pod{uid}/{'c' * 64}" and d["fileid"] == 42
    assert d["pod_uid"] == uid and d["container_id"] == "c" * 64
    assert op.line(ident).endswith(f"/mnt/a/dir/f  [{uid}]")  # the pod's UID until the API names it
    assert HEADER.split()[:4] == ["TIME", "COMM", "PID", "OP"]


def test_errno_and_filters() -> None:
    t = _tracer(Config(trace={"min_latency": 10}))
    op = t.decode(_event(R.OP_VFS, R.VFS_OPS.index("open"), status=-2), _mounts(), 0)
    assert op is not None and op.errno == "ENOENT"
    assert (
        _tracer(Config(trace={"min_latency": 10}, filter={"mount": "/mnt/b"})).decode(
            _event(R.OP_VFS, 0), _mounts(), 0
        )
        is None
    )
    # RPC records only with --rpc
    assert t.decode(_event(R.OP_RPC, 3), _mounts(), 0) is None


@pytest.mark.parametrize(
    ("text", "ms"),
    [("10ms", 10.0), ("1.5s", 1500.0), ("500us", 0.5), ("131072001ns", 131.072001), ("7", 7.0)],
)
def test_min_latency_units(text: str, ms: float) -> None:
    cfg = parse_args(["trace", "--min-latency", text])[1]
    assert cfg.trace.min_latency == pytest.approx(ms)


def test_bad_min_latency_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["trace", "-m", "fast"])
    assert e.value.code == 2 and "--min-latency" in capsys.readouterr().err


def test_span_tree_records_carry_w3c_ids_and_times() -> None:
    """--spans: a root says why the kernel kept it; a child names its parent; the trace id is the
    agent's salt and the root's 64-bit id (32 hex digits), span ids 16; times are wall-clock ns."""
    t = _tracer(Config(trace={"spans": True, "sample_ratio": 1}))
    root = t.decode(
        _event(R.OP_VFS, R.VFS_OPS.index("read"), span=(0xA1, 0, 0xA1, R.KEEP_SAMPLED | R.KEEP_SLOW)),
        _mounts(),
        5_000,
    )
    # An RPC child is printed in span mode without --rpc.
    child = t.decode(_event(R.OP_RPC, 3, lat=1_000, span=(0xB2, 0xA1, 0xA1, 0)), _mounts(), 5_000)
    assert root is not None and child is not None
    r, c = root.as_dict(), child.as_dict()
    assert r["trace_id"] == c["trace_id"] == "0123456789abcdef00000000000000a1"
    assert (r["span_id"], r["parent_span_id"], r["kept"]) == ("00000000000000a1", None, ["slow", "sampled"])
    assert (c["span_id"], c["parent_span_id"], "kept" in c) == ("00000000000000b2", "00000000000000a1", False)
    assert (c["start_unix_nano"], c["end_unix_nano"]) == (1_000_005_000 - 1_000, 1_000_005_000)
    assert child.line().split()[3] == "\u2514READ"  # under its parent
    # Outside span mode the same fields are absent.
    plain = _tracer(Config()).decode(_event(R.OP_VFS, 0), _mounts(), 0)
    assert plain is not None and "span_id" not in plain.as_dict()


def test_spans_flags() -> None:
    cfg = parse_args(["trace", "--spans", "--sample-ratio", "0.25"])[1]
    assert cfg.trace.spans and cfg.trace.sample_ratio == 0.25
