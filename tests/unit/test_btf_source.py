"""BTF from elsewhere than the kernel (config btf.kernel, btf.model_dir): the messages,
the tier it leaves, the merged file libbpf gets as btf_custom_path, and the BTF reads.

Split module BTF is made here with libbpf's own BTF writer (btf__new_empty_split), on a
small base and on this host's /sys/kernel/btf/vmlinux; the host has no NFS modules."""

from __future__ import annotations

import ctypes
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tiers import fake_tracefs

from bpfnfs.loader import libbpf as lb
from bpfnfs.loader.object import BpfObject, LoadError, object_bytes
from bpfnfs.probes import btf, system, tiers
from bpfnfs.probes.btf import BtfError, BtfSource, CoreBtf, merge_split, merged_btf
from bpfnfs.probes.system import RequirementError, check_vmlinux_btf

SYSFS_VMLINUX = Path("/sys/kernel/btf/vmlinux")
KIND_STRUCT, KIND_PTR, KIND_FUNC = 4, 2, 12


class Writer:
    """libbpf's BTF writer on a handle of its own (argtypes here leave bpfnfs's alone)."""

    def __init__(self) -> None:
        L = ctypes.CDLL("libbpf.so.1", use_errno=True)
        P, S, U, I = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int  # noqa: E741
        for name, res, args in (
            ("btf__new_empty", P, []),
            ("btf__new_empty_split", P, [P]),
            ("btf__new", P, [P, U]),
            ("btf__parse", P, [S, P]),
            ("btf__free", None, [P]),
            ("btf__add_int", I, [P, S, ctypes.c_size_t, I]),
            ("btf__add_struct", I, [P, S, U]),
            ("btf__add_field", I, [P, S, I, U, U]),
            ("btf__add_ptr", I, [P, I]),
            ("btf__add_func_proto", I, [P, I]),
            ("btf__add_func_param", I, [P, S, I]),
            ("btf__add_func", I, [P, S, I, I]),
            ("btf__find_by_name_kind", I, [P, S, U]),
            ("btf__type_by_id", P, [P, U]),
            ("btf__name_by_offset", S, [P, U]),
            ("btf__type_cnt", U, [P]),
            ("btf__raw_data", P, [P, ctypes.POINTER(U)]),
        ):
            fn = getattr(L, name)
            fn.restype, fn.argtypes = res, args
        self.L = L

    def raw(self, b: int) -> bytes:
        size = ctypes.c_uint32()
        p = self.L.btf__raw_data(b, ctypes.byref(size))
        return ctypes.string_at(p, size.value)

    def find(self, b: int, name: str, kind: int) -> int:
        tid = self.L.btf__find_by_name_kind(b, name.encode(), kind)
        assert tid > 0, f"{name} not found"
        return tid

    def words(self, b: int, tid: int) -> tuple[int, ...]:
        info = struct.unpack("3I", ctypes.string_at(self.L.btf__type_by_id(b, tid), 12))[1]
        vlen = info & 0xFFFF
        return struct.unpack(
            f"{3 + 3 * vlen}I", ctypes.string_at(self.L.btf__type_by_id(b, tid), 12 + 12 * vlen)
        )

    def members(self, b: int, tid: int) -> list[tuple[str, int]]:
        """(name, type id) of a struct's members."""
        w = self.words(b, tid)
        return [(self.L.btf__name_by_offset(b, w[i]).decode(), w[i + 1]) for i in range(3, len(w), 3)]

    def target(self, b: int, ptr: int) -> str:
        """Name of the type a pointer points to."""
        w = self.words(b, ptr)
        return self.L.btf__name_by_offset(b, self.words(b, w[2])[0]).decode()


@pytest.fixture
def w(lib: lb.Libbpf) -> Writer:
    return Writer()


