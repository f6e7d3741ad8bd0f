"""The Helm chart, rendered and linted by Helm's Go SDK, validated against Kubernetes schemas."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from nearline.foundation.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "nearline"
PRODUCTION_VALUES = Path(__file__).with_name("helm_values_production.yaml")
RELEASE = "demo"
NAMESPACE = "recs"
#: The newest Kubernetes version the installed kubernetes-validate has schemas for.
KUBE_VERSION = kubernetes_validate.latest_version()

Manifest = dict[str, Any]

#: The single-container layout: the worker answers the API itself (no `nearline serve`).
SINGLE = {"serving": {"processes": 0}}
#: What only the layout with serving processes sets, on both containers.
SERVING_ENV = {"NEARLINE_SERVE_PROCESSES", "NEARLINE_WORKER_PORT"}

#: Variables that carry credentials: they may only come from a Secret.
SENSITIVE_ENV = {
    "NEARLINE_KAFKA_SASL_PASSWORD",
    "NEARLINE_AEROSPIKE_USER",
    "NEARLINE_AEROSPIKE_PASSWORD",
    "NEARLINE_API_TOKEN",
}


def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return values


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[Manifest]:
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def only(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[m['metadata']['name'] for m in found]}"
    return found[0]


def containers_of(manifests: list[Manifest]) -> dict[str, Manifest]:
    """The pod's containers by name: the worker first, then `nearline serve` if any."""
    containers = only(manifests, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    names = [c["name"] for c in containers]
    assert names in (["nearline"], ["nearline", "serve"]), names
    return {c["name"]: c for c in containers}


def worker_container(manifests: list[Manifest]) -> Manifest:
    return containers_of(manifests)["nearline"]


def serve_container(manifests: list[Manifest]) -> Manifest:
    containers = containers_of(manifests)
    assert "serve" in containers, "no serve container"
    return containers["serve"]


def probe_target(container: Manifest, probe: str) -> tuple[str, int]:
    """(path, port number) a container's HTTP probe hits; a named port resolved in it."""
    get = container[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = {p["name"]: p["containerPort"] for p in container["ports"]}[port]
    return get["path"], port


def env_of(container: Manifest) -> dict[str, Manifest]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e for e in container["env"]}


def is_subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module", params=["default", "production", "single"])
def manifests(request: pytest.FixtureRequest, chart: helm.Chart) -> list[Manifest]:
    """Default values (serving processes), production values, and the single-container layout."""
    values = {"default": None, "production": production_values(), "single": SINGLE}
    return render(chart, values[request.param])


@pytest.fixture(scope="module")
def production(chart: helm.Chart) -> list[Manifest]:
    return render(chart, production_values())


# --- lint and Kubernetes schemas ------------------------------------------------------


@pytest.mark.parametrize("values", [None, "production", "single"])
def test_lint_reports_no_errors_or_warnings(values: str | None) -> None:
    report = helm.lint(
        CHART,
        {None: None, "production": production_values(), "single": SINGLE}[values],
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_kube_version_is_current() -> None:
    major, minor = (int(part) for part in KUBE_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 33)


def test_every_manifest_validates_strictly(manifests: list[Manifest]) -> None:
    validated = []
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            # A Prometheus Operator CRD: kubernetes-validate has no schema for it (checked
            # structurally in test_service_monitor_scrapes_every_worker).
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
            continue
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        validated.append(manifest["kind"])
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "ServiceAccount"} <= set(validated)


def test_strict_validation_catches_a_misspelt_field(production: list[Manifest]) -> None:
    broken = copy.deepcopy(only(production, "StatefulSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_production_renders_every_optional_object(production: list[Manifest]) -> None:
    kinds = sorted(m["kind"] for m in production)
    assert kinds == sorted(
        [
            "CronJob",
            "HorizontalPodAutoscaler",
            "Job",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "StatefulSet",
        ]
    )


# --- the worker pod ----------------------------------------------------------------------


def test_worker_runs_the_worker_command_in_production_profile(manifests: list[Manifest]) -> None:
    container = worker_container(manifests)
    assert container["image"] == "ghcr.io/nearline/nearline:0.1.0"
    assert container["args"] == ["worker"]
    assert "command" not in container  # the image's ENTRYPOINT is `nearline`
    env = env_of(container)
    assert env["NEARLINE_PROFILE"]["value"] == "production"
    assert env["NEARLINE_WEB_HOST"]["value"] == "0.0.0.0"


def test_image_tag_defaults_to_app_version(chart: helm.Chart) -> None:
    assert chart.metadata["appVersion"] == "0.1.0"
    pinned = render(chart, {"image": {"tag": "1.2.3"}})
    assert worker_container(pinned)["image"] == "ghcr.io/nearline/nearline:1.2.3"


def test_state_volume_is_mounted_at_the_data_dir(manifests: list[Manifest]) -> None:
    statefulset = only(manifests, "StatefulSet")
    container = worker_container(manifests)
    data_dir = env_of(container)["NEARLINE_DATA_DIR"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == data_dir == "/var/lib/nearline"
    for other in containers_of(manifests).values():  # serving processes read the same files
        assert other["volumeMounts"] == container["volumeMounts"]
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod_volumes = [v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]]
    assert "data" not in pod_volumes  # the claim template provides it


def test_production_claims_use_the_storage_class(production: list[Manifest]) -> None:
    claim = only(production, "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == "50Gi"


def test_data_dir_moves_mount_and_env_together(chart: helm.Chart) -> None:
    container = worker_container(render(chart, {"nearline": {"dataDir": "/state"}}))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == env_of(container)["NEARLINE_DATA_DIR"]["value"] == "/state"


def test_without_persistence_the_data_dir_is_an_empty_dir(chart: helm.Chart) -> None:
    statefulset = only(render(chart, {"persistence": {"enabled": False}}), "StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_single_layout_probes_hit_health_paths_on_the_web_port(chart: helm.Chart) -> None:
    manifests = render(chart, SINGLE)
    container = worker_container(manifests)
    assert list(containers_of(manifests)) == ["nearline"]
    env = env_of(container)
    web_port = int(env["NEARLINE_WEB_PORT"]["value"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": web_port}
    assert probe_target(container, "livenessProbe") == ("/healthz", web_port)
    assert probe_target(container, "readinessProbe") == ("/readyz", web_port)
    # /healthz turns red on a stalled partition after the configured time.
    assert env["NEARLINE_STALL_TIMEOUT"]["value"] == "30s"
    # The worker binds the web port itself: nothing tells it to leave it to `nearline serve`.
    assert SERVING_ENV.isdisjoint(env)


@pytest.mark.parametrize("values", [None, "production"])
def test_serving_layout_runs_the_worker_and_serve_containers(
    chart: helm.Chart, values: str | None
) -> None:
    manifests = render(chart, production_values() if values else None)
    worker, serve = worker_container(manifests), serve_container(manifests)
    assert (worker["args"], serve["args"]) == (["worker"], ["serve"])
    assert "command" not in serve  # the image's ENTRYPOINT is `nearline`
    # One env, one set of mounts, one image: the serving processes must read the worker's
    # data dir with its settings.
    for key in ("image", "imagePullPolicy", "securityContext", "env", "volumeMounts"):
        assert serve[key] == worker[key], key
    assert serve.get("envFrom") == worker.get("envFrom")
    env = env_of(serve)
    assert env["NEARLINE_SERVE_PROCESSES"]["value"] == "2"
    web_port = int(env["NEARLINE_WEB_PORT"]["value"])
    worker_port = int(env["NEARLINE_WORKER_PORT"]["value"])
    assert (web_port, worker_port) == (8080, 8081)
    # One network namespace: each port belongs to one container.
    assert {p["name"]: p["containerPort"] for p in serve["ports"]} == {"http": web_port}
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {"worker": worker_port}


def test_serving_layout_probes_watch_each_process(chart: helm.Chart) -> None:
    manifests = render(chart, {"startupProbe": {"enabled": True}})
    worker, serve = worker_container(manifests), serve_container(manifests)
    env = env_of(worker)
    web_port = int(env["NEARLINE_WEB_PORT"]["value"])
    worker_port = int(env["NEARLINE_WORKER_PORT"]["value"])
    # The public port: readiness mirrors the worker's; liveness is the serving process's own.
    assert probe_target(serve, "readinessProbe") == ("/readyz", web_port)
    assert probe_target(serve, "livenessProbe") == ("/healthz", web_port)
    # The worker's stall detector on its own port; its readiness is the serve container's.
    assert probe_target(worker, "livenessProbe") == ("/healthz", worker_port)
    assert probe_target(worker, "startupProbe") == ("/healthz", worker_port)
    assert "readinessProbe" not in worker
    assert "startupProbe" not in serve
    assert serve["livenessProbe"]["failureThreshold"] == 6


def test_serving_processes_and_resources_reach_the_serve_container(chart: helm.Chart) -> None:
    resources = {"requests": {"cpu": "3", "memory": "3Gi"}, "limits": {"memory": "5Gi"}}
    manifests = render(chart, {"serving": {"processes": 3, "resources": resources}})
    serve = serve_container(manifests)
    assert serve["resources"] == resources
    assert worker_container(manifests)["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    for container in containers_of(manifests).values():
        assert env_of(container)["NEARLINE_SERVE_PROCESSES"]["value"] == "3"


def test_both_layouts_share_every_other_variable(chart: helm.Chart) -> None:
    """The env is one template: the layouts differ only in the serving variables."""
    single = worker_container(render(chart, SINGLE))["env"]
    serving = serve_container(render(chart))["env"]
    assert [e for e in serving if e["name"] not in SERVING_ENV] == single


def test_changing_the_port_moves_probes_services_and_url(chart: helm.Chart) -> None:
    for values, container_of in ((SINGLE, worker_container), ({}, serve_container)):
        manifests = render(chart, {**values, "containerPorts": {"http": 9000, "worker": 9001}})
        container = container_of(manifests)
        env = env_of(container)
        assert env["NEARLINE_WEB_PORT"]["value"] == "9000"
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 9000}
        assert probe_target(container, "readinessProbe") == ("/readyz", 9000)
        assert env["NEARLINE_ADVERTISED_URL"]["value"].endswith(":9000")
        for service in (m for m in manifests if m["kind"] == "Service"):
            assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    worker = worker_container(manifests)  # the serving layout's
    assert env_of(worker)["NEARLINE_WORKER_PORT"]["value"] == "9001"
    assert probe_target(worker, "livenessProbe") == ("/healthz", 9001)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"containerPorts": {"http": 8080, "worker": 8080}},
            r"containerPorts\.worker \(8080\) must differ from containerPorts\.http",
        ),
        (
            {
                "autoscaling": {"hpa": {"enabled": True}},
                "serving": {"resources": {"requests": {"cpu": None}}},  # null drops a default
            },
            r"serving\.resources\.requests\.cpu is required",
        ),
    ],
)
def test_serving_layout_refuses_what_cannot_run(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_single_layout_may_reuse_the_worker_port(chart: helm.Chart) -> None:
    # Without serving processes the worker port is unused, so it may equal the web port.
    manifests = render(chart, {**SINGLE, "containerPorts": {"http": 8080, "worker": 8080}})
    assert list(containers_of(manifests)) == ["nearline"]


@pytest.mark.parametrize("processes", [-1, 65])
def test_schema_bounds_the_serving_processes(chart: helm.Chart, processes: int) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"serving": {"processes": processes}})


def test_advertised_url_is_the_pods_headless_dns_name(manifests: list[Manifest]) -> None:
    statefulset = only(manifests, "StatefulSet")
    headless = [
        m for m in manifests if m["kind"] == "Service" and m["spec"].get("clusterIP") == "None"
    ]
    assert len(headless) == 1
    headless_name = headless[0]["metadata"]["name"]
    assert statefulset["spec"]["serviceName"] == headless_name == f"{RELEASE}-nearline-headless"
    assert headless[0]["spec"]["publishNotReadyAddresses"] is True

    container = worker_container(manifests)
    names = [e["name"] for e in container["env"]]
    # $(POD_NAME) only expands when POD_NAME is defined earlier in the list.
    assert names.index("POD_NAME") < names.index("NEARLINE_ADVERTISED_URL")
    env = env_of(container)
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    port = env["NEARLINE_WEB_PORT"]["value"]
    assert env["NEARLINE_ADVERTISED_URL"]["value"] == (
        f"http://$(POD_NAME).{headless_name}.{NAMESPACE}.svc.cluster.local:{port}"
    )


def test_configuration_reaches_the_env(production: list[Manifest]) -> None:
    env = env_of(worker_container(production))
    values = {name: var.get("value") for name, var in env.items()}
    assert values["NEARLINE_APP_ID"] == "nearline-prod"
    assert values["NEARLINE_BROKER_URL"] == "kafka://prod-kafka-bootstrap.kafka.svc:9093"
    assert values["NEARLINE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert values["NEARLINE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert values["NEARLINE_KAFKA_SASL_USERNAME"] == "nearline"
    assert values["NEARLINE_TOPIC_PARTITIONS"] == "12"
    assert values["NEARLINE_TOPIC_REPLICATION"] == "3"
    assert values["NEARLINE_STANDBY_REPLICAS"] == "1"
    assert values["NEARLINE_ATTRIBUTE_STORE"] == "aerospike"
    assert values["NEARLINE_AEROSPIKE_HOSTS"] == ",".join(
        f"aerospike-{i}.aerospike.aerospike.svc:3000" for i in range(3)
    )
    assert values["NEARLINE_ACTIONS_OF_INTEREST"] == "view,click,apply,save,dismiss"
    assert values["NEARLINE_WINDOWS"] == "1h,24h,96h"
    assert values["NEARLINE_RETENTION"] == "96h"
    assert values["NEARLINE_MODEL_DIR"] == "/var/lib/nearline/models"
    assert values["NEARLINE_TORCH_THREADS"] == "2"


def test_every_nearline_variable_is_a_setting_the_app_accepts(manifests: list[Manifest]) -> None:
    """Each container's rendered env, with secrets filled in, loads into the app's one
    settings object (which refuses a worker port equal to the web port with serving on)."""
    for container in containers_of(manifests).values():
        check_settings(env_of(container))


def check_settings(env: dict[str, Manifest]) -> None:
    fields = {f"NEARLINE_{name.upper()}" for name in Settings.model_fields}
    nearline_vars = {name for name in env if name.startswith("NEARLINE_")}
    assert nearline_vars <= fields, (
        f"unknown to nearline.foundation.settings: {sorted(nearline_vars - fields)}"
    )

    overrides: dict[str, Any] = {}
    for name in nearline_vars:
        var = env[name]
        value = var["value"] if "value" in var else f"secret-from-{name.lower()}"
        overrides[name.removeprefix("NEARLINE_").lower()] = value.replace(
            "$(POD_NAME)", "demo-nearline-0"
        )
    settings = load_settings(**overrides)
    assert settings.profile.value == "production"
    assert str(settings.data_dir) == env["NEARLINE_DATA_DIR"]["value"]
    assert settings.web_url.startswith("http://demo-nearline-0.demo-nearline-headless.recs.svc.")
    serving = env.get("NEARLINE_SERVE_PROCESSES", {"value": "0"})["value"]
    assert settings.serve_processes == int(serving)


# --- secrets ---------------------------------------------------------------------------


def test_no_secret_objects_and_credentials_come_from_secret_refs(
    production: list[Manifest],
) -> None:
    assert [m for m in production if m["kind"] == "Secret"] == []
    expected = {
        "NEARLINE_KAFKA_SASL_PASSWORD": ("nearline-kafka-user", "password"),
        "NEARLINE_AEROSPIKE_USER": ("nearline-aerospike", "username"),
        "NEARLINE_AEROSPIKE_PASSWORD": ("nearline-aerospike", "password"),
        "NEARLINE_API_TOKEN": ("nearline-api", "token"),
    }
    containers = list(containers_of(production).values())
    assert len(containers) == 2  # the worker and `nearline serve`
    containers += only(production, "Job")["spec"]["template"]["spec"]["containers"]
    for container in containers:
        for name, var in env_of(container).items():
            if name in SENSITIVE_ENV:
                assert "value" not in var, f"{name} carries a plain value"
                ref = var["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == expected[name]
    assert SENSITIVE_ENV <= set(env_of(worker_container(production)))
    assert SENSITIVE_ENV <= set(env_of(serve_container(production)))


def test_default_values_render_no_secret_objects(chart: helm.Chart) -> None:
    manifests = render(chart)
    assert [m for m in manifests if m["kind"] == "Secret"] == []
    env = env_of(worker_container(manifests))
    assert SENSITIVE_ENV.isdisjoint(env)  # nothing configured, nothing invented


@pytest.mark.parametrize(
    "values",
    [
        {"kafka": {"sasl": {"password": "hunter2"}}},
        {"aerospike": {"auth": {"password": "hunter2"}}},
        {"nearline": {"apiToken": {"value": "hunter2"}}},
    ],
)
def test_plain_secret_values_are_rejected(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="additional propert"):
        render(chart, values)


def test_sasl_without_a_password_secret_fails(chart: helm.Chart) -> None:
    values = {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"username": "nearline"}}}
    with pytest.raises(helm.HelmRenderError, match=r"kafka\.sasl\.existingSecret .* is required"):
        render(chart, values)


def test_kafka_tls_files_are_mounted_from_secrets(chart: helm.Chart) -> None:
    values = production_values()
    values["kafka"]["tls"]["client"] = {
        "existingSecret": "nearline-kafka-tls-user",
        "certKey": "user.crt",
        "keyKey": "user.key",
    }
    manifests = render(chart, values)
    statefulset = only(manifests, "StatefulSet")
    container = worker_container(manifests)
    env = env_of(container)
    mount = {m["name"]: m for m in container["volumeMounts"]}["kafka-tls"]
    assert mount["readOnly"] is True
    root = mount["mountPath"]
    assert env["NEARLINE_KAFKA_SSL_CAFILE"]["value"] == f"{root}/ca.crt"
    assert env["NEARLINE_KAFKA_SSL_CERTFILE"]["value"] == f"{root}/client.crt"
    assert env["NEARLINE_KAFKA_SSL_KEYFILE"]["value"] == f"{root}/client.key"
    volume = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}["kafka-tls"]
    sources = {s["secret"]["name"]: s["secret"]["items"] for s in volume["projected"]["sources"]}
    assert sources == {
        "prod-kafka-cluster-ca-cert": [{"key": "ca.crt", "path": "ca.crt"}],
        "nearline-kafka-tls-user": [
            {"key": "user.crt", "path": "client.crt"},
            {"key": "user.key", "path": "client.key"},
        ],
    }
    for manifest in manifests:
        if manifest["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


# --- scaling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"replicaCount": 13, "kafka": {"topics": {"partitions": 12}}},
            r"replicaCount \(13\) must not exceed kafka\.topics\.partitions \(12\)",
        ),
        (
            {
                "replicaCount": 4,
                "kafka": {"topics": {"partitions": 12}},
                "autoscaling": {"hpa": {"enabled": True, "minReplicas": 4, "maxReplicas": 16}},
            },
            r"autoscaling\.hpa\.maxReplicas \(16\) must not exceed "
            r"kafka\.topics\.partitions \(12\)",
        ),
    ],
)
def test_more_workers_than_partitions_fails_rendering(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_as_many_workers_as_partitions_renders(chart: helm.Chart) -> None:
    manifests = render(chart, {"replicaCount": 12, "kafka": {"topics": {"partitions": 12}}})
    assert only(manifests, "StatefulSet")["spec"]["replicas"] == 12


def test_hpa_scales_the_statefulset_up_to_the_partitions(production: list[Manifest]) -> None:
    hpa = only(production, "HorizontalPodAutoscaler")
    statefulset = only(production, "StatefulSet")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": statefulset["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (6, 12)
    # With an HPA the StatefulSet leaves replicas to it (else every upgrade resets them).
    assert "replicas" not in statefulset["spec"]


def test_default_workers_fixed_and_disruption_budget(chart: helm.Chart) -> None:
    manifests = render(chart)
    assert only(manifests, "StatefulSet")["spec"]["replicas"] == 3
    assert not [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"]
    assert only(manifests, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


# --- labels and selectors ----------------------------------------------------------------


def test_selectors_match_the_worker_pods(manifests: list[Manifest]) -> None:
    statefulset = only(manifests, "StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    selector = statefulset["spec"]["selector"]["matchLabels"]
    assert is_subset(selector, pod_labels)
    assert set(selector) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    services = [m for m in manifests if m["kind"] == "Service"]
    assert len(services) == 2
    for service in services:
        assert service["spec"]["selector"] == selector
        assert is_subset(service["spec"]["selector"], pod_labels)
    assert only(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    anti = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [
        t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]
    ]
    assert all(t["labelSelector"]["matchLabels"] == selector for t in terms)


def test_topic_job_pods_are_not_workers(production: list[Manifest]) -> None:
    selector = only(production, "StatefulSet")["spec"]["selector"]["matchLabels"]
    job_labels = only(production, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not is_subset(selector, job_labels)


def test_service_monitor_scrapes_every_worker(production: list[Manifest]) -> None:
    monitor = only(production, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    services = [
        s
        for s in production
        if s["kind"] == "Service"
        and is_subset(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["spec"].get("clusterIP") for s in services] == ["None"]  # the headless one only
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert "http" in port_names


# --- topic Job -----------------------------------------------------------------------------


def test_topic_job_is_a_hook_creating_the_topics(production: list[Manifest]) -> None:
    job = only(production, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == worker_container(production)["image"]
    assert container["command"] == ["python"]
    script = container["args"][1]
    assert container["args"][0] == "-c"
    assert script.strip() == (CHART / "files" / "create_topics.py").read_text().strip()
    compile(script, "create_topics.py", "exec")

    env = env_of(container)
    spec = {t["name"]: t for t in json.loads(env["TOPICS_SPEC"]["value"])}
    repartition = "nearline-prod-member-actions-repartition"  # <appId>-<actions>-repartition
    assert list(spec) == [
        "member-actions",
        repartition,
        "member-actions.dlq",
        "item-attributes",
        "recommendations-log",
        "training-examples",
        "member-erasures",
    ]
    assert spec["member-actions"]["partitions"] == 12
    assert spec["member-actions"]["copartitioned"] is True
    assert spec["member-actions"]["config"] == {"retention.ms": "432000000"}
    # Internal and co-partitioned with the actions, as the workers' own `ensure_topics` makes it.
    assert spec[repartition]["partitions"] == 12 and spec[repartition]["copartitioned"] is True
    assert spec[repartition]["config"] == {
        "retention.ms": "432000000",
        "message.timestamp.type": "CreateTime",
    }
    assert spec["item-attributes"]["config"] == {"cleanup.policy": "compact"}
    # Compacted and co-partitioned with the actions: an erasure is on its member's partition.
    assert spec["member-erasures"]["config"] == {"cleanup.policy": "compact"}
    assert spec["member-erasures"]["partitions"] == 12
    assert spec["member-erasures"]["copartitioned"] is True
    assert spec["member-actions.dlq"]["partitions"] == 1
    assert {t["replication"] for t in spec.values()} == {3}
    # The Job connects exactly like the workers do.
    worker_env = env_of(worker_container(production))
    for name in (
        "NEARLINE_BROKER_URL",
        "NEARLINE_KAFKA_SECURITY_PROTOCOL",
        "NEARLINE_KAFKA_SSL_CAFILE",
    ):
        assert env[name] == worker_env[name]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/nearline/tls/kafka"}


# --- NOTES ---------------------------------------------------------------------------------


def test_notes_explain_how_to_reach_the_api(chart: helm.Chart) -> None:
    notes = chart.render(production_values(), name=RELEASE, namespace=NAMESPACE)[
        "nearline/templates/NOTES.txt"
    ]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-nearline 8080:8080" in notes
    assert "/v1/members/<member-id>/features" in notes
    assert re.search(r"-d '\{.*\}'.*\n.*/v1/recommendations", notes)
    assert "Authorization: Bearer" in notes
    assert "nearline-api" in notes
    # The default layout names its two containers, so `kubectl logs -c` can pick one.
    assert "logs <pod> -c serve" in notes and "port 8081" in notes


def test_single_layout_notes_mention_no_serve_container(chart: helm.Chart) -> None:
    notes = chart.render(SINGLE, name=RELEASE, namespace=NAMESPACE)["nearline/templates/NOTES.txt"]
    assert "port-forward svc/" in notes
    assert "-c serve" not in notes


# --- documentation -------------------------------------------------------------------------


def _documented_paths(values: Any, prefix: str = "") -> Iterator[str]:
    """Leaf paths of the values, stopping at free-form maps and lists (documented as a whole)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not path.endswith(("config", "resources")):
            if path in {"affinity", "nodeSelector", "autoscaling.hpa.behavior"}:
                yield path
            else:
                yield from _documented_paths(value, f"{path}.")
        else:
            yield path


def test_every_value_is_documented_and_in_the_schema(chart: helm.Chart) -> None:
    text = (CHART / "values.yaml").read_text()
    params = set(re.findall(r"^\s*## @param (\S+) ", text, flags=re.MULTILINE))
    paths = set(_documented_paths(chart.values))
    assert paths - params == set()
    assert params - paths == set()  # no documentation for a value that is gone
    schema = chart.schema
    assert schema is not None
    assert set(chart.values) <= set(schema["properties"])


# --- the scheduled trainer ----------------------------------------------------------------


def test_the_trainer_runs_on_a_schedule_against_the_workers_model_directory(
    production: list[Manifest],
) -> None:
    cronjob = only(production, "CronJob")
    assert cronjob["spec"]["schedule"] == "0 3 * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert trainer["args"] == ["trainer", "--max-epochs", "30", "--canary", "0.1"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": "nearline-models"}
    model_dir = "/var/lib/nearline/models"
    assert {"name": "models", "mountPath": model_dir} in trainer["volumeMounts"]
    # The trainer trains on the features the workers compute and reaches the same Kafka.
    worker = worker_container(production)
    assert env_of(trainer)["NEARLINE_MODEL_DIR"]["value"] == model_dir
    for name in (
        "NEARLINE_WINDOWS",
        "NEARLINE_ACTIONS_OF_INTEREST",
        "NEARLINE_KAFKA_SASL_PASSWORD",
    ):
        assert env_of(trainer)[name] == env_of(worker)[name]
    # Every worker serves from the same claim, mounted where the trainer writes.
    statefulset = only(production, "StatefulSet")["spec"]["template"]["spec"]
    assert {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "nearline-models"},
    } in statefulset["volumes"]
    for container in statefulset["containers"]:
        assert {"name": "models", "mountPath": model_dir} in container["volumeMounts"]


def test_without_a_canary_the_trainer_publishes_to_everyone(chart: helm.Chart) -> None:
    values = production_values()
    values["trainer"]["canary"] = 0
    pod = only(render(chart, values), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["trainer", "--max-epochs", "30"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"trainer": {"enabled": True}, "nearline": {"modelDir": "/models"}},
            r"models\.existingClaim .* is required",
        ),
        ({"models": {"existingClaim": "models"}}, r"nearline\.modelDir is required"),
    ],
)
def test_the_trainer_refuses_a_model_directory_the_workers_do_not_share(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)
