"""The configuration model: precedence of flags, environment, file and defaults in every
section; dump/check round trip; the original tool's files; malformed files each give one
message naming the key path and exit 2 with no traceback; reload on SIGHUP."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfnfs.cli.flags import parse_args
from bpfnfs.cli.main import Reloader, main
from bpfnfs.cli.runtime import unbuilt
from bpfnfs.config import RESTART_KEYS, Config, ConfigError, Layers, dump
from bpfnfs.config import docs as config_docs
from bpfnfs.config.sources import MAX_FILE_BYTES, parse_yaml

DATA = Path(__file__).resolve().parents[1] / "data"
BTF = "/sys/kernel/btf/vmlinux"


def _get(cfg: Config, path: str) -> Any:
    v: Any = cfg
    for p in path.split("."):
        v = getattr(v, p)
    return v


def _nested(path: str, value: Any) -> dict[str, Any]:
    d: Any = value
    for p in reversed(path.split(".")):
        d = {p: d}
    return d


# One key per section: (key, file value, environment text, flags, flag value). Sections with no
# flag (the original's btf, probing, output, pprof; dns; kubernetes) check env > file > default.
PRECEDENCE = [
    ("collection.interval", 5, "7", ["--interval", "9"], 9.0),
    ("filter.comm", "fromfile", "fromenv", ["--comm", "fromflag"], "fromflag"),
    ("view.by", "op", "cgroup", ["--by", "file"], "file"),
    ("metrics.top_files", 3, "4", ["--metrics-top-files", "5"], 5),
    ("trace.rpc", False, "false", [], None),  # trace flags: checked in test_trace_precedence
    ("dns.ttl", "10s", "20", [], None),
    ("features.nfs_metrics", False, "true", ["--no-nfs-metrics"], False),
    ("btf.model_dir", "/", "/sys", [], None),
    ("probing.add_funcs", "a:1", "b:2", [], None),
    ("output.otlp.endpoint", "f:4317", "e:4317", [], None),
    ("pprof.listen", "127.0.0.1:1", "127.0.0.1:2", [], None),
    ("kubernetes.node_name", "file-node", "env-node", [], None),
]
EXPECT = {
    "collection.interval": (1.0, 5.0, 7.0),
    "filter.comm": (None, "fromfile", "fromenv"),
    "view.by": ("mount", "op", "cgroup"),
    "metrics.top_files": (10, 3, 4),
    "trace.rpc": (False, False, False),
    "dns.ttl": (300.0, 10.0, 20.0),
    "features.nfs_metrics": (True, False, True),
    "btf.model_dir": (Path("/sys/kernel/btf"), Path("/"), Path("/sys")),
    "probing.add_funcs": ([], ["a:1"], ["b:2"]),
    "output.otlp.endpoint": ("", "f:4317", "e:4317"),
    "pprof.listen": ("127.0.0.1:6060", "127.0.0.1:1", "127.0.0.1:2"),
    "kubernetes.node_name": (None, "file-node", "env-node"),
}


def _write(tmp_path: Path, data: Any, name: str = "c.yaml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(p)


def test_every_section_is_covered() -> None:
    assert {k.split(".")[0] for k, *_ in PRECEDENCE} == set(Config.model_fields)


@pytest.mark.parametrize(("key", "fval", "eval_", "flags", "flagval"), PRECEDENCE)
def test_precedence(tmp_path: Path, key: str, fval: Any, eval_: str, flags: list[str], flagval: Any) -> None:
    default, from_file, from_env = EXPECT[key]
    env_name = "BPFNFS_" + key.upper().replace(".", "__")
    f = _write(tmp_path, _nested(key, fval))
    assert _get(parse_args([], env={})[1], key) == default
    assert _get(parse_args(["--config", f], env={})[1], key) == from_file
    assert _get(parse_args(["--config", f], env={env_name: eval_})[1], key) == from_env
    assert _get(parse_args([], env={"BPFNFS_CONFIG": f, env_name: eval_})[1], key) == from_env
    if flags:
        assert _get(parse_args(["--config", f, *flags], env={env_name: eval_})[1], key) == flagval


def test_trace_precedence(tmp_path: Path) -> None:
    f = _write(tmp_path, {"trace": {"min_latency": "50ms", "rpc": True}})
    assert parse_args(["trace"], env={})[1].trace.min_latency == 10.0
    cfg = parse_args(["trace", "--config", f], env={})[1]
    assert (cfg.trace.min_latency, cfg.trace.rpc) == (50.0, True)
    env = {"BPFNFS_TRACE__MIN_LATENCY": "1s"}
    assert parse_args(["trace", "--config", f], env=env)[1].trace.min_latency == 1000.0
    assert parse_args(["trace", "--config", f, "-m", "2ms"], env=env)[1].trace.min_latency == 2.0


def test_original_environment_variables(tmp_path: Path) -> None:
    cfg = parse_args([], env={"PROC_PATH": "/host/proc", "NODE_NAME": "node-1"})[1]
    assert (cfg.collection.proc, cfg.kubernetes.node_name) == ("/host/proc", "node-1")
    assert parse_args(["--proc", "/p"], env={"PROC_PATH": "/host/proc"})[1].collection.proc == "/p"


def test_config_path_alias(tmp_path: Path) -> None:
    f = _write(tmp_path, {"collection": {"interval": "2s"}})
    assert parse_args([f"--config-path={f}"], env={})[1].collection.interval == 2.0


def test_per_pid_follows_the_views_unless_set() -> None:
    assert parse_args(["--by", "process"], env={})[1].collection.per_pid
    assert parse_args(["--pid", "1"], env={})[1].collection.per_pid
    assert not parse_args(["--by", "cgroup"], env={})[1].collection.per_pid
    assert parse_args(["--per-pid"], env={})[1].collection.per_pid


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = parse_args(["--interval", "3", "--by", "process", "--comm", "fio", "--listen"], env={})[1]
    f = _write(tmp_path, dump(cfg))
    assert Layers(file=f, env={}).build() == cfg
    for c in (Config(), parse_args(["--config", str(DATA / "original-readme-config.yaml")], env={})[1]):
        assert Layers(file=_write(tmp_path, dump(c), "d.yaml"), env={}).build() == c


def test_dump_piped_into_check() -> None:
    cmd = [sys.executable, "-m", "bpfnfs.cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPFNFS_")}
    dumped = subprocess.run(
        [*cmd, "config", "dump", "--interval", "2s"], capture_output=True, text=True, env=env
    )
    assert dumped.returncode == 0 and "interval: 2.0" in dumped.stdout, dumped.stderr
    checked = subprocess.run(
        [*cmd, "config", "check", "-"], input=dumped.stdout, capture_output=True, text=True, env=env
    )
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stderr


def test_docs_and_example_are_current() -> None:
    assert config_docs.main(["--check"]) == 0, "run: python -m bpfnfs.config.docs"
    cfg = Layers(file=str(config_docs.EXAMPLE), env={}).build()
    assert cfg == Config()


@pytest.mark.parametrize("name", ["original-config.yaml", "original-readme-config.yaml"])
def test_original_files_are_accepted(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(DATA / name)]) == 0
    err = capsys.readouterr().err
    cfg = Layers(file=str(DATA / name), env={}).build()
    lines = unbuilt(cfg)
    assert lines and all(f"warning: {line}" in err for line in lines)
    assert cfg.probing.funcs()[0] == ("nfs_file_direct_read", 1)
    assert cfg.filter.struct == "kiocb" and cfg.features.nfs_metrics


# ---- malformed files: one message naming the key path, exit 2, no traceback ------------------

MALFORMED: list[tuple[str, bytes | str, str]] = [
    ("unknown section", "colection:\n  interval: 2\n", "'collection'"),
    ("unknown key", "collection:\n  intervl: 2\n", "did you mean 'collection.interval'"),
    ("unknown original key", "features:\n  nfs_metric: true\n", "did you mean 'features.nfs_metrics'"),
    ("unknown nested", "output:\n  otlp:\n    endpoit: x\n", "did you mean 'output.otlp.endpoint'"),
    ("interval text", "collection:\n  interval: fast\n", "collection.interval"),
    ("interval range", "collection:\n  interval: 0.001\n", "collection.interval"),
    ("interval list", "collection:\n  interval: [1]\n", "collection.interval"),
    ("tier", "collection:\n  tier: kprobe\n", "collection.tier"),
    ("counting", "collection:\n  counting: fast\n", "collection.counting"),
    ("max files", "collection:\n  max_files: 10\n", "collection.max_files"),
    ("bool as text", "features:\n  debug: maybe\n", "features.debug"),
    ("bool as list", "features:\n  dns: [true]\n", "features.dns"),
    ("bad regex", 'filter:\n  func: "^(vfs_|nfs_.*"\n', "filter.func"),
    ("struct not a name", 'filter:\n  struct: "struct kiocb *"\n', "filter.struct"),
    ("add_funcs no index", 'probing:\n  add_funcs: "nfs_file_read"\n', "probing.add_funcs"),
    ("add_funcs bad index", 'probing:\n  add_funcs: "nfs_file_read:9"\n', "probing.add_funcs"),
    ("add_funcs number", "probing:\n  add_funcs: 5\n", "probing.add_funcs"),
    ("missing btf", "btf:\n  kernel: /no/such/vmlinux.btf\n", "btf.kernel"),
    ("btf not btf", "btf:\n  kernel: /etc/hostname\n", "btf.kernel"),
    ("model dir missing", "btf:\n  model_dir: /no/such/dir\n", "btf.model_dir"),
    ("port out of range", 'metrics:\n  listen: ":70000"\n', "metrics.listen"),
    ("port text", 'metrics:\n  listen: "host:http"\n', "metrics.listen"),
    ("pprof port", 'pprof:\n  listen: "127.0.0.1:0"\n', "pprof.listen"),
    ("pid negative", "filter:\n  pid: -4\n", "filter.pid"),
    ("comm too long", "filter:\n  comm: a-very-long-command-name\n", "filter.comm"),
    ("mount relative", "filter:\n  mount: mnt/nfs\n", "filter.mount"),
    ("server bad", 'filter:\n  server: "bad host!"\n', "filter.server"),
    ("by", "view:\n  by: container\n", "view.by"),
    ("output type", "output:\n  type: syslog\n", "output.type"),
    ("otlp timeout", "output:\n  otlp:\n    timeout: soon\n", "output.otlp.timeout"),
    ("otlp headers list", "output:\n  otlp:\n    headers: [a, b]\n", "output.otlp.headers"),
    ("section not a mapping", "collection: 5\n", "collection"),
    ("quiet without listen", "view:\n  quiet: true\n", "view.quiet needs metrics.listen"),
    ("yaml syntax", "collection:\n  interval: [1,\n", "c.yaml:3"),
    ("yaml tab indent", "collection:\n\tinterval: 1\n", "c.yaml:2"),
    ("duplicate key", "collection:\n  interval: 1\n  interval: 2\n", "duplicate key 'interval'"),
    ("top level list", "- collection\n", "expected a mapping of sections"),
    ("top level scalar", "hello\n", "expected a mapping of sections"),
    ("empty", "", "holds no settings"),
    ("only comments", "# nothing\n", "holds no settings"),
    ("binary", bytes(range(256)) * 4, "binary data"),
    ("latin-1", "filter:\n  comm: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("huge", b"# x\n" * (MAX_FILE_BYTES // 4 * 10), "larger than 1 MiB"),
    ("python tag", "collection: !!python/object:os.system {}\n", "c.yaml:1"),
    ("deep nesting", "a: " + "[" * 5000 + "]" * 5000 + "\n", "c.yaml"),
]


@pytest.mark.parametrize(("what", "content", "word"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, content: bytes | str, word: str
) -> None:
    p = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    assert main(["config", "check", str(p)]) == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err, err
    assert all(line.startswith("bpfnfs: error: ") for line in err.splitlines()), err
    # The agent itself refuses it the same way before touching the kernel.
    assert main(["--config", str(p)]) == 2
    assert word in capsys.readouterr().err


def test_malformed_count() -> None:
    assert len(MALFORMED) >= 30


def test_every_error_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _write(tmp_path, "collection:\n  interval: 0\n  tier: x\nfilter:\n  pid: 0\n")
    assert main(["config", "check", f]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [e.split(" (")[0] for e in err] == [
        "bpfnfs: error: collection.interval",
        "bpfnfs: error: collection.tier",
        "bpfnfs: error: filter.pid",
    ]
    assert "c.yaml:2" in err[0] and "c.yaml:5" in err[2]


def test_env_errors_name_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"filter\.pid \(environment BPFNFS_FILTER__PID\)"):
        parse_args([], env={"BPFNFS_FILTER__PID": "x"})
    with pytest.raises(ConfigError, match=r"did you mean 'filter\.pid'"):
        parse_args([], env={"BPFNFS_FILTER__PIDS": "1"})


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/no/such/file.yaml"]) == 2
    assert "/no/such/file.yaml: No such file or directory" in capsys.readouterr().err


# ---- never a traceback, whatever the document --------------------------------------------------

KEYS = sorted(
    {p for s, f in Config.model_fields.items() for p in [s, *getattr(f.annotation, "model_fields", {})]}
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=20,
)
documents = st.dictionaries(
    st.sampled_from(list(Config.model_fields)),
    st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=5)),
    max_size=6,
)


def _check_text(text: str | bytes) -> None:
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml") as f:
        f.write(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        f.flush()
        try:
            Layers(file=f.name, env={}).build()
        except ConfigError as e:
            assert str(e) and "Traceback" not in str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_documents_never_raise(doc: dict[str, Any]) -> None:
    _check_text(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_text_never_raises(text: str | bytes) -> None:
    _check_text(text)


def test_parse_yaml_lines() -> None:
    data, lines = parse_yaml("a:\n  b: 1\n  c:\n    d: 2\n", "x")
    assert data == {"a": {"b": 1, "c": {"d": 2}}}
    assert lines[("a", "c", "d")] == 4


# ---- SIGHUP --------------------------------------------------------------------------------------


def test_reload_applies_live_keys_and_keeps_restart_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("filter:\n  comm: dd\ncollection:\n  tier: auto\n  max_files: 4096\n")
    _cmd, cfg, layers = parse_args(["--config", str(f)], env={})
    logged: list[str] = []
    r = Reloader(layers, logged.append)
    f.write_text(
        "filter:\n  comm: fio\ncollection:\n  tier: tracefs\n  max_files: 8192\nmetrics:\n  top_files: 3\n"
    )
    new = r.reload(cfg)
    assert new is not None and new.filter.comm == "fio" and new.metrics.top_files == 3
    assert (new.collection.tier, new.collection.max_files) == ("auto", 4096)
    assert any("collection.tier needs a restart" in m for m in logged)
    assert any("collection.max_files needs a restart" in m for m in logged)
    assert r.reloads == 1 and r.failures == 0


def test_reload_of_an_invalid_file_keeps_everything(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("filter:\n  comm: dd\n")
    _cmd, cfg, layers = parse_args(["--config", str(f)], env={})
    logged: list[str] = []
    r = Reloader(layers, logged.append)
    f.write_text("filter:\n  comm: [\n")
    assert r.reload(cfg) is None
    assert r.failures == 1 and "keeping the running configuration" in logged[0]
    f.write_text("filter:\n  comm: dd\n")
    assert r.reload(cfg) is None and r.failures == 1  # unchanged: nothing to apply


def test_restart_keys_exist() -> None:
    flat = set(yaml.safe_load(dump(Config())).keys())
    for key in RESTART_KEYS:
        section, *rest = key.split(".")
        assert section in flat and rest, key
        assert _get(Config(), key) is not None or key.endswith(
            ("kernel", "listen", "path", "name", "kubeconfig", "ca_file", "client_certificate", "client_key")
        ), key


def test_btf_kernel_accepts_a_btf_file(tmp_path: Path) -> None:
    if not Path(BTF).exists():
        pytest.skip("no kernel BTF on this host")
    cfg = Layers(file=_write(tmp_path, {"btf": {"kernel": BTF}}), env={}).build()
    assert cfg.btf.kernel == Path(BTF)


def test_features_debug_turns_on_libbpfs_log() -> None:
    from bpfnfs.cli.runtime import set_debug
    from bpfnfs.loader.libbpf import libbpf

    lib = libbpf()
    set_debug(True)
    try:
        assert lib.debug and lib.echo is not None
    finally:
        set_debug(False)
    assert not lib.debug and lib.echo is None
