"""Log2 histogram: bucket edges must match Prometheus `le` semantics exactly."""

from bpfnfs.collect.histogram import Log2Hist, slot_for_ns, upper_bound_us


def test_bucket_edges_are_inclusive_upper_bounds() -> None:
    assert slot_for_ns(0) == 0
    assert slot_for_ns(2000) == 0  # 2 µs is <= le=2µs
    assert slot_for_ns(2001) == 1
    assert slot_for_ns(4000) == 1
    assert slot_for_ns(4001) == 2
    for k in range(1, 31):
        edge_ns = upper_bound_us(k) * 1000
        assert slot_for_ns(edge_ns) == k
        assert slot_for_ns(edge_ns + 1) == k + 1


def test_last_bucket_absorbs_everything_larger() -> None:
    assert slot_for_ns(10**18) == 31


def test_cumulative_buckets_and_quantile() -> None:
    h = Log2Hist()
    for ns in (1000, 3000, 3000, 1_000_000):
        h.counts[slot_for_ns(ns)] += 1
        h.sum_ns += ns
    cum = h.cumulative_buckets()
    assert cum[0] == (2e-6, 1)
    assert cum[1] == (4e-6, 3)
    assert cum[-1][1] == h.count == 4
    assert h.quantile(0.5) == 4e-6
    assert h.quantile(1.0) == upper_bound_us(slot_for_ns(1_000_000)) / 1e6
    assert Log2Hist().quantile(0.5) is None


def test_add_and_sub_are_inverse() -> None:
    a = Log2Hist([1] * 32, 100)
    b = Log2Hist([2] * 32, 50)
    assert (a + b) - b == a
