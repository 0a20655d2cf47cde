"""The cluster definitions hold together: KubeRay manifests, the cluster-launcher YAML, the worker image."""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10; pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "launcher" / "aws-score.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
GUIDE = REPO / "docs" / "cluster.md"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# Environment variables that carry credentials: they may only come from a Secret reference.
CREDENTIAL_NAME = re.compile(r"(?i)(secret|password|token|access_key|api_?key|credential)")
# Literal secrets in any text: an AWS key id, a secret assigned a value, a private key block.
SECRET_LITERALS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)aws_(secret_access_key|access_key_id|session_token)\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{8,}"),
    re.compile(r"(?i)\b[\w-]*(secret|password|token)[\w-]*\s*[=:]\s*['\"][^'\"\s$]{8,}['\"]"),
    re.compile(r"(?i)[\w-]*(secret|password|token|access_key)[\w-]*['\"]?[\s,]+value\s*:\s*['\"]?[^\s'\"{}]+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def load_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kuberay_docs() -> list[tuple[str, dict]]:
    """Every document of cluster/kuberay/, and the RayJob templates that ConfigMaps carry (the nightly
    CronJob's), which must pass the same checks as the RayJobs applied directly."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in load_docs(path):
            out.append((f"{path.name}:{doc['metadata']['name']}", doc))
            if doc["kind"] == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    for inner in yaml.safe_load_all(text):
                        if isinstance(inner, dict) and inner.get("kind") == "RayJob":
                            out.append((f"{path.name}:{doc['metadata']['name']}/{key}", inner))
    return out


def cluster_specs() -> list[tuple[str, dict]]:
    """Every Ray cluster spec: RayCluster `spec` and RayJob `spec.rayClusterSpec`."""
    specs = []
    for label, doc in kuberay_docs():
        if doc["kind"] == "RayCluster":
            specs.append((label, doc["spec"]))
        elif doc["kind"] == "RayJob":
            specs.append((label, doc["spec"]["rayClusterSpec"]))
    return specs


def rayjobs() -> list[tuple[str, dict]]:
    return [(label, doc) for label, doc in kuberay_docs() if doc["kind"] == "RayJob"]


def groups(spec: dict) -> Iterator[tuple[str, dict, dict]]:
    """(group name, rayStartParams, pod spec) for the head and every worker group."""
    yield "head", spec["headGroupSpec"]["rayStartParams"], spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["rayStartParams"], group["template"]["spec"]


def ray_container(pod: dict) -> dict:
    # KubeRay runs Ray in the first container of the pod template.
    return pod["containers"][0]


def parse_quantity(value: str | int) -> float:
    """A Kubernetes resource quantity ("8", "500m", "64Gi", "1G") as a number.

    Hand-written because the kubernetes client (which has one) is not a dependency of ours.
    """
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "P": 1e15,
    }
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in ("", *units), f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def commands(entrypoint: str) -> list[list[str]]:
    """The commands of a RayJob entrypoint (a shell line; `a && b` runs b after a succeeds)."""
    tokens = shlex.split(entrypoint)
    out, current = [], []
    for token in tokens:
        if token == "&&":
            out.append(current)
            current = []
        else:
            current.append(token)
    return [*out, current]


def flag(tokens: list[str], name: str) -> str | None:
    return tokens[tokens.index(name) + 1] if name in tokens else None


def start_gpus(spec: dict) -> int:
    """GPUs the cluster starts with: replicas x num-gpus over the worker groups."""
    return sum(
        int(g.get("replicas", 0)) * int(g["rayStartParams"].get("num-gpus", "0"))
        for g in spec.get("workerGroupSpecs", [])
    )


def max_gpus(spec: dict) -> int:
    return sum(
        int(g["maxReplicas"]) * int(g["rayStartParams"].get("num-gpus", "0")) for g in spec.get("workerGroupSpecs", [])
    )


def dockerfile():
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(str(DOCKERFILE))


def image_ray_version() -> str:
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", dockerfile().baseimage)
    assert match, f"{DOCKERFILE}: FROM must be a pinned CUDA Ray image, got {dockerfile().baseimage!r}"
    return match.group(1)


def find_secrets(text: str) -> list[str]:
    return [m.group(0) for pattern in SECRET_LITERALS for m in pattern.finditer(text)]


CLUSTER_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file())
YAML_FILES = [p for p in CLUSTER_FILES if p.suffix in (".yaml", ".yml")]
SPECS = cluster_specs()
JOBS = rayjobs()
COMMANDS = [
    (f"{label}#{i}", tokens) for label, job in JOBS for i, tokens in enumerate(commands(job["spec"]["entrypoint"]))
]


def ids(items: list[tuple]) -> list[str]:
    return [item[0] for item in items]


# ---------------------------------------------------------------------------------------------- YAML


def test_cluster_holds_the_expected_files() -> None:
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER_FILES}
    assert {
        "Dockerfile",
        "launcher/aws-score.yaml",
        "kuberay/raycluster-score.yaml",
        "kuberay/rayjob-score.yaml",
        "kuberay/rayjob-train.yaml",
        "kuberay/serviceaccount.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_yaml_parses_into_mappings(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path}: no YAML documents"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


# ------------------------------------------------------------------------------------------ KubeRay


def test_kuberay_documents_are_known_kinds_with_names() -> None:
    kinds = [(doc["apiVersion"], doc["kind"]) for _, doc in kuberay_docs()]
    assert set(kinds) <= {
        ("ray.io/v1", "RayCluster"),
        ("ray.io/v1", "RayJob"),
        ("v1", "ServiceAccount"),
        ("v1", "ConfigMap"),
        ("batch/v1", "CronJob"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    }, kinds
    assert ("ray.io/v1", "RayCluster") in kinds and ("ray.io/v1", "RayJob") in kinds
    names = [(doc["kind"], doc["metadata"]["name"]) for _, doc in kuberay_docs()]
    assert len(names) == len(set(names)), f"duplicate names: {names}"
    for _, name in names:
        # Kubernetes object names (DNS-1123 labels; KubeRay derives service names from them).
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 50, name


@pytest.mark.parametrize("label,spec", SPECS, ids=ids(SPECS))
def test_cluster_spec_has_the_fields_kuberay_requires(label: str, spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert ray_container(head["template"]["spec"])["image"]
    workers = spec["workerGroupSpecs"]
    assert workers, f"{label}: no worker groups"
    names = [g["groupName"] for g in workers]
    assert len(names) == len(set(names)), f"{label}: duplicate groupName in {names}"
    for g in workers:
        assert all(isinstance(g[k], int) for k in ("replicas", "minReplicas", "maxReplicas")), g["groupName"]
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (
            f"{label}/{g['groupName']}: need minReplicas <= replicas <= maxReplicas"
        )
        assert ray_container(g["template"]["spec"])["image"]
    for group, params, _ in groups(spec):
        # The CRD types rayStartParams as map[string]string: an unquoted number is rejected.
        bad = {k: v for k, v in params.items() if not isinstance(v, str)}
        assert not bad, f"{label}/{group}: rayStartParams values must be quoted strings: {bad}"
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0", f"{label}: jobs are submitted to the dashboard"


@pytest.mark.parametrize("label,spec", SPECS, ids=ids(SPECS))
def test_gpus_in_ray_equal_gpus_of_the_pod(label: str, spec: dict) -> None:
    gpu_groups = 0
    for group, params, pod in groups(spec):
        resources = ray_container(pod)["resources"]
        limit = int(parse_quantity(resources.get("limits", {}).get("nvidia.com/gpu", 0)))
        assert int(params.get("num-gpus", "0")) == limit, (
            f"{label}/{group}: rayStartParams num-gpus {params.get('num-gpus')} != nvidia.com/gpu limit {limit}"
        )
        if "nvidia.com/gpu" in resources.get("requests", {}):
            assert parse_quantity(resources["requests"]["nvidia.com/gpu"]) == limit
        gpu_groups += limit > 0
        if group == "head":
            assert limit == 0, f"{label}: no GPUs on the head (it runs the driver)"
            assert params.get("num-cpus") == "0", f"{label}: no Ray tasks on the head"
    assert gpu_groups >= 1, f"{label}: no GPU worker group"


@pytest.mark.parametrize("label,spec", SPECS, ids=ids(SPECS))
def test_object_store_fits_in_shm_and_memory(label: str, spec: dict) -> None:
    for group, params, pod in groups(spec):
        container = ray_container(pod)
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{label}/{group}: mount a memory-backed volume at /dev/shm"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
        assert volume["emptyDir"]["medium"] == "Memory"
        shm = parse_quantity(volume["emptyDir"]["sizeLimit"])
        memory = parse_quantity(container["resources"]["limits"]["memory"])
        store = float(params["object-store-memory"])
        assert store <= shm <= memory, (
            f"{label}/{group}: need object-store-memory ({store:.3g}) <= /dev/shm ({shm:.3g}) <= memory ({memory:.3g})"
        )
        # KubeRay derives a node's Ray CPUs and memory from the limits: requests equal to them make the pod
        # really get what Ray will schedule onto it.
        assert container["resources"]["requests"] == container["resources"]["limits"], f"{label}/{group}"


def test_scoring_cluster_and_scoring_job_are_the_same_cluster() -> None:
    (cluster,) = load_docs(KUBERAY / "raycluster-score.yaml")
    (job,) = load_docs(KUBERAY / "rayjob-score.yaml")
    assert cluster["spec"] == job["spec"]["rayClusterSpec"], "keep rayjob-score.yaml's rayClusterSpec in sync"
    groups_by_gpu = {int(g["rayStartParams"]["num-gpus"]) > 0 for g in cluster["spec"]["workerGroupSpecs"]}
    assert groups_by_gpu == {True, False}, "scoring needs a GPU group and a CPU (decoding) group"


def test_one_image_everywhere_tagged_with_the_package_version() -> None:
    images = {ray_container(pod)["image"] for _, spec in SPECS for _, _, pod in groups(spec)}
    launcher = yaml.safe_load(LAUNCHER.read_text())
    images.add(launcher["docker"]["image"])
    assert len(images) == 1, f"head and workers must run the same image: {images}"
    (image,) = images
    assert image.rsplit(":", 1)[-1] == VERSION, f"{image}: tag it with the dpiqa version {VERSION}"


def test_ray_version_of_clusters_equals_the_image() -> None:
    from packaging.requirements import Requirement

    version = image_ray_version()
    for label, spec in SPECS:
        assert spec["rayVersion"] == version, f"{label}: rayVersion {spec['rayVersion']} != image's Ray {version}"
    (ray_req,) = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "ray"]
    assert ray_req.specifier.contains(version), f"image Ray {version} does not satisfy pyproject's {ray_req}"


@pytest.mark.parametrize("label,job", JOBS, ids=ids(JOBS))
def test_rayjobs_clean_up_and_retry(label: str, job: dict) -> None:
    spec = job["spec"]
    assert spec["rayClusterSpec"] and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True, f"{label}: delete the cluster when the job ends"
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    # A retry reruns the same command on a fresh cluster: it resumes from markers/checkpoints.
    assert spec["backoffLimit"] >= 1, f"{label}: retry the job (reruns resume)"
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")


@pytest.mark.parametrize("label,tokens", COMMANDS, ids=ids(COMMANDS))
def test_entrypoints_are_valid_dpiqa_commands(label: str, tokens: list[str]) -> None:
    from dpiqa.jobs.cli import JOBS as SUBCOMMANDS
    from dpiqa.jobs.cli import build_parser

    assert tokens[0] == "dpiqa", f"{label}: entrypoints run the dpiqa CLI, got {tokens[0]!r}"
    for name in ("--input", "--output", "--model", "--root", "--teacher", "--teacher-outputs"):
        value = flag(tokens, name)
        if value and "/" in value:
            # A local path on the head is not visible to the workers.
            assert re.match(r"[a-z][a-z0-9+.-]*://", value), f"{label}: {name} {value} must be a URL"
    assert "--address" not in tokens, f"{label}: Ray Jobs sets RAY_ADDRESS for the entrypoint"
    assert tokens[1].replace("-", "_") in SUBCOMMANDS, f"{label}: no subcommand `dpiqa {tokens[1]}`"
    try:
        build_parser().parse_args(tokens[1:])
    except SystemExit as exc:
        pytest.fail(f"{label}: `{shlex.join(tokens)}` is rejected by the dpiqa CLI (exit {exc.code})")


@pytest.mark.parametrize("label,job", JOBS, ids=ids(JOBS))
def test_actors_and_workers_match_the_gpus_of_the_cluster(label: str, job: dict) -> None:
    spec = job["spec"]["rayClusterSpec"]
    checked = 0
    for tokens in commands(job["spec"]["entrypoint"]):
        for name in ("--workers",):
            value = flag(tokens, name)
            if value is not None:
                # One scoring actor / DDP worker per GPU the cluster starts with, so the job neither waits
                # for GPUs that never come nor leaves any idle.
                assert int(value) == start_gpus(spec) <= max_gpus(spec), (
                    f"{label}: {name} {value} != GPUs at start ({start_gpus(spec)})"
                )
                checked += 1
            if name == "--workers" and value is not None and tokens[1] in ("train-teacher", "distill"):
                from dpiqa.engine.training.run import DEFAULTS

                kind = "teacher" if tokens[1] == "train-teacher" else "student"
                batch = int(flag(tokens, "--batch-size") or DEFAULTS[kind]["batch_size"])
                assert batch % int(value) == 0, (
                    f"{label}: the global batch {batch} does not divide among --workers {value}"
                )
        if tokens[1] == "score":
            assert flag(tokens, "--device") == "cuda" and flag(tokens, "--workers"), (
                f"{label}: on an autoscaling cluster `--device auto` may see no GPUs yet; say cuda and --workers"
            )
    assert checked, f"{label}: size the job to the cluster with --workers"


def test_pods_run_as_the_irsa_service_account() -> None:
    """Ray's pods reach the object store as an IAM role (IRSA); the nightly submitter's account only talks to
    the Kubernetes API."""
    accounts = {doc["metadata"]["name"]: doc for _, doc in kuberay_docs() if doc["kind"] == "ServiceAccount"}
    ray_accounts = set()
    for label, spec in SPECS:
        for group, _, pod in groups(spec):
            assert pod.get("serviceAccountName") in accounts, f"{label}/{group}: run as a ServiceAccount of ours"
            ray_accounts.add(pod["serviceAccountName"])
    assert ray_accounts
    for name in ray_accounts:
        role = accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", role), f"{name}: {role}"


@pytest.mark.parametrize("label,spec", SPECS, ids=ids(SPECS))
def test_credentials_come_only_from_secret_references(label: str, spec: dict) -> None:
    for group, _, pod in groups(spec):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if CREDENTIAL_NAME.search(env["name"]):
                    assert "value" not in env, f"{label}/{group}: {env['name']} has a literal value"
                    assert env["valueFrom"]["secretKeyRef"]["name"], f"{label}/{group}: {env['name']}"


# ------------------------------------------------------------------------------------ cluster launcher


def validate_launcher(config: dict) -> None:
    """Ray's two checks: the JSON schema Ray ships, then `ray up`'s own validation of the filled config."""
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # prepare_config merges the provider's defaults.yaml (no cloud access); bootstrapping would need AWS.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_launcher_validates_against_rays_schema() -> None:
    validate_launcher(yaml.safe_load(LAUNCHER.read_text()))


def _drop(path: str):
    def edit(c: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            c = c[p]
        del c[last]

    return edit


BROKEN = {  # breakage -> (the edit, what Ray's validation says about it)
    "no cluster_name": (_drop("cluster_name"), "'cluster_name' is a required property"),
    "node type without node_config": (
        _drop("available_node_types.gpu.node_config"),
        "'node_config' is a required property",
    ),
    "GPU count as a string": (
        lambda c: c["available_node_types"]["gpu"]["resources"].update(GPU="8"),
        "'8' is not of type 'integer'",
    ),
    "KubeRay field in a node type": (
        lambda c: c["available_node_types"]["gpu"].update(maxReplicas=4),
        "'maxReplicas' was unexpected",
    ),
    "unknown docker option": (lambda c: c["docker"].update(shm_size="64g"), "'shm_size' was unexpected"),
    "head_node_type not a node type": (
        lambda c: c.update(head_node_type="ray.head.default"),
        "`head_node_type` must be one of `available_node_types`",
    ),
    "min_workers above max_workers": (
        lambda c: c["available_node_types"]["gpu"].update(min_workers=20),
        "global `max_workers` is smaller than the sum of `min_workers`",
    ),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_broken_launcher_copies_fail_validation(breakage: str) -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    edit, says = BROKEN[breakage]
    edit(config)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(says)):
        validate_launcher(config)


def test_launcher_gets_credentials_from_instance_profiles_only() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    for name, node_type in config["available_node_types"].items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), f"{name}: {arn}"

    def keys(node) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield str(k)
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    assert not [k for k in keys(config) if CREDENTIAL_NAME.search(k)], "credential fields in the launcher config"
    for remote, local in config.get("file_mounts", {}).items():
        assert not re.search(r"(\.aws|\.ssh|\.pem|\.env|credential|secret)", f"{remote} {local}", re.I), (
            f"file_mounts must not carry credentials: {remote}: {local}"
        )


def test_launcher_installs_this_version_of_dpiqa() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    wheel = f"dpiqa-{VERSION}-py3-none-any.whl"
    installs = [c for c in config["setup_commands"] if "pip install" in c and wheel in c]
    assert installs, f"setup_commands must pip install {wheel}"
    (target,) = [remote for remote in config["file_mounts"] if f"{remote}/{wheel}" in installs[0]]
    assert config["file_mounts"][target].rstrip("/").endswith("dist"), "mount the folder `pip wheel -w dist` fills"
    node_gpus = {name: t["resources"].get("GPU", 0) for name, t in config["available_node_types"].items()}
    assert node_gpus[config["head_node_type"]] == 0 and max(node_gpus.values()) > 0, node_gpus
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("CPU") == 0


# ------------------------------------------------------------------------------------------- image


def test_dockerfile_parses_and_pins_a_cuda_ray_base() -> None:
    parser = dockerfile()
    instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    known = {
        "FROM",
        "ARG",
        "ENV",
        "RUN",
        "COPY",
        "ADD",
        "USER",
        "WORKDIR",
        "LABEL",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "SHELL",
        "HEALTHCHECK",
        "VOLUME",
        "STOPSIGNAL",
        "ONBUILD",
    }
    assert set(instructions) <= known, set(instructions) - known
    assert [i for i in instructions if i != "ARG"][0] == "FROM", "only ARGs may come before FROM"
    assert image_ray_version()  # pinned, not :latest


def test_image_runs_as_a_non_root_user() -> None:
    users = [i["value"].strip() for i in dockerfile().structure if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"last USER is {users[-1:] or 'unset'}"


def test_image_installs_this_package_and_the_tested_torch() -> None:
    structure = dockerfile().structure
    copied = " ".join(i["value"] for i in structure if i["instruction"] == "COPY").split()
    # the folders the wheel's packages come from (pyproject's package-dir: dpiqa/, engine/, models/, jobs/)
    packages = sorted(set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()))
    for needed in ["pyproject.toml", "README.md", *packages]:
        assert needed in copied, f"{DOCKERFILE}: COPY {needed} (the package is built from it)"
    runs = [i["value"] for i in structure if i["instruction"] == "RUN"]
    sources = [
        v.split()[-1].rstrip("/")
        for v in (i["value"] for i in structure if i["instruction"] == "COPY")
        if "pyproject.toml" in v
    ]
    assert any(re.search(rf"pip install [^&]*{re.escape(sources[0])}", r) for r in runs), "pip install the package"
    torch_pins = set(dockerfile().args["TORCH_PINS"].split())
    makefile = re.search(r"^TORCH := (.+)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    assert torch_pins == set(makefile), f"image torch {torch_pins} != Makefile's {makefile}"


def test_image_bakes_in_no_credentials() -> None:
    parser = dockerfile()
    for name in [*parser.envs, *parser.args]:
        assert not CREDENTIAL_NAME.search(name), f"{DOCKERFILE}: {name} would bake a credential into the image"
    copies = " ".join(i["value"] for i in parser.structure if i["instruction"] in ("COPY", "ADD"))
    assert not re.search(r"(\.aws|\.ssh|\.pem|\.env\b|credential|secret)", copies, re.I), copies


# ----------------------------------------------------------------------------------------- secrets


def test_secret_scanner_finds_planted_secrets() -> None:
    key_id = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example id, assembled so no scanner trips here
    planted = [
        f"aws_access_key_id = {key_id}",
        "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        '  - {name: AWS_SECRET_ACCESS_KEY, value: "wJalrXUtnFEMI/K7MDENG"}',
        'db_password: "hunter2hunter2"',
        "-----BEGIN RSA PRIVATE KEY-----",
    ]
    assert all(find_secrets(line) for line in planted), [line for line in planted if not find_secrets(line)]
    clean = [
        "  - name: AWS_SECRET_ACCESS_KEY\n    valueFrom: {secretKeyRef: {name: dpiqa-s3, key: secret-access-key}}",
        "kubectl create secret generic dpiqa-s3 --from-env-file=dpiqa-s3.env",
    ]
    assert not [line for line in clean if find_secrets(line)]


@pytest.mark.parametrize("path", [*CLUSTER_FILES, GUIDE], ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_literal_secrets(path: Path) -> None:
    assert not find_secrets(path.read_text()), f"{path}: literal secret {find_secrets(path.read_text())}"


def test_guide_names_only_files_that_exist() -> None:
    text = GUIDE.read_text()
    named = set(re.findall(r"\b(cluster/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile)\b", text))
    assert named, "the guide should point at the cluster files"
    missing = [n for n in named if not (REPO / n).exists()]
    assert not missing, f"docs/cluster.md names missing files: {missing}"
    assert "## Faults tried and what survived" in text


def test_the_nightly_cronjob_submits_its_rayjob_template_and_fails_with_it() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in kuberay_docs()}
    cron = docs[("CronJob", "dpiqa-nightly")]
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["jobTemplate"]["spec"]["backoffLimit"] == 0
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    binding = docs[("RoleBinding", account)]
    role = docs[("Role", binding["roleRef"]["name"])]
    assert {"create", "get"} <= set(role["rules"][0]["verbs"]) and role["rules"][0]["resources"] == ["rayjobs"]
    assert any(s["name"] == account for s in binding["subjects"])
    template = next(d for label, d in kuberay_docs() if label.endswith("dpiqa-nightly-rayjob/rayjob.yaml"))
    assert pod["volumes"][0]["configMap"]["name"] == "dpiqa-nightly-rayjob"
    script = pod["containers"][0]["args"][0]
    assert "kubectl create -f -" in script and "exit 1" in script and f"s/{template['metadata']['name']}/" in script
    steps = commands(template["spec"]["entrypoint"])
    assert [t[1] for t in steps] == ["score", "audit"]
    assert flag(steps[1], "--run") == "latest" and flag(steps[1], "--baseline-runs")
    assert flag(steps[0], "--output") == flag(steps[1], "--scores")
