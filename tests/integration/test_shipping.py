"""What ships beside the code (conf/, Dockerfile, docker-compose.yml, Kubernetes manifests), checked
with the real tool where this machine has one (check-config, fluent-bit, docker-compose), read
otherwise; and the demo's sink config run outside a container against moto, fed as the demo does."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from securitylake_sink.config import load_config
from securitylake_sink.forward_client import ForwardClient
from securitylake_sink.setup_helpers import EXTERNAL_ID_PLACEHOLDER, iam_policies
from tests.integration.s3_harness import (
    MotoServer,
    aws_client,
    s3_client,
    use_aws_env,
    wait_until,
)
from tests.integration.sinkproc import BIN as SINK_BIN
from tests.integration.sinkproc import SinkProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
DEMO = CONF / "demo"
FLUENT_BIT = shutil.which("fluent-bit")
DOCKER_COMPOSE = shutil.which("docker-compose")
needs_fluent_bit = pytest.mark.skipif(FLUENT_BIT is None, reason="no fluent-bit binary on PATH")

# ${VAR} without a default must be set for a config to load; these values pass every rule.
DUMMY_ENV = {
    "LAKE_BUCKET": "aws-security-data-lake-eu-west-1-0a1b2c3d",
    "ROLE_ARN": "arn:aws:iam::111122223333:role/SynqlyAccess-shipping",
    "EXTERNAL_ID": "ShippingExtId-0042",
    "LAKE_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "LAKE_SECRET_ACCESS_KEY": "ShippingSecretKeyValue0042",
    "SINK_HOST": "sink.example.internal",
    "SINK_SHARED_KEY": "shipping-shared-key",
    "SINK_HTTP_TOKEN": "shipping-http-token",
    "HOSTNAME": "fluent-bit.example.internal",
}
SECRETS = ("ShippingExtId-0042", "ShippingSecretKeyValue0042")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # no :-default
SINK_CONTAINER = "securitylake-sink"
SPOOL_DIR = "/var/lib/securitylake-sink"
CONFIG_DIR = "/etc/securitylake-sink"


def hermetic_env(**extra: str) -> dict[str, str]:
    """This environment without AWS or sink settings that could change what a config resolves to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SINK_", "LAKE_"))}
    env.update(extra)
    return env


def configmap_files(manifest: Path) -> dict[str, str]:
    """The data files of every ConfigMap in a manifest."""
    files: dict[str, str] = {}
    for doc in yaml.safe_load_all(manifest.read_text(encoding="utf-8")):
        if doc and doc.get("kind") == "ConfigMap":
            files.update(doc["data"])
    return files


def env_refs(config: Path | str) -> set[str]:
    """The ${VAR}s without a default in a config's values (its comments do not count); a file or
    the YAML text."""

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    text = config.read_text(encoding="utf-8") if isinstance(config, Path) else config
    return {name for value in strings(yaml.safe_load(text)) for name in ENV_REF.findall(value)}


def sink_configs(tmp: Path) -> list[Path]:
    """Every sink config shipped: conf/sink/, the demo's and the ones inside the Kubernetes manifests."""
    configs = [*sorted((CONF / "sink").glob("*.yaml")), DEMO / "sink.yaml"]
    for manifest in sorted((CONF / "kubernetes").glob("*.yaml")):
        path = tmp / f"{manifest.stem}-config.yaml"
        path.write_text(configmap_files(manifest)["config.yaml"], encoding="utf-8")
        configs.append(path)
    return configs


# ------------------------------------------------------------------------------ sink configs


