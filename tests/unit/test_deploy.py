"""The Kubernetes deployment (deploy/): the Helm chart rendered by Helm's own engine (helm-python-sdk, Helm as
a library) with its default values and with tests/data/helm-values-all.yaml, which sets every key; linted;
every object validated against the Kubernetes schemas of 1.29 to the newest kubernetes-validate knows; the
DaemonSet's privileges exactly as docs/kubernetes.md lists them; the ConfigMap read by bpfnfs's own loader;
and deploy/kubernetes/bpfnfs.yaml and values.yaml's config section up to date (deploy/render.py --check)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk missing: pip install -e '.[dev]'")
kv = pytest.importorskip(
    "kubernetes_validate.utils", reason="kubernetes-validate missing: pip install -e '.[dev]'"
)

from packaging.version import Version  # noqa: E402  (kubernetes-validate's own dependency)

from bpfnfs.cli.flags import parse_args  # noqa: E402
from bpfnfs.config import Config, Layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "bpfnfs"
EXAMPLE = ROOT / "deploy" / "config.example.yaml"
VALUES_ALL = ROOT / "tests" / "data" / "helm-values-all.yaml"
DOC = ROOT / "docs" / "kubernetes.md"

# The capabilities the DaemonSet adds after dropping ALL; docs/kubernetes.md gives each one's reason.
CAPABILITIES = {"BPF", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"}
OLDEST = Version("1.29")
MONITORS = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bpfnfs_deploy_render", ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


render = _load_render()


def _values_all() -> dict[str, Any]:
    return yaml.safe_load(VALUES_ALL.read_text())


def _need_kernel_btf() -> None:
    """helm-values-all.yaml sets btf.kernel to the kernel's own BTF, which the model checks is BTF."""
    if not Path("/sys/kernel/btf/vmlinux").is_file():
        pytest.skip("no kernel BTF on this host: btf.kernel of helm-values-all.yaml cannot be checked")


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render.objects()


@pytest.fixture(scope="module")
def all_objects() -> list[dict[str, Any]]:
    return render.objects(_values_all())