def _base(w: Writer) -> int:
    """int, struct task_struct { int pid; }."""
    b = w.L.btf__new_empty()
    i = w.L.btf__add_int(b, b"int", 4, 1)
    w.L.btf__add_struct(b, b"task_struct", 4)
    w.L.btf__add_field(b, b"pid", i, 0, 0)
    return b


def _split(w: Writer, base: int, struct_name: str, own: str, func: str | None = None) -> bytes:
    """struct <struct_name> { int a; struct task_struct *owner; struct <own> *next; } and
    struct <own> { int b; }, against `base`; optionally int <func>(int, struct <own> *)."""
    s = w.L.btf__new_empty_split(base)
    int_id = w.find(base, "int", 1)
    task = w.find(base, "task_struct", KIND_STRUCT)
    own_id = w.L.btf__add_struct(s, own.encode(), 4)
    w.L.btf__add_field(s, b"b", int_id, 0, 0)
    task_ptr = w.L.btf__add_ptr(s, task)
    own_ptr = w.L.btf__add_ptr(s, own_id)
    w.L.btf__add_struct(s, struct_name.encode(), 24)
    w.L.btf__add_field(s, b"a", int_id, 0, 0)
    w.L.btf__add_field(s, b"owner", task_ptr, 64, 0)
    w.L.btf__add_field(s, b"next", own_ptr, 128, 0)
    if func is not None:
        proto = w.L.btf__add_func_proto(s, int_id)
        w.L.btf__add_func_param(s, b"x", int_id)
        w.L.btf__add_func_param(s, b"y", own_ptr)
        w.L.btf__add_func(s, func.encode(), 1, proto)
    data = w.raw(s)
    w.L.btf__free(s)
    return data


@pytest.fixture
def small(w: Writer) -> Iterator[tuple[bytes, int]]:
    b = _base(w)
    yield w.raw(b), b
    w.L.btf__free(b)


def _parse(w: Writer, data: bytes) -> int:
    buf = ctypes.create_string_buffer(data, len(data))
    b = w.L.btf__new(buf, len(data))
    assert b, f"libbpf refuses the merged BTF (errno {ctypes.get_errno()})"
    return b


# ---- the merge ----------------------------------------------------------------------------------


def test_merge_renumbers_each_module(w: Writer, small: tuple[bytes, int]) -> None:
    raw, base = small
    a = _split(w, base, "rpc_task", "rpc_clnt")
    b = _split(w, base, "nfs_pgio_header", "nfs_inode")
    m = _parse(w, merge_split(raw, [("sunrpc", a), ("nfs", b)]))
    try:
        assert w.L.btf__type_cnt(m) == w.L.btf__type_cnt(base) + 2 * 4
        for name, own in (("rpc_task", "rpc_clnt"), ("nfs_pgio_header", "nfs_inode")):
            members = w.members(m, w.find(m, name, KIND_STRUCT))
            assert [n for n, _ in members] == ["a", "owner", "next"]
            assert w.L.btf__name_by_offset(m, w.words(m, members[0][1])[0]) == b"int"
            assert w.target(m, members[1][1]) == "task_struct"  # base ids kept
            assert w.target(m, members[2][1]) == own  # the module's own ids moved with it
    finally:
        w.L.btf__free(m)


def test_merge_refuses_damaged_input(small: tuple[bytes, int]) -> None:
    raw, _ = small
    with pytest.raises(BtfError, match="not a BTF file"):
        merge_split(b"\0" * 64, [])
    with pytest.raises(BtfError, match="truncated"):
        merge_split(raw[:-8], [])
    bad = bytearray(raw)
    bad[24 + 7] = 31  # the first type's info, top byte: kind 31, unknown
    with pytest.raises(BtfError, match="unknown BTF kind"):
        merge_split(bytes(bad), [])


@pytest.fixture
def host_vmlinux(tmp_path: Path) -> Path:
    if not SYSFS_VMLINUX.is_file():
        pytest.skip("no /sys/kernel/btf/vmlinux here")
    dst = tmp_path / "vmlinux.btf"
    shutil.copyfile(SYSFS_VMLINUX, dst)
    return dst