def test_every_sink_config_passes_check_config(tmp_path: Path) -> None:
    configs = sink_configs(tmp_path)
    assert len(configs) >= 7
    for config in configs:
        needed = env_refs(config)
        assert needed <= set(DUMMY_ENV), f"{config.name} needs {needed - set(DUMMY_ENV)}: add a dummy"
        env = hermetic_env(**{name: DUMMY_ENV[name] for name in needed})
        done = subprocess.run(
            [str(SINK_BIN), "check-config", "-c", str(config), "--json"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{config}: {done.stderr}"
        plan = json.loads(done.stdout)
        assert plan["destination"]["sources"], config
        for secret in SECRETS:
            assert secret not in done.stdout + done.stderr, f"{config.name} printed a secret"


def test_reference_config_names_every_option() -> None:
    """Every option of config.py appears in reference.yaml (active or commented out) in its group."""
    from pydantic import BaseModel

    from securitylake_sink.config import Config

    def leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        for name, field in model.model_fields.items():
            nested = [
                a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]  # fmt: skip
            nested += [
                b for a in getattr(field.annotation, "__args__", ()) for b in getattr(a, "__args__", ())
                if isinstance(b, type) and issubclass(b, BaseModel)
            ]  # fmt: skip
            yield (*prefix, name)
            if nested:
                yield from leaves(nested[0], (*prefix, name))

    # Each key line, commented or not, with its depth: "  # tls:" and "    #   cert_file:" count.
    keys: list[tuple[int, str]] = []
    for line in (CONF / "sink" / "reference.yaml").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\s*)(#(\s*))?(- )?([a-z_]+):(\s|$)", line)
        if match:
            indent = len(match[1]) + (len(match[3]) - 1 if match[2] else 0) + len(match[4] or "")
            keys.append((indent, match[5]))

    def present(path: tuple[str, ...], start: int = 0, end: int = len(keys), depth: int = -1) -> bool:
        """``path`` under the key block keys[start:end]; an option may be there twice (active
        with its default and commented out with its sub-options), so every candidate is tried."""
        if not path:
            return True
        for i in range(start, end):
            indent, key = keys[i]
            if key == path[0] and indent > depth:
                stop = next((j for j in range(i + 1, end) if keys[j][0] <= indent), end)
                if present(path[1:], i + 1, stop, indent):
                    return True
        return False

    missing = [".".join(path) for path in leaves(Config) if not present(path)]
    assert not missing, f"reference.yaml does not name {missing}"


def test_the_image_default_config_serves_the_health_check() -> None:
    # The image's HEALTHCHECK asks 127.0.0.1:2021/healthz; its default config must serve it.
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("SINK_", "AWS_"))]:
            patch.delenv(name)
        config = load_config(CONF / "sink" / "local.yaml")
    assert config.listen.metrics.enabled and config.listen.metrics.address == "0.0.0.0:2021"
    assert config.listen.http is not None and config.listen.http.address.endswith(":8088")
    assert config.listen.forward.address.endswith(":24224")
    assert str(config.spool.path).startswith(SPOOL_DIR + "/")
    assert config.destination.url.endswith(f"{SPOOL_DIR}/lake")


