"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from bpfnfs.loader import libbpf as lb


@pytest.fixture
def lib() -> lb.Libbpf:
    """The distro's libbpf, or the test is skipped saying why."""
    try:
        return lb.libbpf()
    except lb.LibbpfError as e:
        pytest.skip(str(e))
