"""Command-line errors: argparse-style message and exit code 2, no traceback."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from bpfnfs.cli.main import parse_config
from bpfnfs.config import Config
from bpfnfs.probes.system import RequirementError, check_privileges, check_vmlinux_btf, effective_caps


@pytest.mark.parametrize(
    "argv",
    [
        ["--interval", "x"],
        ["--interval", "0"],
        ["--count", "0"],
        ["--tier", "bogus"],
        ["--bogus"],
        ["run", "-c", "-1"],
        ["--by", "container"],
        ["--pid", "0"],
        ["--pid", "abc"],
        ["--comm", "a-command-name-longer-than-15"],
        ["--comm", ""],
        ["--mount", "relative/path"],
        ["--server", "bad host!"],
        ["--top", "0"],
        ["--sort", "name"],
        ["--max-files", "10"],
        ["--cgroup", ""],
    ],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: bpfnfs" in err and "error:" in err


def test_run_alias_and_defaults() -> None:
    cfg = parse_config(["run", "--json", "-i", "0.5", "-c", "3"])
    assert cfg == Config(collection={"interval": 0.5}, view={"count": 3, "format": "json"})
    assert parse_config([]) == Config()


def test_config_validates() -> None:
    with pytest.raises(ValidationError, match="interval"):
        Config(collection={"interval": 0.001})
    with pytest.raises(ValidationError, match="tier"):
        Config(collection={"tier": "kprobe"})


def test_privileges_message() -> None:
    with pytest.raises(RequirementError, match=r"CAP_BPF and CAP_PERFMON.*sudo"):
        check_privileges(caps=0)
    check_privileges(caps=1 << 21)  # CAP_SYS_ADMIN
    check_privileges(caps=(1 << 38) | (1 << 39))  # CAP_PERFMON + CAP_BPF
    assert effective_caps("Name:\tx\nCapEff:\t000001ffffffffff\n") == 0x1FFFFFFFFFF


def test_missing_btf_message(tmp_path: Path) -> None:
    with pytest.raises(RequirementError, match="CONFIG_DEBUG_INFO_BTF"):
        check_vmlinux_btf(tmp_path)


def test_filters_parse() -> None:
    cfg = parse_config(
        ["--by", "cgroup", "--pid", "42", "--comm", "fio", "--mount", "/mnt/a/", "--server", "nas1"]
    )
    assert (cfg.view.by, cfg.filter.pid, cfg.filter.comm, cfg.filter.mount, cfg.filter.server) == (
        "cgroup",
        42,
        "fio",
        "/mnt/a",
        "nas1",
    )
    assert parse_config(["--server", "fd00::1"]).filter.server == "fd00::1"