# ------------------------------------------------------------------------------ Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ))  # fmt: skip
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def healthcheck_argv() -> list[str]:
    (args,) = [rest for word, rest in dockerfile() if word == "HEALTHCHECK"]
    argv = json.loads(args[args.index("CMD") + 3 :])
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_dockerfile_is_a_small_non_root_two_stage_image() -> None:
    steps = dockerfile()
    args: dict[str, str] = {}
    for word, rest in steps:  # the first ARG of a name has its default; a stage's re-declaration has none
        if word == "ARG":
            args.setdefault(rest.partition("=")[0], rest.partition("=")[2])
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", args["PYTHON_IMAGE"]), "pinned slim 3.11 tag"
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    run = " ".join(rest for word, rest in final if word == "RUN")
    assert "from=builder" in run and "--no-index" in run
    assert not re.search(r"\b(gcc|g\+\+|build-essential|apt-get install)\b", run), "no compilers in the image"
    builder = " ".join(rest for word, rest in steps[: steps.index(("FROM", froms[1]))] if word == "RUN")
    assert "pip wheel" in builder and "--only-binary=:all:" in builder
    user = [rest for word, rest in final if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ("VOLUME", SPOOL_DIR) in final
    assert ("ENTRYPOINT", '["securitylake-sink"]') in final
    assert ("CMD", f'["run", "-c", "{CONFIG_DIR}/config.yaml"]') in final
    exposed = {port for word, rest in final if word == "EXPOSE" for port in rest.split()}
    assert exposed == {"24224", "8088", "2021"}
    labels = " ".join(rest for word, rest in final if word == "LABEL")
    for label in ("title", "description", "version", "licenses", "revision"):
        assert f"org.opencontainers.image.{label}=" in labels
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"] and "/healthz" in argv[2] and "127.0.0.1:2021" in argv[2]
    # .dockerignore keeps what the COPY steps need
    allowed = [
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]  # fmt: skip
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source


# ------------------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_file_wires_the_demo() -> None:
    services = compose()["services"]
    assert set(services) == {"moto", "lake-init", "sink", "fluent-bit"}
    for name, service in services.items():
        if "image" in service and "build" not in service:
            assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+", service["image"]), f"{name}: pin a version tag"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}"
    assert services["moto"]["image"].startswith("motoserver/moto:")
    assert services["fluent-bit"]["image"].startswith("fluent/fluent-bit:")
    sink, init = services["sink"], services["lake-init"]
    assert sink["build"] == "." and init["build"] == "."
    assert f"./conf/demo/sink.yaml:{CONFIG_DIR}/config.yaml:ro" in sink["volumes"]
    assert any(v.endswith(f":{SPOOL_DIR}") for v in sink["volumes"])
    assert "http://moto:5000" in sink["environment"]["AWS_ENDPOINT_URL"]
    assert sink["depends_on"]["lake-init"]["condition"] == "service_completed_successfully"
    assert services["fluent-bit"]["depends_on"]["sink"]["condition"] == "service_healthy"
    # Fluent Bit reads the config it is given and the logs where that config looks for them
    fluent_bit = services["fluent-bit"]
    (config_mount,) = [v for v in fluent_bit["volumes"] if v.startswith("./conf/demo/fluent-bit.yaml:")]
    assert config_mount.split(":")[1] == fluent_bit["command"][-1]
    demo = yaml.safe_load((DEMO / "fluent-bit.yaml").read_text(encoding="utf-8"))
    logs_mount = next(v.split(":")[1] for v in fluent_bit["volumes"] if v.startswith("./conf/demo/logs:"))
    for source in demo["pipeline"]["inputs"]:
        path = Path(source["path"])
        assert str(path.parent) == logs_mount and (DEMO / "logs" / path.name).is_file()
    (output,) = demo["pipeline"]["outputs"]
    assert output["name"] == "forward" and output["host"] == "sink" and output["require_ack_response"] is True
    tags = {source["tag"] for source in demo["pipeline"]["inputs"]}
    matches = {m["match"] for m in yaml.safe_load((DEMO / "sink.yaml").read_text(encoding="utf-8"))["mappings"]}
    assert tags == matches


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed (.ci/run installs it)")
def test_compose_file_validates_with_docker_compose() -> None:
    assert DOCKER_COMPOSE is not None
    done = subprocess.run(
        [DOCKER_COMPOSE, "-f", "docker-compose.yml", "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=hermetic_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ Fluent Bit, Fluentd, Vector

# Fluent Bit's stock parsers that the demo uses (conf/parsers.conf of Fluent Bit, Apache-2.0),
# for running the demo's config outside the fluent/fluent-bit image.
STOCK_PARSERS = r"""
[PARSER]
    Name   nginx
    Format regex
    Regex ^(?<remote>[^ ]*) (?<host>[^ ]*) (?<user>[^ ]*) \[(?<time>[^\]]*)\] "(?<method>\S+)(?: +(?<path>[^\"]*?)(?: +\S*)?)?" (?<code>[^ ]*) (?<size>[^ ]*)(?: "(?<referer>[^\"]*)" "(?<agent>[^\"]*)")
    Time_Key time
    Time_Format %d/%b/%Y:%H:%M:%S %z

[PARSER]
    Name   json
    Format json
    Time_Key time
    Time_Format %d/%b/%Y:%H:%M:%S %z
"""  # noqa: E501 (the stock parser's regex, verbatim)


def local_demo_fluent_bit(tmp: Path, port: int) -> Path:
    """conf/demo/fluent-bit.yaml with this checkout's paths and the local sink's port."""
    data = yaml.safe_load((DEMO / "fluent-bit.yaml").read_text(encoding="utf-8"))
    parsers = tmp / "parsers.conf"
    parsers.write_text(STOCK_PARSERS, encoding="utf-8")
    data["service"]["parsers_file"] = str(parsers)
    for source in data["pipeline"]["inputs"]:
        source["path"] = str(DEMO / "logs" / Path(source["path"]).name)
    data["pipeline"]["outputs"][0].update(host="127.0.0.1", port=port)
    path = tmp / "demo-fluent-bit.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def fluent_bit_configs(tmp: Path) -> list[Path]:
    """Every Fluent Bit main config shipped (upstream files are loaded by their main config)."""
    configs = [p for p in sorted((CONF / "fluent-bit").iterdir()) if not p.name.startswith("upstream.")]
    configs.append(local_demo_fluent_bit(tmp, 24224))
    for manifest in sorted((CONF / "kubernetes").glob("*.yaml")):
        path = tmp / f"{manifest.stem}-fluent-bit.yaml"
        path.write_text(configmap_files(manifest)["fluent-bit.yaml"], encoding="utf-8")
        configs.append(path)
    return configs


def outputs_of(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".yaml":
        return list(yaml.safe_load(path.read_text(encoding="utf-8"))["pipeline"]["outputs"])
    outputs: list[dict[str, Any]] = []
    for block in path.read_text(encoding="utf-8").split("[OUTPUT]")[1:]:
        pairs = (line.split(None, 1) for line in block.split("\n[")[0].splitlines() if line.strip())
        outputs.append({k.lower(): v.strip() for k, v in pairs if not k.startswith("#")})
    return outputs


def test_fluent_bit_configs_forward_with_acks(tmp_path: Path) -> None:
    for path in fluent_bit_configs(tmp_path):
        for output in outputs_of(path):
            ack = output.get("require_ack_response")
            if output["name"] == "forward":
                assert ack is True or str(ack).lower() == "on", f"{path.name}: forward without acks"
            else:
                assert output["name"] == "http" and output["format"] == "json" and output["compress"] == "gzip"
                assert output["header_tag"] == "X-Fluent-Tag"
    upstream = yaml.safe_load((CONF / "fluent-bit" / "upstream.yaml").read_text(encoding="utf-8"))
    (group,) = upstream["upstream_servers"]
    assert len(group["nodes"]) > 1 and all(node["tls"] is True and node["shared_key"] for node in group["nodes"])
    assert (CONF / "fluent-bit" / "upstream.conf").read_text(encoding="utf-8").count("[NODE]") > 1


@needs_fluent_bit
def test_fluent_bit_dry_runs_every_config(tmp_path: Path) -> None:
    assert FLUENT_BIT is not None
    for path in fluent_bit_configs(tmp_path):
        done = subprocess.run(
            [FLUENT_BIT, "--dry-run", "-c", str(path)],
            capture_output=True, text=True, timeout=30, env=hermetic_env(**DUMMY_ENV), check=False,
        )  # fmt: skip
        assert done.returncode == 0 and "configuration test is successful" in done.stderr, (
            f"{path.name}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


@needs_fluent_bit
@pytest.mark.parametrize("main", ["forward-upstream.conf", "forward-upstream.yaml"])
def test_fluent_bit_loads_the_upstream_files(tmp_path: Path, main: str) -> None:
    # --dry-run does not open an Upstream file; the forward output does when it starts.
    import trustme

    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    for name in (main, main.replace("forward-", "")):
        text = (CONF / "fluent-bit" / name).read_text(encoding="utf-8")
        text = text.replace("/etc/fluent-bit/sink-ca.crt", str(tmp_path / "ca.pem"))
        text = text.replace("/var/lib/fluent-bit", str(tmp_path / "state"))
        (tmp_path / name).write_text(text.replace("/var/log/auth.log,/var/log/secure", str(tmp_path / "none.log")))
    assert FLUENT_BIT is not None
    log = tmp_path / "fluent-bit.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([FLUENT_BIT, "-c", str(tmp_path / main)], stdout=out, stderr=subprocess.STDOUT,
                                env=hermetic_env(**DUMMY_ENV))  # fmt: skip
    try:
        wait_until(
            lambda: "[output:forward:forward.0] worker #0 started" in log.read_text() or proc.poll() is not None,
            20, "Fluent Bit's forward output to start",
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(20)
    text = log.read_text()
    assert "worker #0 started" in text and "[error]" not in text, text[-3000:]


def test_fluentd_and_vector_configs_ask_for_acknowledgements() -> None:
    fluentd = (CONF / "fluentd" / "out_forward.conf").read_text(encoding="utf-8")
    match = re.search(r"<match [^>]+>\s*\n\s*@type forward\n(.*?)\n</match>", fluentd, re.S)
    assert match, "an out_forward <match> block"
    body = match[1]
    assert re.search(r"^\s*require_ack_response true$", body, re.M)
    assert re.search(r"^\s*shared_key ", body, re.M) and re.search(r"^\s*transport tls$", body, re.M)
    stack: list[str] = []  # <section ...> and </section> nest, comments aside
    for line in (raw.strip() for raw in fluentd.splitlines() if not raw.lstrip().startswith("#")):
        if opened := re.fullmatch(r"<([a-z_]+)(?: [^>]*)?>", line):
            stack.append(opened[1])
        elif closed := re.fullmatch(r"</([a-z_]+)>", line):
            assert stack.pop() == closed[1], line
    assert not stack, f"unclosed sections {stack}"
    vector = yaml.safe_load((CONF / "vector" / "http_sink.yaml").read_text(encoding="utf-8"))
    (sink,) = vector["sinks"].values()
    assert sink["type"] == "http" and sink["inputs"] and set(sink["inputs"]) <= set(vector["sources"])
    assert sink["encoding"] == {"codec": "json"} and sink["framing"] == {"method": "newline_delimited"}
    assert sink["compression"] == "gzip" and sink["acknowledgements"] == {"enabled": True}
    assert re.fullmatch(r"http://\$\{SINK_HOST\}:8088/[a-z.]+", sink["uri"])


# ------------------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("manifest", ["sidecar.yaml", "daemonset.yaml"])
def test_kubernetes_manifest_runs_the_sink_with_its_spool_probes_and_config(manifest: str) -> None:
    docs = [d for d in yaml.safe_load_all((CONF / "kubernetes" / manifest).read_text(encoding="utf-8")) if d]
    assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    (workload,) = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Pod")]
    assert workload["kind"] == ("Deployment" if manifest == "sidecar.yaml" else "DaemonSet")
    pod = workload["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert "fluent-bit" in containers and SINK_CONTAINER in containers
    sink = containers[SINK_CONTAINER]
    assert sink["image"] and sink["args"] == ["run", "-c", f"{CONFIG_DIR}/config.yaml"]
    ports = {p["name"]: p["containerPort"] for p in sink["ports"]}
    assert ports == {"forward": 24224, "metrics": 2021}
    mounts = {m["mountPath"]: m["name"] for m in sink["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    spool = volumes[mounts[SPOOL_DIR]]
    assert "persistentVolumeClaim" in spool or "hostPath" in spool, "the spool outlives the container"
    config_volume = volumes[mounts[CONFIG_DIR]]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"] == config_volume["configMap"]["name"])  # fmt: skip
    assert {"config.yaml", "fluent-bit.yaml"} <= set(configmap["data"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert sink[probe]["httpGet"] == {"path": path, "port": "metrics"}
    assert sink["securityContext"]["runAsNonRoot"] is True
    # the config in the ConfigMap: the probes can reach the metrics listener; Fluent Bit reaches the sink
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["listen"]["metrics"]["address"] == "0.0.0.0:2021"
    assert config["spool"]["path"].startswith(SPOOL_DIR + "/")
    fluent = yaml.safe_load(configmap["data"]["fluent-bit.yaml"])
    (output,) = fluent["pipeline"]["outputs"]
    assert (output["host"], output["port"]) == ("127.0.0.1", 24224) and output["require_ack_response"] is True
    fluent_mounts = {m["mountPath"] for m in containers["fluent-bit"]["volumeMounts"]}
    assert containers["fluent-bit"]["args"][-1].rpartition("/")[0] in fluent_mounts
    env = {e["name"] for e in sink["env"]}
    assert env_refs(configmap["data"]["config.yaml"]) <= env, "the container sets what the config reads"


# ------------------------------------------------------------------------------ the demo, outside a container

DEMO_LOCATIONS = {"ext/demo_auth/": 3002, "ext/demo_process/": 1007, "ext/demo_http/": 4002, "ext/demo_api/": 6003}
DEMO_EXTERNAL_ID = "demo-external-id-4711"
KEY_RE = re.compile(
    r"^(?P<location>ext/demo_[a-z]+/)region=us-east-1/accountId=external/eventDay=(?P<day>\d{8})/"
    r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.parquet$"
)
FILES_AND_TAGS = {
    "sshd.log": "demo.sshd",
    "auditd.log": "demo.auditd",
    "nginx_access.log": "demo.nginx",
    "cloudtrail.ndjson": "demo.cloudtrail",
}


def demo_records() -> dict[str, list[dict[str, Any]]]:
    """tag → records as the demo's Fluent Bit sends them without parsers (CloudTrail: its json parser)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, tag in FILES_AND_TAGS.items():
        lines = (DEMO / "logs" / name).read_text(encoding="utf-8").splitlines()
        out[tag] = [json.loads(line) if name.endswith(".ndjson") else {"log": line} for line in lines if line]
    return out


def lake_summary(client: Any, bucket: str) -> tuple[Counter[str], list[str]]:
    """Rows per location, and every key; each object checked against its key as it is read."""
    rows: Counter[str] = Counter()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            key = item["Key"]
            keys.append(key)
            match = KEY_RE.match(key)
            assert match, f"{key} is not a Security Lake key of the demo"
            table = pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
            assert set(table.column("class_uid").to_pylist()) == {DEMO_LOCATIONS[match["location"]]}, key
            days = {datetime.fromtimestamp(t / 1000, UTC).strftime("%Y%m%d") for t in table.column("time").to_pylist()}
            assert days == {match["day"]}, key
            rows[match["location"]] += table.num_rows
    return rows, keys


def dead_letters(spool: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (spool / "dead_letter").glob("*.ndjson"))


@contextlib.contextmanager
def demo_sink(tmp: Path, moto_url: str, bucket: str) -> Iterator[tuple[SinkProcess, Path, int]]:
    """The demo's bucket and role on moto (conf/demo/init_lake.py), then `securitylake-sink run -c
    conf/demo/sink.yaml` with the environment pointing it at moto and at local ports and paths."""
    port, metrics, spool = free_port(), free_port(), tmp / "spool"
    with pytest.MonkeyPatch.context() as patch:
        use_aws_env(
            patch,
            AWS_ENDPOINT_URL=moto_url,
            AWS_REGION="us-east-1",
            AWS_SESSION_TOKEN="",  # as docker-compose.yml passes it
            EXTERNAL_ID=DEMO_EXTERNAL_ID,
            LAKE_BUCKET=bucket,
            SINK_FORWARD_ADDRESS=f"127.0.0.1:{port}",
            SINK_METRICS_ADDRESS=f"127.0.0.1:{metrics}",
            SINK_SPOOL_PATH=str(spool),
            SINK_BATCH_MAX_AGE_SECS="1",
        )
        for name in [n for n in os.environ if n.startswith("ROLE_ARN")]:
            patch.delenv(name)
        init = subprocess.run(
            [sys.executable, str(DEMO / "init_lake.py"), str(DEMO / "sink.yaml")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert init.returncode == 0, init.stdout + init.stderr
        assert f"bucket {bucket}" in init.stdout
        sink = SinkProcess(DEMO / "sink.yaml", port, tmp / "sink.log", level="info")
        try:
            yield sink, spool, metrics
        finally:
            if sink.proc.poll() is None:
                sink.kill()


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private moto: the demo's bucket names are fixed, so no shared server sees them."""
    server = MotoServer(log=tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def forwarded(tmp_path_factory: pytest.TempPathFactory, moto_url: str) -> dict[str, Any]:
    """The demo over the Forward protocol: its logs sent with acks to the demo's sink config."""
    tmp = tmp_path_factory.mktemp("forwarded")
    bucket = "aws-security-data-lake-us-east-1-demo0lake"
    records = demo_records()
    sent = sum(len(r) for r in records.values())
    client = s3_client(moto_url)
    with demo_sink(tmp, moto_url, bucket) as (sink, spool, metrics):
        with ForwardClient("127.0.0.1", sink.port, timeout=30) as forward:
            for tag, batch in records.items():
                forward.send(tag, [(time.time_ns(), record) for record in batch])
        # The image's HEALTHCHECK command, pointed at this sink's metrics listener
        command = [sys.executable, *healthcheck_argv()[1:]]
        health = {}
        for path in ("/healthz", "/nothing-here"):
            env = {**os.environ, "SINK_HEALTHCHECK_URL": f"http://127.0.0.1:{metrics}{path}"}
            health[path] = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode
        wait_until(lambda: sum(lake_summary(client, bucket)[0].values()) + dead_letters(spool) == sent, 30,
                   "every demo record in the lake or the dead letters")  # fmt: skip
        assert sink.stop() == 0
    rows, keys = lake_summary(client, bucket)
    iam = aws_client("iam", moto_url)
    return {
        "sent": sent,
        "rows": rows,
        "keys": keys,
        "dead": dead_letters(spool),
        "log": sink.log(),
        "health": (health["/healthz"], health["/nothing-here"]),
        "trust": iam.get_role(RoleName="SynqlyAccess-demo")["Role"]["AssumeRolePolicyDocument"],
        "policy": iam.get_role_policy(RoleName="SynqlyAccess-demo", PolicyName="securitylake-sink-writer"),
    }


@pytest.mark.s3
def test_demo_lands_every_class_at_security_lake_keys(forwarded: dict[str, Any]) -> None:
    # every demo location got objects, each record is in the lake or a dead letter, exactly once
    assert set(forwarded["rows"]) == set(DEMO_LOCATIONS)
    assert sum(forwarded["rows"].values()) + forwarded["dead"] == forwarded["sent"]
    assert 0 < forwarded["dead"] < forwarded["sent"] // 4  # the few lines no rule takes
    # the sink assumed the demo's role with the External ID, and never logged it
    assert "assumed the writer role" in forwarded["log"]
    assert DEMO_EXTERNAL_ID not in forwarded["log"] and "Traceback" not in forwarded["log"]


@pytest.mark.s3
def test_demo_init_creates_the_role_securitylake_sink_iam_policy_prints(forwarded: dict[str, Any]) -> None:
    trust = forwarded["trust"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    (statement,) = trust["Statement"]
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": DEMO_EXTERNAL_ID}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXTERNAL_ID", DEMO_EXTERNAL_ID)
        for name in [n for n in os.environ if n.startswith(("AWS_", "SINK_", "LAKE_", "ROLE_ARN"))]:
            patch.delenv(name)
        policies = iam_policies(load_config(DEMO / "sink.yaml"))
    document = forwarded["policy"]["PolicyDocument"]
    assert (json.loads(document) if isinstance(document, str) else document) == policies.permissions
    assert policies.trust is not None and EXTERNAL_ID_PLACEHOLDER in json.dumps(policies.trust)


@pytest.mark.s3
def test_the_image_health_check_command_works(forwarded: dict[str, Any]) -> None:
    healthy, unhealthy = forwarded["health"]
    assert healthy == 0 and unhealthy != 0


@pytest.mark.s3
@needs_fluent_bit
def test_demo_with_the_real_fluent_bit(tmp_path: Path, moto_url: str, forwarded: dict[str, Any]) -> None:
    # GIVEN the demo's sink (its own bucket) and the demo's Fluent Bit config with local paths
    bucket = "aws-security-data-lake-us-east-1-demo1lake"
    client = s3_client(moto_url)
    assert FLUENT_BIT is not None
    with demo_sink(tmp_path, moto_url, bucket) as (sink, spool, _):
        config = local_demo_fluent_bit(tmp_path, sink.port)
        with (tmp_path / "fluent-bit.log").open("wb") as out:
            shipper = subprocess.Popen([FLUENT_BIT, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            # WHEN Fluent Bit tails the sample logs with the stock parsers and forwards them
            wait_until(
                lambda: shipper.poll() is not None
                or sum(lake_summary(client, bucket)[0].values()) + dead_letters(spool) >= forwarded["sent"],
                40, "Fluent Bit's records in the lake",
            )  # fmt: skip
            assert shipper.poll() is None, (tmp_path / "fluent-bit.log").read_text()[-3000:]
        finally:
            shipper.terminate()
            shipper.wait(20)
        assert sink.stop() == 0
    # THEN the same classes land at the same locations, in the same numbers, as over ForwardClient
    rows, _ = lake_summary(client, bucket)
    assert rows == forwarded["rows"]
    assert dead_letters(spool) == forwarded["dead"]
    assert "protocol error" not in sink.log() and "Traceback" not in sink.log()
