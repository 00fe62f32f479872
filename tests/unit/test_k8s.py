"""The Kubernetes manifests: the kustomize base in ops/k8s, rendered, validated and checked.

`kubectl kustomize` renders the base exactly as `kubectl apply -k` would send it. Every core object
is validated against the Kubernetes schemas by kubernetes-validate in strict mode (an unknown or
misplaced field is an error); the KEDA objects, for which it has no schema, and what no schema can
say (one GPU per worker, the queue KEDA watches, probes, pinned images, resource requests, secrets
only from Secrets, who may reach Redis and Postgres) are asserted here. No cluster is needed.
Without kubectl these tests skip with the reason; in CI (CI=true) they fail.
"""

import copy
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import require
from workers.core.constants import EMBED_QUEUE
from workers.core.settings import FleetSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "ops" / "k8s"
K8S_README = K8S / "README.md"
COMPONENTS = K8S / "components"
KUBECTL = shutil.which("kubectl")
# The schemas to validate against: a release that current managed clusters run.
KUBERNETES_VERSION = "1.32"
NAMESPACE = "embedding-fleet"
PART_OF = {"app.kubernetes.io/part-of": "embedding-fleet"}
SECRET = "fleet-secrets"
# Custom resources without a schema in kubernetes-validate: asserted field by field below.
KEDA_GROUP = "keda.sh/"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
OUR_IMAGES = {f"embedding-fleet/{name}:{VERSION}" for name in ("worker", "producer", "trainer")}
# Settings that carry a password or token: only ever from the Secret.
SECRET_SETTINGS = {"FLEET_DATABASE_URL", "FLEET_BROKER_URL", "FLEET_MILVUS_TOKEN", "FLOWER_BASIC_AUTH"}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_KEY|_AUTH$")
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@:]*:[^/\s@]+@", re.IGNORECASE)
DOCUMENTED_SECRET_KEY = re.compile(r"--from-literal=([A-Z][A-Z0-9_]*)=")

EXPECTED = {
    ("Namespace", NAMESPACE),
    ("ConfigMap", "fleet-alert-rules"),
    ("Deployment", "worker"),
    ("ScaledObject", "worker"),
    ("TriggerAuthentication", "redis-auth"),
    ("PodDisruptionBudget", "worker"),
    ("Deployment", "api"),
    ("Service", "api"),
    ("Deployment", "flower"),
    ("Service", "flower"),
    ("Deployment", "exporter"),
    ("StatefulSet", "redis"),
    ("Service", "redis"),
    ("StatefulSet", "postgres"),
    ("Service", "postgres"),
    ("NetworkPolicy", "redis"),
    ("NetworkPolicy", "postgres"),
    ("Job", "migrate-db"),
    ("Job", "ingest"),
    ("Job", "reindex"),
    ("Job", "finetune"),
    ("PersistentVolumeClaim", "docs"),
    ("PersistentVolumeClaim", "finetune"),
}


# -- rendering ----------------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"`kubectl kustomize {path}` failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    require(
        KUBECTL is not None,
        "KUBECTL NOT FOUND: the Kubernetes manifests in ops/k8s are NOT rendered, validated or checked. "
        "Install the kubectl client (kustomize is built in) to run these tests.",
    )
    return kustomize(K8S)


@pytest.fixture(scope="module")
def objects(rendered: list[dict]) -> dict[tuple[str, str], dict]:
    index = {}
    for obj in rendered:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in index, f"{key} is rendered twice"
        index[key] = obj
    return index


def get(objects: dict, kind: str, name: str) -> dict:
    assert (kind, name) in objects, f"ops/k8s renders no {kind}/{name}"
    return objects[(kind, name)]