def test_merged_btf_on_the_host_vmlinux(w: Writer, host_vmlinux: Path, tmp_path: Path) -> None:
    base = w.L.btf__parse(str(host_vmlinux).encode(), None)
    mods = tmp_path / "mods"
    mods.mkdir()
    try:
        # task_struct is the kernel's own here; the split points at it by the kernel's id.
        (mods / "sunrpc").write_bytes(_split(w, base, "rpc_task_x", "rpc_clnt_x"))
        (mods / "nfs").write_bytes(_split(w, base, "nfs_pgio_header_x", "nfs_inode_x"))
        n_base = w.L.btf__type_cnt(base)
    finally:
        w.L.btf__free(base)
    data, merged = merged_btf(BtfSource(kernel=host_vmlinux, module_dir=mods))
    assert merged == ("sunrpc", "nfs")  # in MERGE_MODULES order; nfsv3/nfsv4 absent
    m = _parse(w, data)
    try:
        assert w.L.btf__type_cnt(m) == n_base + 8
        members = w.members(m, w.find(m, "nfs_pgio_header_x", KIND_STRUCT))
        assert w.target(m, members[1][1]) == "task_struct"
        assert w.target(m, members[2][1]) == "nfs_inode_x"
    finally:
        w.L.btf__free(m)


def test_core_btf_file(w: Writer, host_vmlinux: Path, tmp_path: Path) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    core = CoreBtf(BtfSource(kernel=host_vmlinux, module_dir=mods), directory=tmp_path)
    assert core.refresh() and core.path is not None
    first = core.path
    assert core.merged == ()
    assert first.stat().st_mode & 0o777 == 0o600
    assert first.read_bytes() == host_vmlinux.read_bytes()  # vmlinux alone, as it was
    assert not core.refresh()  # nothing changed
    base = w.L.btf__parse(str(host_vmlinux).encode(), None)
    (mods / "sunrpc").write_bytes(_split(w, base, "rpc_task_x", "rpc_clnt_x"))
    w.L.btf__free(base)
    assert core.refresh()  # a module's BTF appeared
    assert core.merged == ("sunrpc",) and core.path != first and not first.exists()
    assert "modules merged: sunrpc" in core.describe()
    path = core.path
    core.close()
    assert path is not None and not path.exists()


def test_module_made_against_another_vmlinux_refused(w: Writer, host_vmlinux: Path, tmp_path: Path) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    b = _base(w)
    (mods / "vmlinux").write_bytes(w.raw(b))  # the modules' own base, not btf.kernel
    (mods / "sunrpc").write_bytes(_split(w, b, "rpc_task", "rpc_clnt"))
    w.L.btf__free(b)
    src = BtfSource(kernel=host_vmlinux, module_dir=mods)
    with pytest.raises(BtfError, match=r"holds module BTF made against .*/vmlinux, which is not btf.kernel"):
        merged_btf(src)
    with pytest.raises(RequirementError, match="pahole --btf_base"):
        check_vmlinux_btf(src)


# ---- libbpf gets it -----------------------------------------------------------------------------


def test_object_opens_with_btf_custom_path(lib: lb.Libbpf, host_vmlinux: Path, tmp_path: Path) -> None:
    try:
        data = object_bytes()
    except LoadError as e:
        pytest.skip(str(e))
    with BpfObject(data, btf_custom_path=host_vmlinux).open() as obj:
        assert obj.ptr and obj.programs
    # libbpf reads the path from our open opts: a missing file fails CO-RE at load.
    with BpfObject(data, btf_custom_path=tmp_path / "absent.btf").open() as obj:
        with pytest.raises(LoadError):
            obj.load()
        assert any("failed to parse target BTF" in line for line in lib.last_log(50)), lib.last_log(50)


