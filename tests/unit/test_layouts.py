"""The Python mirror of bpfnfs.h against the compiled object (no privileges needed:
opening an object parses it; only loading needs the kernel)."""

from bpfnfs.collect import records as R
from bpfnfs.collect.snapshot import check_layouts
from bpfnfs.loader.object import BpfObject, object_bytes
from bpfnfs.probes.tiers import programs_for


def test_map_layouts_match_object() -> None:
    with BpfObject(object_bytes()).open() as obj:
        check_layouts(obj.maps)
        assert obj.rodata().value_size == R.CONFIG.size
        assert obj.global_map(".data").value_size == R.LIVE.size  # the live settings, alone in .data
        assert obj.maps["events"].type == 27  # one ring buffer for per-op records


def test_every_tier_program_exists() -> None:
    planned = set()
    for tier, method in (("btf", "fentry"), ("btf", "kprobe"), ("tracefs", "kprobe")):
        planned |= set(programs_for(tier, method, trees=True))
    with BpfObject(object_bytes()).open() as obj:
        assert planned == set(obj.programs)


def test_record_sizes() -> None:
    assert R.RPC_KEY.size == 32
    assert R.RPC_VAL.size == 840
    assert R.OP_EVENT.size == 168
    assert R.PATH_EVENT.size == 512
    assert R.REC_HDR.size == 8
    assert R.CONFIG.size == 120
    assert R.LIVE.size == 24
    packed = R.pack_config(1234, R.CFG_F_EVENTS, 10**7, 0o40000, {"sl_rtt": 40, "x4_error": 24}, cgroup_v1=5)
    vals = R.CONFIG.unpack(packed)
    assert vals[:7] == (1234, R.CFG_F_EVENTS, 10**7, 0o40000, 5, 0, 0)
    assert vals[7 + R.TP_OFFSET_FIELDS.index("sl_rtt")] == 40
    assert vals[7 + R.TP_OFFSET_FIELDS.index("x4_error")] == 24
    # Span trees: the sample ratio as a threshold on bpf_get_prandom_u32(); 1 keeps every root.
    half = R.CONFIG.unpack(R.pack_config(1, R.CFG_F_TREES, 0, 0, {}, sample=0.5))
    assert half[1] == R.CFG_F_TREES and half[5] == 2**31
    every = R.CONFIG.unpack(R.pack_config(1, R.CFG_F_TREES, 0, 0, {}, sample=1.0))
    assert every[1] == R.CFG_F_TREES | R.CFG_F_SAMPLE_ALL and every[5] == 2**32 - 1