def _kinds(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = _kinds(objs, kind)
    return obj


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = _one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return c


def _versions() -> list[str]:
    """Every Kubernetes minor version kubernetes-validate has schemas of, from 1.29 on."""
    minors = {kv.major_minor(v) for v in kv.all_versions()}
    return sorted((v for v in minors if Version(v) >= OLDEST), key=Version)


def _paths(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths of a mapping, into every non-empty mapping."""
    out: set[tuple[str, ...]] = set()
    for k, v in d.items():
        p = (*prefix, str(k))
        out.add(p)
        if isinstance(v, dict) and v:
            out |= _paths(v, p)
    return out


# ---- the chart renders, lints, and every object is valid Kubernetes -----------------------------------


def test_default_render_has_the_expected_objects(default_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == sorted(
        ["ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"]
    )
    for o in default_objects:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == render.NAMESPACE


def test_all_values_render_the_monitors_too(all_objects: list[dict[str, Any]]) -> None:
    assert {"ServiceMonitor", "PodMonitor"} <= {o["kind"] for o in all_objects}


def test_values_all_sets_every_key_of_values_yaml() -> None:
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
    missing = _paths(defaults) - _paths(_values_all())
    assert not missing, f"{VALUES_ALL.name} leaves out {sorted('.'.join(p) for p in missing)}"


@pytest.mark.parametrize("which", ["default", "all"])
def test_lint_is_clean(which: str) -> None:
    values = _values_all() if which == "all" else None
    report = helm.lint(CHART, values, strict=True, namespace=render.NAMESPACE)
    assert report["errors"] == []
    # severity 1 is INFO (e.g. "icon is recommended"); 2 WARNING and 3 ERROR are not accepted
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_kubernetes_validate_knows_1_29_to_now() -> None:
    versions = _versions()
    assert versions[0] == "1.29"
    assert Version(versions[-1]) >= Version("1.36")


@pytest.mark.parametrize("which", ["default", "all", "manifest"])
def test_every_object_is_valid_for_every_kubernetes_version(
    which: str, default_objects: list[dict[str, Any]], all_objects: list[dict[str, Any]]
) -> None:
    if which == "manifest":
        objs = [o for o in yaml.safe_load_all(render.MANIFEST.read_text()) if o]
    else:
        objs = default_objects if which == "default" else all_objects
    problems = []
    for obj in objs:
        if obj["kind"] in MONITORS:
            continue  # CRDs: their shape is checked below
        for version in _versions():
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                problems.append(f"{obj['kind']} {obj['metadata']['name']} on {version}: {where}: {e.message}")
    assert not problems, "\n".join(problems[:20])


def test_apparmor_field_form_is_valid_from_1_30() -> None:
    objs = render.objects({"appArmor": {"useField": True}})
    ds = _one(objs, "DaemonSet")
    annotations = ds["spec"]["template"]["metadata"].get("annotations", {})
    assert not [a for a in annotations if a.startswith("container.apparmor.security.beta.kubernetes.io/")]
    assert _container(objs)["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    for version in _versions():
        if Version(version) >= Version("1.30"):
            kv.validate(ds, version, strict=True)
    local = _container(render.objects({"appArmor": {"useField": True, "profile": "localhost/bpfnfs"}}))
    assert local["securityContext"]["appArmorProfile"] == {"type": "Localhost", "localhostProfile": "bpfnfs"}


def test_monitors_select_the_agents(all_objects: list[dict[str, Any]]) -> None:
    ds = _one(all_objects, "DaemonSet")
    svc = _one(all_objects, "Service")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    for kind, endpoints_key in MONITORS.items():
        mon = _one(all_objects, kind)
        assert mon["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(mon["metadata"]) == {"name", "namespace", "labels"}
        assert mon["metadata"]["labels"]["release"] == "prometheus"  # serviceMonitor/podMonitor.labels
        spec = mon["spec"]
        match = spec["selector"]["matchLabels"]
        assert match and set(spec["selector"]) == {"matchLabels"}
        target = svc["metadata"]["labels"] if kind == "ServiceMonitor" else pod_labels
        assert match.items() <= target.items(), f"{kind} selects nothing"
        assert spec["namespaceSelector"] == {"matchNames": [render.NAMESPACE]}
        (ep,) = spec[endpoints_key]
        assert ep["port"] == "metrics" and ep["path"] == "/metrics"
        # bpfnfs's own namespace/pod/container labels must win over the agent pod's target labels
        drops = [r for r in ep["relabelings"] if r["action"] == "labeldrop"]
        assert drops and all(re.fullmatch(drops[0]["regex"], n) for n in ("namespace", "pod", "container"))
        assert ep["relabelings"][-1]["targetLabel"] == "cluster"  # the user's, after the chart's
        assert ep["metricRelabelings"][0]["action"] == "drop"
        assert re.fullmatch(r"\d+[smh]", ep["interval"]) and re.fullmatch(r"\d+[smh]", ep["scrapeTimeout"])
    assert {p["name"] for p in svc["spec"]["ports"]} == {"metrics"}
    assert svc["spec"]["clusterIP"] == "None"


def test_monitors_are_off_by_default() -> None:
    with helm.Chart.load(CHART) as chart:
        values = chart.values
    assert values["serviceMonitor"]["enabled"] is False
    assert values["podMonitor"]["enabled"] is False


def test_service_monitor_without_the_service_says_why() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"serviceMonitor\.enabled needs service\.enabled"):
        render.objects({"serviceMonitor": {"enabled": True}, "service": {"enabled": False}})


# ---- the DaemonSet's privileges --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "all"])
def test_daemonset_privileges(
    which: str, default_objects: list[dict[str, Any]], all_objects: list[dict[str, Any]]
) -> None:
    objs = default_objects if which == "default" else all_objects
    ds = _one(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod.get("hostNetwork", False) is False
    assert "privileged: true" not in yaml.safe_dump(ds)
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["privileged"] is False
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsUser"] == 0
        assert sc["capabilities"]["drop"] == ["ALL"]
        added = set(sc["capabilities"]["add"])
        if which == "default":
            assert added == CAPABILITIES
        else:
            assert added == CAPABILITIES | {"SYS_NICE"}  # the values file adds the documented optional one
        # Kubernetes refuses CAP_SYS_ADMIN with allowPrivilegeEscalation false; capabilities go without CAP_
        assert not [a for a in added if a.startswith("CAP_")]
    c = _container(objs)
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["PROC_PATH"]["value"] == "/host/proc"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    if which == "default":
        assert ports == {"metrics": 9763}
        assert c["livenessProbe"]["initialDelaySeconds"] >= 30
        assert c["resources"] == {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}}
        assert pod["tolerations"] == [{"operator": "Exists"}]
        assert pod["terminationGracePeriodSeconds"] == 10
        assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}
        assert c["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
        annotations = ds["spec"]["template"]["metadata"]["annotations"]
        assert annotations["container.apparmor.security.beta.kubernetes.io/bpfnfs"] == "unconfined"
        assert c["args"] == ["run", "--config", "/etc/bpfnfs/config.yaml", "--listen", ":9763", "--quiet"]


@pytest.mark.parametrize("which", ["default", "all"])
def test_host_mounts(
    which: str, default_objects: list[dict[str, Any]], all_objects: list[dict[str, Any]]
) -> None:
    objs = default_objects if which == "default" else all_objects
    pod = _one(objs, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(objs)["volumeMounts"]}
    host = {}  # host path -> (mount path, read-only)
    for path, m in mounts.items():
        hp = volumes[m["name"]].get("hostPath")
        if hp is not None:
            host[hp["path"]] = (path, m.get("readOnly", False))
    kubelet = "/var/lib/kubelet" if which == "default" else "/var/lib/k0s/kubelet"
    want = {
        "/proc": ("/host/proc", True),
        "/sys/kernel/btf": ("/sys/kernel/btf", True),
        "/sys/kernel/tracing": ("/sys/kernel/tracing", False),  # kprobe_events is written
        "/sys/fs/cgroup": ("/sys/fs/cgroup", True),
        kubelet: (kubelet, True),
    }
    if which == "default":
        want["/sys/kernel/debug"] = ("/sys/kernel/debug", True)
    else:
        want["/opt/btf"] = ("/opt/btf", True)  # extraVolumes / extraVolumeMounts
    assert host == want
    assert mounts["/etc/bpfnfs"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # the root file system is read-only


def test_rbac_reads_pods_and_volumes_only(default_objects: list[dict[str, Any]]) -> None:
    role = _one(default_objects, "ClusterRole")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["pods", "persistentvolumes", "persistentvolumeclaims"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = _one(default_objects, "ClusterRoleBinding")
    sa = _one(default_objects, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": render.NAMESPACE}
    ]
    pod = _one(default_objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_docs_list_each_capability_and_mount() -> None:
    text = DOC.read_text()
    for cap in CAPABILITIES | {"SYS_NICE"}:
        assert re.search(rf"^\| `CAP_{cap}` \|", text, re.MULTILINE), (
            f"docs/kubernetes.md: no row for CAP_{cap}"
        )
    for path in (
        "/proc",
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/sys/fs/cgroup",
        "/var/lib/kubelet",
    ):
        assert re.search(rf"^\| `{re.escape(path)}`", text, re.MULTILINE), (
            f"docs/kubernetes.md: no row for {path}"
        )


# ---- the configuration the agents read -------------------------------------------------------------


def test_values_config_is_the_whole_example_with_its_defaults() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    assert yaml.safe_load((CHART / "values.yaml").read_text())["config"] == example
    with helm.Chart.load(CHART) as chart:  # as Helm itself reads it
        assert _paths(chart.values["config"]) == _paths(example)


def _configmap_file(objs: list[dict[str, Any]], tmp_path: Path) -> Path:
    cm = _one(objs, "ConfigMap")
    assert set(cm["data"]) == {"config.yaml"}
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    c = _container(objs)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/bpfnfs")
    volume = next(
        v
        for v in _one(objs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    )
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    return path


def test_default_configmap_is_bpfnfs_defaults(default_objects: list[dict[str, Any]], tmp_path: Path) -> None:
    path = _configmap_file(default_objects, tmp_path)
    # Helm leaves out the keys whose value is null; to bpfnfs that is their default too.
    assert Layers(file=str(path), env={}).build() == Config()


def test_all_values_configmap_is_valid_for_bpfnfs(all_objects: list[dict[str, Any]], tmp_path: Path) -> None:
    _need_kernel_btf()
    path = _configmap_file(all_objects, tmp_path)
    cfg = Layers(file=str(path), env={}).build()
    want = _values_all()["config"]
    assert cfg.collection.tier == want["collection"]["tier"]
    assert cfg.collection.interval == 5.0
    assert cfg.metrics.listen == want["metrics"]["listen"]
    assert cfg.probing.add_funcs == want["probing"]["add_funcs"]
    assert cfg.output.otlp.headers == want["output"]["otlp"]["headers"]


@pytest.mark.parametrize("which", ["default", "all"])
def test_the_agent_parses_its_daemonset_command_line(
    which: str, default_objects: list[dict[str, Any]], all_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The container's args, its environment and the ConfigMap, through bpfnfs's own parser: what the
    agent in the pod starts with."""
    if which == "all":
        _need_kernel_btf()
    objs = default_objects if which == "default" else all_objects
    c = _container(objs)
    path = _configmap_file(objs, tmp_path)
    args = [str(path) if a == "/etc/bpfnfs/config.yaml" else a for a in c["args"]]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env["NODE_NAME"] = "node-7"  # the downward API's spec.nodeName
    command, cfg, _layers = parse_args(args, env=env)
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    assert command == "run"
    assert cfg.metrics.listen_address == ("0.0.0.0", port)
    assert cfg.view.quiet is True
    assert cfg.collection.proc == "/host/proc"
    assert cfg.kubernetes.node_name == "node-7"  # the environment wins over the file's node-1
    if which == "all":
        assert cfg.features.debug is True and cfg.metrics.top_files == 20  # extraArgs
        assert cfg.dns.ttl == 600.0  # extraEnv


def test_image_entrypoint_flags_parse() -> None:
    """The Dockerfile's default command line is one bpfnfs accepts."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))
    cmd = yaml.safe_load(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    assert entry == ["bpfnfs"]
    assert cmd == ["run", "--listen", ":9763", "--quiet"]
    _command, cfg, _layers = parse_args(cmd, env={})
    assert cfg.metrics.listen_address == ("0.0.0.0", 9763) and cfg.view.quiet


def test_versions_agree() -> None:
    """The chart's appVersion (the default image tag), the image's label and the docs' build command name the
    version pyproject.toml builds."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with helm.Chart.load(CHART) as chart:
        assert chart.metadata["appVersion"] == version
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f'org.opencontainers.image.version="{version}"' in dockerfile
    assert f"docker build -f deploy/Dockerfile -t bpfnfs:{version} ." in dockerfile
    assert f"docker build -f deploy/Dockerfile -t bpfnfs:{version} ." in DOC.read_text()


# ---- generated files up to date -----------------------------------------------------------------------


def test_manifest_and_values_config_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    code = render.main(["--check"])
    assert code == 0, capsys.readouterr().err