def test_function_arity_from_model_dir(w: Writer, lib: lb.Libbpf, tmp_path: Path) -> None:
    b = _base(w)
    (tmp_path / "vmlinux.btf").write_bytes(w.raw(b))
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "nfs").write_bytes(_split(w, b, "nfs_pgio_header", "nfs_inode", func="nfs_fake_read"))
    w.L.btf__free(b)
    src = BtfSource(kernel=tmp_path / "vmlinux.btf", module_dir=mods, sysfs=tmp_path / "nosysfs")
    got = btf.function_arity(
        {"nfs": (["nfs_fake_read", "nfs_absent"], []), "sunrpc": (["x"], [])}, source=src
    )
    assert got == {"nfs": {"nfs_fake_read": 2, "nfs_absent": None}, "sunrpc": {"x": None}}


# ---- messages -----------------------------------------------------------------------------------


def test_no_kernel_btf_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(RequirementError) as e:
        check_vmlinux_btf(BtfSource(sysfs=tmp_path, module_dir=tmp_path))
    msg = str(e.value)
    for part in (
        "CONFIG_DEBUG_INFO_BTF",
        "btf.kernel in the config file",
        "pahole --btf_encode_detached vmlinux.btf vmlinux",
        "https://github.com/aquasecurity/btfhub-archive",
    ):
        assert part in msg
    with pytest.raises(RequirementError, match=r"btf\.kernel"):
        check_vmlinux_btf(tmp_path)  # the old form: a directory standing for /sys/kernel/btf


def test_btf_kernel_problems_name_the_path(small: tuple[bytes, int], tmp_path: Path) -> None:
    raw, _ = small
    sysfs = tmp_path / "sysfs"  # the kernel has none: btf.kernel must do
    missing = tmp_path / "missing.btf"
    with pytest.raises(RequirementError, match=rf"btf.kernel {missing}: cannot read it \(No such file"):
        check_vmlinux_btf(BtfSource(kernel=missing, sysfs=sysfs, module_dir=sysfs))
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    with pytest.raises(RequirementError, match=rf"btf.kernel {elf}: it is not a BTF file \(no 0xeB9F magic"):
        check_vmlinux_btf(BtfSource(kernel=elf, sysfs=sysfs, module_dir=sysfs))
    short = tmp_path / "short.btf"
    short.write_bytes(raw[:-4])
    with pytest.raises(RequirementError, match="truncated"):
        check_vmlinux_btf(BtfSource(kernel=short, sysfs=sysfs, module_dir=sysfs))
    good = tmp_path / "good.btf"
    good.write_bytes(raw)
    check_vmlinux_btf(BtfSource(kernel=good, sysfs=sysfs, module_dir=sysfs))
    with pytest.raises(RequirementError, match=r"btf\.model_dir .*/nodir is not a directory"):
        check_vmlinux_btf(BtfSource(kernel=good, sysfs=sysfs, module_dir=tmp_path / "nodir"))


# ---- the tier it leaves -------------------------------------------------------------------------


def _sysfs(root: Path, *files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).write_bytes(b"\x9f\xeb")
    return root


def test_module_btf_from_model_dir_without_the_kernels_own(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path / "tracefs")
    sysfs = _sysfs(tmp_path / "sysfs")  # hidden or absent: no vmlinux of the kernel's own
    mods = _sysfs(tmp_path / "btf", "vmlinux", "sunrpc", "nfs")
    src = BtfSource(kernel=mods / "vmlinux", module_dir=mods, sysfs=sysfs)
    m = system.modules(tracefs, src)
    assert m.have_module_btf
    assert m.attach_btf_missing == f"the kernel exposes no BTF of its own ({sysfs}/vmlinux is missing)"
    assert tiers.tier_for("auto", m.have_module_btf, m.attach_btf_missing) == "tracefs"
    p = tiers.plan("auto", m.have_module_btf, tracefs, attach_btf_missing=m.attach_btf_missing)
    assert p.tier == "tracefs" and p.method == "kprobe"
    assert p.describe().startswith(
        f"tier tracefs: tier btf is impossible: the kernel exposes no BTF of its own ({sysfs}/vmlinux"
    )
    assert "serve CO-RE relocations only" in p.reason
    with pytest.raises(tiers.TierError, match="needs the kernel's own BTF: the kernel exposes no BTF"):
        tiers.tier_for("btf", m.have_module_btf, m.attach_btf_missing)


