"""Deployment files checked offline: Dockerfile, docker-compose.yml and the k8s/ manifests.

There is no Docker engine and no cluster here, so these tests check what can be checked without
them: the compose file against the Compose specification's schema, every Kubernetes manifest (and
the kustomize build) strictly against the Kubernetes 1.37 schemas, and the seams between the files
and the code: files the Dockerfile copies exist and are in the build context, every `FALLDET_*`
name the deployments set is a field of the service settings, probes hit endpoints the app serves
without a key, shard count equals replicas.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
KUBE_VERSION = "1.37"
ENV_NAME = re.compile(r"^FALLDET_[A-Z0-9_]+$")


def _tool(name: str) -> str | None:
    """A console script of this venv first (pytest may run without the venv on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# ---------------------------------------------------------------------------------------------
# Dockerfile: a small parser (instructions per stage, continuation lines joined)

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((instruction, rest.strip()))
    return stages


def _stages() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile(DOCKERFILE.read_text())}


def _copy_sources(args: str) -> tuple[list[str], str] | None:
    """Sources and destination of a COPY from the build context (None for COPY --from=...)."""
    words = shlex.split(args)
    if any(w.startswith("--from=") for w in words):
        return None
    words = [w for w in words if not w.startswith("--")]
    return words[:-1], words[-1]


def _env_pairs(args: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(args))


def _dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def _rule_matches(pattern: str, path: str) -> bool:
    """Docker's matching, near enough: `**` spans folders, a rule on a folder covers its contents."""
    if pattern == "**":
        return True
    candidates = [pattern] + ([pattern[3:]] if pattern.startswith("**/") else [])
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes)


def in_build_context(path: str, rules: list[tuple[bool, str]]) -> bool:
    ignored = False
    for negated, pattern in rules:
        if _rule_matches(pattern, path):
            ignored = not negated
    return not ignored


def test_dockerignore_matcher_follows_last_matching_rule() -> None:
    rules = [(False, "**"), (True, "service"), (False, "**/__pycache__"), (False, "models/*.pt")]
    assert in_build_context("service/app.py", rules)
    assert not in_build_context("service/__pycache__/app.cpython-311.pyc", rules)
    assert not in_build_context(".venv/bin/python", rules)
    assert not in_build_context("models/last.pt", rules)


def test_dockerfile_copies_files_that_exist_and_are_in_the_build_context() -> None:
    rules = _dockerignore_rules()
    checked = 0
    for stage in _stages().values():
        for args in stage.args("COPY"):
            parsed = _copy_sources(args)
            if parsed is None:
                continue
            for source in parsed[0]:
                path = REPO / source
                assert path.exists(), f"stage {stage.name}: COPY {source}: no such file in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                if not files:
                    continue  # an empty folder (models/ before the model lands: see the next test)
                shipped = [f for f in files if in_build_context(str(f.relative_to(REPO)), rules)]
                assert shipped, f"stage {stage.name}: COPY {source}: .dockerignore excludes all of it"
                checked += 1
    assert checked >= 5


def test_service_image_is_the_default_target_without_torch_non_root_with_healthcheck() -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    service = stages[-1]
    assert service.name == "service", "the last stage is what a plain `docker build` gives"
    assert service.base.startswith("python-base")
    by_name = {s.name: s for s in stages}
    assert by_name["python-base"].base.startswith("${CUDA_IMAGE}")
    assert "cudnn-runtime" in re.search(r"ARG CUDA_IMAGE=(\S+)", DOCKERFILE.read_text()).group(1)
    # what the service image is made of: its own stage and the stages it copies from
    sources = {w.split("=", 1)[1] for a in service.args("COPY") for w in shlex.split(a) if w.startswith("--from=")}
    for name in {service.name} | sources:
        for args in by_name[name].args("RUN"):
            assert "torch" not in args.replace("find_spec('torch')", "").replace("torch must not", "")
            assert "[train]" not in args
    user = service.args("USER")
    assert user and user[-1] not in {"root", "0"}
    health = " ".join(service.args("HEALTHCHECK"))
    assert "/healthz" in health
    exposed = service.args("EXPOSE")[-1]
    assert f":{exposed}/healthz" in health
    assert json.loads(service.args("CMD")[-1])[-1] == exposed
    env = {k: v for a in service.args("ENV") for k, v in _env_pairs(a).items()}
    volume = json.loads(service.args("VOLUME")[-1])
    assert env["FALLDET_STATE_DIR"] in volume