def config_map(objects: dict) -> dict[str, str]:
    """The data of the generated ConfigMap fleet-config (its name carries a content hash)."""
    found = [obj for (kind, name), obj in objects.items() if kind == "ConfigMap" and name.startswith("fleet-config")]
    assert len(found) == 1, "ops/k8s must render exactly one ConfigMap fleet-config"
    return found[0]["data"]


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pod_labels(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def workloads(rendered: list[dict]) -> Iterator[dict]:
    return (obj for obj in rendered if obj["kind"] in WORKLOAD_KINDS)


def containers(spec: dict) -> list[dict]:
    """Every container of a pod: init, regular and ephemeral."""
    return spec.get("initContainers", []) + spec["containers"] + spec.get("ephemeralContainers", [])


def all_containers(rendered: list[dict]) -> Iterator[tuple[str, dict]]:
    for obj in workloads(rendered):
        for container in containers(pod_spec(obj)):
            yield f"{obj['kind']}/{obj['metadata']['name']}:{container['name']}", container


def the_container(obj: dict) -> dict:
    [container] = pod_spec(obj)["containers"]
    return container


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def command_line(container: dict) -> list[str]:
    return [str(part) for part in container.get("command", []) + container.get("args", [])]


def port_number(container: dict, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = {entry.get("name"): entry["containerPort"] for entry in container.get("ports", [])}
    assert port in named, f"{container['name']} names no port {port!r}"
    return named[port]


def http_probe(container: dict, kind: str) -> tuple[str, int]:
    probe = container.get(kind)
    assert probe, f"{container['name']} has no {kind}"
    assert "httpGet" in probe, f"{container['name']}'s {kind} is not an HTTP check"
    return probe["httpGet"]["path"], port_number(container, probe["httpGet"]["port"])


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"use matchLabels only: {selector}"
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def strings(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def documented_secret_keys() -> set[str]:
    """The keys of `kubectl create secret generic fleet-secrets ...` in ops/k8s/README.md."""
    text = K8S_README.read_text(encoding="utf-8")
    command = re.search(rf"kubectl[^\n]*create secret generic {SECRET}(?:[^\n]*\\\n)*[^\n]*", text)
    assert command, f"ops/k8s/README.md must show the `kubectl create secret generic {SECRET}` command"
    return set(DOCUMENTED_SECRET_KEY.findall(command[0]))


# -- the base renders and validates -------------------------------------------------------------


def test_base_renders_every_fleet_object_in_its_namespace(rendered, objects):
    missing = EXPECTED - set(objects)
    assert not missing, f"ops/k8s does not render: {sorted(missing)}"
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
        # Every object belongs to the fleet (the NetworkPolicies rely on it for pods).
        assert obj["metadata"]["labels"].items() >= PART_OF.items(), f"{obj['kind']}/{obj['metadata']['name']}"


def test_core_objects_are_valid_kubernetes_in_strict_mode(rendered):
    errors, unvalidated = [], set()
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(obj["apiVersion"])
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {list(err.path)}")
    assert not errors, "invalid for Kubernetes " + KUBERNETES_VERSION + ":\n" + "\n".join(errors)
    # Only KEDA's custom resources may go without a schema; they are checked field by field below.
    assert all(api.startswith(KEDA_GROUP) for api in unvalidated), f"no schema for {sorted(unvalidated)}"


def test_strict_validation_refuses_an_unknown_field(objects):
    """The validation above can fail: a misplaced field (a GPU outside `resources`) is refused."""
    worker = copy.deepcopy(get(objects, "Deployment", "worker"))
    kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)
    pod_spec(worker)["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)


# -- GPU workers and KEDA -----------------------------------------------------------------------


def test_postgres_buffers_are_a_quarter_of_its_memory_with_room_for_wal(objects):
    # README "Capacity": the defaults (128 MB of buffers, 1 GB of WAL) slow an ingest past ~1 M chunks.
    container = the_container(get(objects, "StatefulSet", "postgres"))
    settings = dict(arg.split("=", 1) for arg in container["args"] if "=" in arg)
    limit_mb = int(container["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    assert int(settings["shared_buffers"].removesuffix("MB")) == limit_mb // 4
    assert settings["max_wal_size"] == "4GB" and settings["wal_compression"] == "on"


def test_worker_takes_one_gpu_and_has_time_for_a_warm_shutdown(objects):
    worker = get(objects, "Deployment", "worker")
    container = the_container(worker)
    assert container["image"] == f"embedding-fleet/worker:{VERSION}"
    assert command_line(container)[:4] == ["celery", "-A", "workers.app", "worker"]
    assert str(container["resources"]["limits"].get("nvidia.com/gpu")) == "1", "each worker needs exactly one GPU"
    # Celery's soft shutdown (60 s) finishes or returns the batch; Kubernetes must not kill it first.
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 90
    # KEDA's HPA owns the replica count: a fixed one would be reset at every apply.
    assert "replicas" not in worker["spec"]


def test_worker_health_is_its_own_heartbeat_on_the_metrics_port(objects):
    worker = get(objects, "Deployment", "worker")
    container = the_container(worker)
    metrics_port = int(config_map(objects)["FLEET_METRICS_PORT"])
    for kind in ("readinessProbe", "livenessProbe"):
        assert http_probe(container, kind) == ("/healthz", metrics_port)
    # The first start downloads and loads the model: at least 10 minutes before a restart.
    first = container.get("startupProbe") or container["livenessProbe"]
    budget = first.get("initialDelaySeconds", 0) + first.get("periodSeconds", 10) * first.get("failureThreshold", 3)
    assert budget >= 600, f"a starting worker is restarted after {budget} s, before the model can load"
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_scaled_object_scales_workers_on_the_celery_queue(objects):
    scaled = get(objects, "ScaledObject", "worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "worker")
    assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert metadata["listName"] == EMBED_QUEUE, "KEDA must watch the Redis list of the Celery queue"
    assert int(metadata["listLength"]) > 0
    assert int(metadata["activationListLength"]) >= 0
    # KEDA's operator runs in another namespace: the address must be the Service's full name.
    redis = get(objects, "Service", "redis")
    host, _, port = metadata["address"].rpartition(":")
    assert host in {
        f"redis.{redis['metadata']['namespace']}.svc",
        f"redis.{redis['metadata']['namespace']}.svc.cluster.local",
    }
    assert int(port) == redis["spec"]["ports"][0]["port"]


def test_scale_down_is_gradual_and_leaves_time_to_finish_a_batch(objects):
    spec = get(objects, "ScaledObject", "worker")["spec"]
    assert spec["cooldownPeriod"] >= 300
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300, "an empty list for a moment must not drop workers"
    assert all(policy["type"] != "Percent" or policy["value"] <= 50 for policy in scale_down["policies"])
    # A worker holds up to FLEET_WORKER_CONCURRENCY tasks that the list no longer counts; the PDB and
    # the grace period protect them.
    pdb = get(objects, "PodDisruptionBudget", "worker")
    assert selects(pdb["spec"]["selector"], pod_labels(get(objects, "Deployment", "worker")))
    # maxUnavailable, not minAvailable: a fleet scaled down to its last worker can still be drained.
    assert pdb["spec"]["maxUnavailable"] >= 1


def test_list_length_target_matches_the_sizing_rule(objects):
    """listLength x chunks per task / chunks/s per GPU = seconds of backlog per worker."""
    from migrations.reindex import ASSUMED_CHUNKS_PER_S

    data = config_map(objects)
    task_chunks = int(data["FLEET_TASK_CHUNKS"])
    assert task_chunks == FleetSettings.model_fields["task_chunks"].default, "the README's sizing assumes 32"
    list_length = int(get(objects, "ScaledObject", "worker")["spec"]["triggers"][0]["metadata"]["listLength"])
    backlog_s = list_length * task_chunks / ASSUMED_CHUNKS_PER_S
    # Less than a minute of work per added worker would not repay its start; over half an hour would
    # leave a re-index on one GPU.
    assert 60 <= backlog_s <= 1800, f"listLength {list_length} is {backlog_s:.0f} s of work per worker"


def test_keda_reads_the_redis_password_from_the_secret(objects):
    trigger = get(objects, "ScaledObject", "worker")["spec"]["triggers"][0]
    assert not [key for key in trigger["metadata"] if "password" in key.lower() and not key.endswith("FromEnv")]
    auth = get(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert refs["password"]["name"] == SECRET
    assert refs["password"]["key"] in documented_secret_keys()
    assert set(auth["spec"]) == {"secretTargetRef"}, "no plain values in the TriggerAuthentication"


# -- the query service, Flower, the exporter ----------------------------------------------------


def test_api_has_readiness_and_liveness_probes_and_a_service(objects):
    api = get(objects, "Deployment", "api")
    container = the_container(api)
    line = command_line(container)
    assert line[:2] == ["producer", "serve"]
    port = int(line[line.index("--port") + 1])
    assert line[line.index("--host") + 1] == "0.0.0.0"
    assert http_probe(container, "readinessProbe") == ("/readyz", port)
    assert http_probe(container, "livenessProbe") == ("/healthz", port)
    service = get(objects, "Service", "api")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(api))
    [service_port] = service["spec"]["ports"]
    assert port_number(container, service_port["targetPort"]) == port
    assert api["spec"]["replicas"] >= 2, "one replica would drop queries at every rollout or drain"


def test_flower_is_behind_basic_auth_from_the_secret(objects):
    flower = get(objects, "Deployment", "flower")
    container = the_container(flower)
    line = command_line(container)
    assert line[:4] == ["celery", "-A", "workers.app", "flower"]
    assert not [part for part in line if "basic_auth" in part], "a password on the command line shows in `ps`"
    auth = env_of(container)["FLOWER_BASIC_AUTH"]
    assert auth["valueFrom"]["secretKeyRef"]["name"] == SECRET
    assert not auth["valueFrom"]["secretKeyRef"].get("optional"), "Flower must not start without auth"
    # Flower reads every FLOWER_* variable as an option: the Service `flower` must not inject
    # FLOWER_PORT=tcp://... and FLOWER_SERVICE_HOST into it.
    assert pod_spec(flower).get("enableServiceLinks") is False
    assert "FLEET_DATABASE_URL" not in env_of(container), "Flower needs the broker only"
    assert http_probe(container, "readinessProbe")[0] == "/healthcheck"
    assert http_probe(container, "livenessProbe")[0] == "/healthcheck"
    service = get(objects, "Service", "flower")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(flower))


def test_exporter_is_scraped(objects):
    exporter = get(objects, "Deployment", "exporter")
    line = command_line(the_container(exporter))
    port = line[line.index("--port") + 1]
    assert line[:2] == ["producer", "serve-metrics"]
    annotations = exporter["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", port)


# -- state: Redis and Postgres ------------------------------------------------------------------


def test_redis_keeps_the_queue_on_a_volume_and_never_evicts(objects):
    redis = get(objects, "StatefulSet", "redis")
    container = the_container(redis)
    script = " ".join(command_line(container))
    assert re.search(r"--appendonly\s+yes", script), "queued tasks must survive a restart"
    assert re.search(r"--maxmemory-policy\s+noeviction", script), "an evicted task message is lost work"
    data_dir = re.search(r"--dir\s+(\S+)", script)[1]
    [claim] = redis["spec"]["volumeClaimTemplates"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir, "the append-only file must be on the claim"
    service = get(objects, "Service", "redis")
    assert redis["spec"]["serviceName"] == "redis" and service["spec"]["clusterIP"] == "None"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(redis))
    assert service["spec"]["ports"][0]["port"] == 6379


def test_trial_postgres_takes_its_password_from_the_secret(objects):
    postgres = get(objects, "StatefulSet", "postgres")
    container = the_container(postgres)
    ref = env_of(container)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (SECRET, "POSTGRES_PASSWORD")
    [claim] = postgres["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] in {mount["name"] for mount in container["volumeMounts"]}
    service = get(objects, "Service", "postgres")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(postgres))
    assert service["spec"]["ports"][0]["port"] == 5432


@pytest.mark.parametrize(("name", "port", "extra_namespaces"), [("redis", 6379, {"keda"}), ("postgres", 5432, set())])
def test_only_fleet_pods_reach_the_state(objects, rendered, name, port, extra_namespaces):
    policy = get(objects, "NetworkPolicy", name)["spec"]
    assert selects(policy["podSelector"], pod_labels(get(objects, "StatefulSet", name)))
    assert "Ingress" in policy["policyTypes"]
    namespaces = set()
    for rule in policy["ingress"]:
        assert rule.get("from"), f"an ingress rule without `from` opens {name} to every pod"
        assert [entry["port"] for entry in rule["ports"]] == [port]
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:
                # Another namespace: only KEDA's operator, which reads the queue length.
                namespaces.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
            else:
                assert peer["podSelector"]["matchLabels"] == PART_OF
    assert namespaces == extra_namespaces
    # ...and every fleet pod carries the label, or it would be cut off.
    for obj in workloads(rendered):
        assert pod_labels(obj).items() >= PART_OF.items(), f"{obj['kind']}/{obj['metadata']['name']}"


# -- jobs ---------------------------------------------------------------------------------------


def test_migrate_job_applies_the_schema_on_apply(objects):
    job = get(objects, "Job", "migrate-db")
    assert command_line(the_container(job))[:2] == ["migrate", "db"]
    assert not job["spec"].get("suspend"), "the schema job runs when the base is applied"
    assert job["spec"]["backoffLimit"] >= 3, "Postgres may still be starting: retry"


def test_ingest_job_reads_documents_read_only_from_a_volume(objects):
    job = get(objects, "Job", "ingest")
    container = the_container(job)
    line = command_line(container)
    assert line[:2] == ["producer", "ingest"] and "--wait" in line
    docs_path = line[2]
    [mount] = [mount for mount in container["volumeMounts"] if mount["mountPath"] == docs_path]
    assert mount.get("readOnly") is True
    volumes = {volume["name"]: volume for volume in pod_spec(job)["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    get(objects, "PersistentVolumeClaim", claim)


def test_reindex_job_never_starts_on_apply(objects):
    job = get(objects, "Job", "reindex")
    assert command_line(the_container(job))[:2] == ["migrate", "reindex"]
    assert job["spec"]["suspend"] is True, "`kubectl apply -k` must not start a re-index"


def test_finetune_job_never_starts_on_apply_and_asks_for_a_gpu(objects):
    job = get(objects, "Job", "finetune")
    container = the_container(job)
    assert command_line(container)[:2] == ["migrate", "finetune"]
    assert job["spec"]["suspend"] is True, "`kubectl apply -k` must not start a fine-tuning run"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].startswith("embedding-fleet/trainer:")


# -- every container ----------------------------------------------------------------------------


def test_every_image_is_pinned(rendered):
    for where, container in all_containers(rendered):
        image = container["image"]
        if image.startswith("embedding-fleet/"):
            assert image in OUR_IMAGES, f"{where}: {image} is not this release's image"
            continue
        tag = image.rpartition("/")[2].partition(":")[2]
        pinned = "@sha256:" in image or (tag != "latest" and re.search(r"\d", tag))
        assert pinned, f"{where}: {image} is not pinned to a version tag"


def test_every_container_requests_cpu_and_memory(rendered):
    for where, container in all_containers(rendered):
        resources = container.get("resources", {})
        requests = resources.get("requests", {})
        assert {"cpu", "memory"} <= set(requests), f"{where} requests no cpu or no memory"
        assert "memory" in resources.get("limits", {}), f"{where} has no memory limit"


def test_every_pod_runs_unprivileged(rendered):
    for obj in workloads(rendered):
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, f"{where} needs no Kubernetes API token"
        for container in containers(spec):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert "ALL" in context["capabilities"]["drop"], where


# -- secrets ------------------------------------------------------------------------------------


def test_no_secret_is_written_in_the_manifests(rendered, objects):
    assert not [obj for obj in rendered if obj["kind"] == "Secret"], "the user creates fleet-secrets (README)"
    for text in strings(rendered):
        assert not CREDENTIAL_URL.search(text), f"a URL with a password in the manifests: {text!r}"
        assert not re.search(r"requirepass\s+(?!\$)", text), f"a literal Redis password: {text!r}"
    for key, value in config_map(objects).items():
        assert key not in SECRET_SETTINGS and not SECRET_NAME.search(key), f"{key} belongs in the Secret"
        assert not CREDENTIAL_URL.search(value), f"{key} in the ConfigMap carries a password"


def test_secret_settings_come_only_from_the_secret(rendered):
    documented = documented_secret_keys()
    optional_keys = set()
    for where, container in all_containers(rendered):
        for name, entry in env_of(container).items():
            if name in SECRET_SETTINGS or SECRET_NAME.search(name):
                assert "value" not in entry, f"{where}: {name} is written in plain text"
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["name"] == SECRET, f"{where}: {name} from Secret {ref['name']}, not {SECRET}"
                if ref.get("optional"):
                    optional_keys.add(ref["key"])
                else:
                    # A key missing from the documented command leaves the pod in CreateContainerConfigError.
                    assert ref["key"] in documented, f"{where}: key {ref['key']} is not in the README's command"
            elif "value" in entry:
                assert not CREDENTIAL_URL.search(str(entry["value"])), f"{where}: {name} carries a password"
        for source in container.get("envFrom", []):
            assert "secretRef" not in source or source["secretRef"]["name"] == SECRET, where
    readme = K8S_README.read_text(encoding="utf-8")
    for key in optional_keys:
        assert f"--from-literal={key}=" in readme, f"ops/k8s/README.md does not say how to set {key}"


def test_fleet_settings_are_known_to_the_application(rendered, objects):
    """A misspelt FLEET_* name would be silently ignored by the settings parser."""
    known = {f"FLEET_{name.upper()}" for name in FleetSettings.model_fields}
    names = set(config_map(objects))
    for _, container in all_containers(rendered):
        names |= set(env_of(container))
    unknown = {name for name in names if name.startswith("FLEET_")} - known
    assert not unknown, f"not settings of the application: {sorted(unknown)}"


# -- components ---------------------------------------------------------------------------------


def test_components_render_valid_overlays(rendered, tmp_path):
    """The documented components: a shared model cache, and Postgres run by an operator."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # kustomize refuses absolute paths: reach the repository from the scratch folder.
    components = [os.path.relpath(COMPONENTS / name, overlay) for name in ("shared-model-cache", "external-postgres")]
    kustomization = {"resources": [os.path.relpath(K8S, overlay)], "components": components}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    result = kustomize(overlay)
    for obj in result:
        if not obj["apiVersion"].startswith(KEDA_GROUP):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    index = {(obj["kind"], obj["metadata"]["name"]): obj for obj in result}
    assert not [key for key in index if key[1] == "postgres"], "external-postgres leaves the trial Postgres"
    claim = index[("PersistentVolumeClaim", "models")]
    assert claim["metadata"]["namespace"] == NAMESPACE
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for key in [("Deployment", "worker"), ("Deployment", "api"), ("Job", "ingest"), ("Job", "reindex")]:
        volumes = {volume["name"]: volume for volume in pod_spec(index[key])["volumes"]}
        assert volumes["models"] == {"name": "models", "persistentVolumeClaim": {"claimName": "models"}}, key


def test_readme_reindex_overlay_creates_only_a_running_reindex_job(objects, tmp_path):
    """The README's re-index overlay, applied with `-l app.kubernetes.io/name=reindex`."""
    readme = K8S_README.read_text(encoding="utf-8")
    block = re.search(r"<!-- test_k8s: reindex overlay -->\n```yaml\n(.*?)```", readme, re.DOTALL)
    assert block, "ops/k8s/README.md lost its re-index overlay (marked `<!-- test_k8s: reindex overlay -->`)"
    overlay = tmp_path / "reindex"
    overlay.mkdir()
    text = block[1].replace("../../ops/k8s", os.path.relpath(K8S, overlay))
    (overlay / "kustomization.yaml").write_text(text, encoding="utf-8")
    shutil.copy(REPO / "ops" / "sample-eval.jsonl", overlay / "eval.jsonl")
    selected = [
        obj
        for obj in kustomize(overlay)
        if obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "reindex"
    ]
    by_kind = {obj["kind"]: obj for obj in selected}
    assert sorted(obj["kind"] for obj in selected) == ["ConfigMap", "Job"], "`-l` must select the Job and its queries"
    job = by_kind["Job"]
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    assert job["metadata"]["name"] != "reindex", "the base's suspended template must stay as it is"
    assert job["spec"]["suspend"] is False
    container = the_container(job)
    line = command_line(container)
    assert line[:2] == ["migrate", "reindex"] and "--dry-run" not in line
    # The queries file is the generated ConfigMap, mounted where --eval reads it.
    eval_path = Path(line[line.index("--eval") + 1])
    [mount] = [mount for mount in container["volumeMounts"] if mount["mountPath"] == str(eval_path.parent)]
    volumes = {volume["name"]: volume for volume in pod_spec(job)["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert eval_path.name in by_kind["ConfigMap"]["data"]
    # The settings it uses are the ConfigMap the base already applied (same name, same hash).
    base_config = next(name for kind, name in objects if kind == "ConfigMap" and name.startswith("fleet-config"))
    assert container["envFrom"] == [{"configMapRef": {"name": base_config}}]


def test_the_alert_rules_are_shipped_as_they_are_in_ops_prometheus(objects):
    rules = objects[("ConfigMap", "fleet-alert-rules")]
    alerts = REPO / "ops" / "prometheus" / "alerts.yml"
    assert rules["data"] == {"alerts.yml": alerts.read_text(encoding="utf-8")}
    assert rules["metadata"]["namespace"] == NAMESPACE