def test_model_dir_modules_need_the_kernels_module_btf_to_attach(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path / "tracefs")
    sysfs = _sysfs(tmp_path / "sysfs", "vmlinux")  # the kernel's vmlinux BTF, no module BTF
    mods = _sysfs(tmp_path / "btf", "sunrpc", "nfs")
    m = system.modules(tracefs, BtfSource(module_dir=mods, sysfs=sysfs))
    assert m.have_module_btf
    assert (
        m.attach_btf_missing == f"the kernel exposes no module BTF of its own for sunrpc and nfs in {sysfs}"
    )
    assert tiers.tier_for("auto", True, m.attach_btf_missing) == "tracefs"
    # With the kernel's own module BTF as well: tier btf, CO-RE from the model_dir.
    _sysfs(sysfs, "sunrpc", "nfs")
    m = system.modules(tracefs, BtfSource(module_dir=mods, sysfs=sysfs))
    assert m.attach_btf_missing is None
    assert tiers.plan("auto", m.have_module_btf, tracefs, attach_btf_missing=None).tier == "btf"


def test_default_source_unchanged(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path / "tracefs")
    sysfs = _sysfs(tmp_path / "sysfs", "vmlinux", "sunrpc", "nfs")
    m = system.modules(tracefs, sysfs)  # the old form: a directory standing for /sys/kernel/btf
    assert m.have_module_btf and m.attach_btf_missing is None
    assert tiers.tier_for("auto", True) == "btf"
    assert not BtfSource().custom
    assert BtfSource(kernel=Path("/x")).custom and BtfSource(module_dir=Path("/x")).custom
    assert BtfSource().vmlinux == Path("/sys/kernel/btf/vmlinux")


def test_loader_hands_libbpf_the_merged_file(host_vmlinux: Path, tmp_path: Path) -> None:
    from bpfnfs.config import Config
    from bpfnfs.probes.loading import Loader

    logs: list[str] = []
    assert Loader(Config(), logs.append).core_btf_path() is None  # the kernel's own: libbpf finds it
    mods = tmp_path / "mods"
    mods.mkdir()
    loader = Loader(Config(), logs.append, btf_source=BtfSource(kernel=host_vmlinux, module_dir=mods))
    path = loader.core_btf_path()
    assert path is not None and path.read_bytes() == host_vmlinux.read_bytes()
    assert loader.core_btf_path() == path  # unchanged inputs: the same file
    assert logs == [loader._core_btf.describe()] and "CO-RE types from btf.kernel" in logs[0]
    loader.close()
    assert not path.exists()


def test_without_cap_sys_admin_the_tier_is_tracefs(tmp_path: Path) -> None:
    """A DaemonSet with CAP_BPF and CAP_PERFMON but not CAP_SYS_ADMIN: the kernel refuses
    BPF_BTF_GET_NEXT_ID, so libbpf cannot reach module BTF; auto picks tracefs and says why."""
    sysfs = _sysfs(tmp_path / "sysfs", "vmlinux", "sunrpc", "nfs")
    bpf_perfmon = (1 << system.CAP_BPF) | (1 << system.CAP_PERFMON)
    why = system.attach_btf_missing(BtfSource(sysfs=sysfs, module_dir=sysfs), caps=bpf_perfmon)
    assert why is not None and "CAP_SYS_ADMIN" in why
    assert tiers.tier_for("auto", True, why) == "tracefs"
    assert (
        system.attach_btf_missing(BtfSource(sysfs=sysfs, module_dir=sysfs), caps=1 << system.CAP_SYS_ADMIN)
        is None
    )