def test_service_image_bundles_the_default_model() -> None:
    service = _stages()["service"]
    env = {k: v for a in service.args("ENV") for k, v in _env_pairs(a).items()}
    workdir = service.args("WORKDIR")[-1]
    copies = [_copy_sources(a) for a in service.args("COPY")]
    model_in_image = Path(env["FALLDET_MODEL"])
    for sources, dest in (c for c in copies if c):
        target = Path(workdir) / dest
        for source in sources:
            if source.rstrip("/") == "models" and model_in_image.parent == target:
                repo_file = REPO / "models" / model_in_image.name
                if not repo_file.is_file():
                    pytest.skip(f"{repo_file} is not there yet (the lead ships it)")
                assert in_build_context(f"models/{model_in_image.name}", _dockerignore_rules())
                return
    pytest.fail(f"no COPY puts models/ where FALLDET_MODEL={model_in_image} points")


# ---------------------------------------------------------------------------------------------
# docker-compose.yml

def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    tool = _tool("check-jsonschema")
    if tool is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    return subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    result = _check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    # the same check rejects a misspelled key, so a pass above means something
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    result = _check_compose(broken)
    assert result.returncode != 0 and "stop_grace_periods" in result.stdout


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_compose_services_fit_the_dockerfile_and_each_other() -> None:
    compose = _compose()
    services = compose["services"]
    stages = _stages()
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["target"] in stages, f"{name}: no stage {service['build']['target']}"
    state_dir = _env_pairs(" ".join(stages["service"].args("ENV")))["FALLDET_STATE_DIR"]
    for name in ("falldet", "falldet-cpu"):
        service = services[name]
        assert any(v.endswith(f":{state_dir}") for v in service["volumes"]), f"{name}: no state volume"
        assert service["environment"]["FALLDET_STATE_DIR"] == state_dir
        assert {"camera", "mosquitto"} <= set(service["depends_on"])
        assert service["environment"]["FALLDET_MQTT__HOST"] in services
    assert services["falldet"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in services["falldet-cpu"] and services["falldet-cpu"]["profiles"] == ["cpu"]

    # the camera registered at first start is the simulator's mount, on its port, by service name
    script = services["falldet"]["entrypoint"][-1]
    seeded = json.loads(re.search(r"echo '(\[.*?\])'", script).group(1))
    camera_args = services["camera"]["command"]
    assert _option(camera_args, "--host") == "0.0.0.0", "the camera must listen beyond its own loopback"
    mount_name = _option(camera_args, "--mount").split("=", 1)[0]
    url = urlsplit(seeded[0]["url"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("rtsp", "camera", int(_option(camera_args, "--port")),
                                                              f"/{mount_name}")
    assert "--port 8000" in script and "8000:8000" in services["falldet"]["ports"]


# ---------------------------------------------------------------------------------------------
# k8s/

def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _validate(doc: dict, where: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc}")


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_is_strictly_valid(path: Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        _validate(doc, path.name)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    statefulset = copy.deepcopy(_workload())
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBE_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    listed = set(_kustomization()["resources"])
    expected = {p.name for p in _manifest_files() if ".example." not in p.name}
    assert listed == expected


def _built_docs() -> list[dict]:
    """`kubectl kustomize k8s/` when kubectl is here, else the listed files with the namespace set."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    docs = [d for name in _kustomization()["resources"] for d in _docs(K8S / name)]
    for doc in docs:
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = _kustomization()["namespace"]
    return docs


def test_kustomize_build_is_strictly_valid() -> None:
    docs = _built_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Service", "PodDisruptionBudget", "Deployment"} <= kinds
    for doc in docs:
        _validate(doc, "kustomize build")
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == _kustomization()["namespace"]


def _workload() -> dict:
    return next(d for d in _docs(K8S / "statefulset.yaml") if d["kind"] == "StatefulSet")


def _all_docs() -> list[dict]:
    return [d for p in _manifest_files() for d in _docs(p)]


def test_statefulset_requests_a_gpu_and_spreads_cameras_by_ordinal() -> None:
    workload = _workload()
    pod = workload["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "falldet")
    for part in ("requests", "limits"):
        assert int(container["resources"][part]["nvidia.com/gpu"]) == 1
    env = {e["name"]: e for e in container["env"]}
    assert int(env["FALLDET_SHARD_COUNT"]["value"]) == workload["spec"]["replicas"], \
        "every pod must know how many shards there are: change replicas and FALLDET_SHARD_COUNT together"
    assert env["FALLDET_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    docs = _all_docs()
    governing = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == workload["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    claims = {c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"] for v in pod["volumes"]} | claims
    for c in pod["containers"] + pod.get("initContainers", []):
        assert {m["name"] for m in c["volumeMounts"]} <= volumes
    settings_dir = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "falldet-settings")
    state_mount = next(m for m in container["volumeMounts"] if m["name"] in claims)
    assert state_mount["mountPath"] == settings_dir["data"]["FALLDET_STATE_DIR"]


def test_selectors_and_references_resolve() -> None:
    docs = _all_docs()
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] in {"StatefulSet", "Deployment"}}
    for doc in docs:
        selector = None
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        if selector is not None:
            assert any(selector.items() <= labels.items() for labels in pods.values()), doc["metadata"]["name"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pod = _workload()["spec"]["template"]["spec"]
    for container in pod["containers"]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
            if "secretRef" in source:
                assert ("Secret", source["secretRef"]["name"]) in names, "documented in secrets.example.yaml"
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in names
    broker = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mosquitto")
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "falldet-settings")
    assert settings["data"]["FALLDET_MQTT__HOST"] == broker["metadata"]["name"]
    assert int(settings["data"]["FALLDET_MQTT__PORT"]) == broker["spec"]["ports"][0]["port"]


# ---------------------------------------------------------------------------------------------
# Seams with the service code

def deployment_env_names() -> dict[str, str]:
    """Every FALLDET_* variable the deployment files set -> where it is set."""
    names: dict[str, str] = {}
    for stage in _stages().values():
        for args in stage.args("ENV"):
            names.update({k: f"Dockerfile:{stage.name}" for k in _env_pairs(args) if ENV_NAME.match(k)})
    for service_name, service in _compose()["services"].items():
        names.update({k: f"compose:{service_name}" for k in service.get("environment", {})})
    for path in _manifest_files():
        for doc in _docs(path):
            if doc["kind"] in {"ConfigMap", "Secret"}:
                data = {**doc.get("data", {}), **doc.get("stringData", {})}
                names.update({k: path.name for k in data if ENV_NAME.match(k)})
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                names.update({e["name"]: path.name for e in c.get("env", [])})
    return {k: v for k, v in names.items() if k.startswith("FALLDET_")}


def _settings_field(model: type, path: list[str]) -> bool:
    """Whether `a__b` names a field of the settings model (nested models through `__`)."""
    from pydantic import BaseModel

    fields = {name.lower(): info for name, info in model.model_fields.items()}
    info = fields.get(path[0].lower())
    if info is None:
        return False
    if len(path) == 1:
        return True
    nested = info.annotation
    return isinstance(nested, type) and issubclass(nested, BaseModel) and _settings_field(nested, path[1:])


def test_every_env_name_in_the_deployments_is_a_service_setting() -> None:
    if not (REPO / "service" / "settings.py").exists():
        pytest.skip("service/settings.py is not there yet")
    try:
        from service.settings import Settings
    except ModuleNotFoundError as exc:  # settings.py imports the nested models of other modules
        pytest.skip(f"service.settings cannot be imported yet: {exc}")

    names = deployment_env_names()
    assert len(names) >= 10
    unknown = {name: where for name, where in names.items()
               if not _settings_field(Settings, name.removeprefix("FALLDET_").split("__"))}
    # Settings ignore unknown variables, so a misspelled name would be silently without effect.
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"


def probe_paths() -> set[str]:
    paths = set()
    for doc in _all_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if "httpGet" in c.get(probe, {}):
                    assert not c[probe]["httpGet"].get("httpHeaders"), "no API key can be put in a probe"
                    paths.add(c[probe]["httpGet"]["path"])
    health = " ".join(_stages()["service"].args("HEALTHCHECK"))
    paths.update(re.findall(r"http://[^/]+(/[A-Za-z0-9_/]+)", health))
    return paths


class _IdleWorker:
    """Stands in for the inference worker: the probe routes only read `running` (no model needed)."""

    running = False
    runtime = None

    def start(self) -> None: ...

    def stop(self) -> None: ...


def test_probes_point_at_endpoints_the_app_serves_without_a_key(tmp_path: Path) -> None:
    if not (REPO / "service" / "app.py").exists():
        pytest.skip("service/app.py is not there yet")
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    paths = probe_paths()
    assert paths == {"/healthz", "/readyz"}
    settings = Settings(state_dir=tmp_path, api_keys=["k"], model=tmp_path / "unused.onnx")
    client = TestClient(create_app(settings, worker=_IdleWorker()))  # no lifespan: nothing starts
    for path in sorted(paths):
        response = client.get(path)
        # 503 is a real answer (not ready: no model here); 401 or 404 would make the probe useless
        assert response.status_code in (200, 503), f"{path}: {response.status_code} {response.text[:200]}"
    assert client.get("/readyz").json()["ready"] is False
    assert client.get("/v1/streams").status_code == 401  # the same client is refused where a key is due
