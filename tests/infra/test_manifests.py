"""The deployment files under infra/: they parse, carry what KubeRay / `ray up` need, and agree with the code.

Agreement with the code means: every `python -m jobs.X ...` written anywhere under infra/ (manifest entrypoints,
comments, scripts, READMEs) parses with that job's own `build_parser()`; GPU counts in the cluster specs equal
the `--num-gpus-per-worker` of the job they run and the driver never takes a GPU; the image pins the versions
pyproject.toml pins; no credential is written down.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
AWS_YAML = INFRA / "cluster" / "aws.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})
SHELL_SCRIPTS = sorted(INFRA.rglob("*.sh"))
TEXT_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file())
GPU = "nvidia.com/gpu"
# CUDA builds PyTorch publishes per torch release (wheel index names): pytorch/pytorch#178665 and
# pytorch/FBGEMM#5976 ("torch-2.13 has cu126 and cu130 wheels; cu128's last version was 2.11"); 2.11's cu130 is
# the build on the H200 machines of docs/gpu.md. Only pairs seen are listed: add a release when the image moves.
TORCH_CUDA_BUILDS = {"2.11": {"cu128", "cu130"}, "2.13": {"cu126", "cu130"}}
UBUNTU_PYTHONS = {"22.04": {"3.10", "3.11"}, "24.04": {"3.12"}}  # python3.X packages of each base's release
JOB_COMMAND = re.compile(r"python3? -m jobs\.(\w+)(.*)")
SHELL_END = re.compile(r";|&&|\|\||\||`|\s#\s")  # what ends a command inside a longer line


def _pins() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {req.name: req for req in map(Requirement, deps)}


def _locked() -> dict[str, str]:
    """constraints.txt (the lock make install uses): package name -> version."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def _requires_python() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])


def _pinned(name: str) -> str:
    (spec,) = _pins()[name].specifier
    assert spec.operator == "==", f"pyproject.toml should pin {name} exactly, found {spec}"
    return spec.version


def _docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifests() -> dict[str, dict[str, Any]]:
    found = {doc["kind"]: doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in _docs(path) if "kind" in doc}
    assert {"RayCluster", "RayJob", "RayCronJob"} <= set(found), f"kinds under infra/kuberay: {sorted(found)}"
    return found


def _job_specs() -> dict[str, dict[str, Any]]:
    """RayJob specs by where they come from: the RayJob itself and the RayCronJob's template."""
    kinds = _manifests()
    return {"RayJob": kinds["RayJob"]["spec"], "RayCronJob": kinds["RayCronJob"]["spec"]["jobTemplate"]}


def _cluster_specs() -> dict[str, dict[str, Any]]:
    kinds = _manifests()
    specs = {name: spec["rayClusterSpec"] for name, spec in _job_specs().items()}
    return {"RayCluster": kinds["RayCluster"]["spec"], **specs}


def _logical_lines(text: str) -> list[str]:
    """Lines with comment markers stripped and backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = re.sub(r"^\s*#+", "", raw).strip()
        if line.endswith("\\"):
            pending += line.rstrip("\\").strip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [*lines, pending] if pending else lines


def _job_commands() -> list[tuple[str, str, list[str]]]:
    """(where, job module, argument tokens) of every `python -m jobs.X ...` under infra/."""
    commands = []
    for name, spec in _job_specs().items():
        match = JOB_COMMAND.fullmatch(spec["entrypoint"].strip())
        assert match, f"{name} entrypoint is not `python -m jobs.<name> ...`: {spec['entrypoint']!r}"
        commands.append((f"{name}.entrypoint", match[1], shlex.split(match[2])))
    for path in TEXT_FILES:
        for line in _logical_lines(path.read_text()):
            for match in JOB_COMMAND.finditer(line):
                rest = SHELL_END.split(match[2])[0]
                commands.append((str(path.relative_to(ROOT)), match[1], shlex.split(rest)))
    return commands


def _parse(where: str, module: str, argv: list[str]) -> Any:
    """Parse argv with the job's own parser. None for a bare mention of the module (no arguments) and for
    --help; fails naming the file and the flag otherwise."""
    door = (ROOT / "jobs" / module / "cli.py").is_file()  # a package of subcommands (jobs.benchmark)
    assert door or (ROOT / "jobs" / f"{module}.py").is_file(), f"{where}: jobs/{module}.py does not exist"
    if door:  # its parser for this command line; no job arguments to hand back
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                importlib.import_module(f"jobs.{module}.cli").build_parser(argv).parse_args(argv)
            except SystemExit:
                pytest.fail(
                    f"{where}: `python -m jobs.{module} {shlex.join(argv)}` does not parse: {stderr.getvalue()}"
                )
        return None
    parser = importlib.import_module(f"jobs.{module}").build_parser()
    flags = [arg.split("=")[0] for arg in argv if arg.startswith("--")]
    unknown = [flag for flag in flags if flag not in parser._option_string_actions]  # no abbreviations either
    assert not unknown, f"{where}: jobs.{module} has no option {unknown}"
    if not argv or "--help" in argv or "-h" in argv:
        return None
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `python -m jobs.{module} {shlex.join(argv)}` does not parse: {stderr.getvalue()}")


def _example_commands(path: Path) -> list[Any]:
    """The parsed job commands written in a file's comments (its `ray job submit` examples)."""
    where = str(path.relative_to(ROOT))
    parsed = [_parse(w, module, argv) for w, module, argv in _job_commands() if w == where]
    assert any(parsed), f"{where} shows no job command"
    return [args for args in parsed if args is not None]


def _gpus(resources: dict[str, Any] | None) -> float:
    return float((resources or {}).get(GPU, 0))


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def _worker_gpus(spec: dict[str, Any]) -> tuple[float, int]:
    """(GPUs per pod, maximum pods) of the cluster's one GPU worker group."""
    groups = [g for g in spec["workerGroupSpecs"] if any(_gpus(c["resources"].get("limits")) for c in _containers(g))]
    assert len(groups) == 1, "expected exactly one GPU worker group"
    (container,) = _containers(groups[0])
    return _gpus(container["resources"]["limits"]), groups[0]["maxReplicas"]


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_expected_files_exist() -> None:
    for name in ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/raycronjob.yaml", "cluster/aws.yaml"]:
        assert (INFRA / name).is_file(), name
    assert DOCKERFILE.is_file() and SHELL_SCRIPTS


# ---------------------------------------------------------------------------------------------- KubeRay


def test_kuberay_kinds_and_api_version() -> None:
    for kind, doc in _manifests().items():
        assert doc["apiVersion"] == "ray.io/v1", kind
        assert doc["metadata"]["name"] and doc["spec"], kind


@pytest.mark.parametrize("source", ["RayJob", "RayCronJob"])
def test_rayjob_lifecycle(source: str) -> None:
    spec = _job_specs()[source]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    assert 0 <= spec["backoffLimit"] <= 3, "every retry builds a new cluster; keep retries few"
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec
    # The driver reserves a CPU and no GPU.
    assert spec["entrypointNumCpus"] > 0
    assert not spec.get("entrypointNumGpus"), "the driver must not take a GPU"


def test_raycronjob_schedule() -> None:
    cron = _manifests()["RayCronJob"]["spec"]
    assert len(cron["schedule"].split()) == 5 and cron["timeZone"]
    template = cron["jobTemplate"]
    assert "entrypoint" in template and "spec" not in template, "jobTemplate is a RayJob spec (KubeRay 1.6/1.7)"
    assert template["entrypoint"].startswith("python -m jobs.index_archive")
    # No concurrencyPolicy in KubeRay's RayCronJob: all attempts of one night must end before the next.
    assert (template["backoffLimit"] + 1) * template["activeDeadlineSeconds"] < 24 * 3600


@pytest.mark.parametrize("source", ["RayCluster", "RayJob", "RayCronJob"])
def test_cluster_spec(source: str) -> None:
    spec = _cluster_specs()[source]
    assert spec["rayVersion"] == _pinned("ray")
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    (head_container,) = _containers(head)
    resources = head_container["resources"]
    assert not _gpus(resources.get("requests")) and not _gpus(resources.get("limits")), "the head takes no GPU"
    assert float(head["rayStartParams"].get("num-gpus", 0)) == 0
    assert 8265 in {p["containerPort"] for p in head_container["ports"]}, "the dashboard / job API port"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        for container in _containers(group):
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert _gpus(requests) == _gpus(limits), "extended resources need requests == limits"
            if "num-gpus" in group["rayStartParams"]:
                assert float(group["rayStartParams"]["num-gpus"]) == _gpus(limits)


@pytest.mark.parametrize("source", ["RayCluster", "RayJob", "RayCronJob"])
def test_every_ray_pod_serves_prometheus_metrics_on_one_port(source: str) -> None:
    """Ray's metrics agent listens at --metrics-export-port; the pod names that port "metrics" (KubeRay's and a
    PodMonitor's name for it) and its annotations point a pod-discovering Prometheus at the same number."""
    spec = _cluster_specs()[source]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        port = int(group["rayStartParams"]["metrics-export-port"])
        (container,) = _containers(group)
        assert {"containerPort": port, "name": "metrics"} in container["ports"]
        annotations = group["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
        assert annotations["prometheus.io/path"] == "/metrics"


# GPU memory a 7B in bf16 needs per GPU: 14.1 GB of weights plus the KV cache of its batch (docs/install.md).
MIN_GPU_MIB = 40_000
# EC2 types with one GPU per node, and its memory in MiB (what `nvidia.com/gpu.memory` reports for that GPU).
EC2_GPU_MIB = {"g5.2xlarge": 23_028, "g6.2xlarge": 23_034, "g6e.2xlarge": 46_068}


@pytest.mark.parametrize("source", ["RayCluster", "RayJob", "RayCronJob"])
def test_gpu_pods_go_to_gpus_a_7b_fits(source: str) -> None:
    """Every GPU group asks for nodes whose GPUs hold a 7B in bf16, by GPU memory (no node type to set)."""
    for group in _cluster_specs()[source]["workerGroupSpecs"]:
        if not any(_gpus(c["resources"].get("limits")) for c in _containers(group)):
            continue
        pod = group["template"]["spec"]
        assert "nodeSelector" not in pod, f"{source}: a node type pins one pool: {pod['nodeSelector']}"
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        for term in terms:  # the terms are ORed: each must demand enough memory
            (memory,) = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
            assert memory["operator"] == "Gt" and int(memory["values"][0]) >= MIN_GPU_MIB, (source, memory)


def test_the_ray_up_gpu_type_fits_a_7b() -> None:
    types = yaml.safe_load(AWS_YAML.read_text())["available_node_types"]
    (gpu_type,) = [t for t in types.values() if t["resources"].get("GPU")]
    instance = gpu_type["node_config"]["InstanceType"]
    assert EC2_GPU_MIB.get(instance, 0) > MIN_GPU_MIB, f"{instance}: GPU memory unknown or under {MIN_GPU_MIB} MiB"


def test_raycluster_autoscales() -> None:
    spec = _manifests()["RayCluster"]["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (gpu_group,) = spec["workerGroupSpecs"]
    assert gpu_group["minReplicas"] < gpu_group["maxReplicas"]


@pytest.mark.parametrize("source", ["RayJob", "RayCronJob"])
def test_gpus_match_the_entrypoint(source: str) -> None:
    spec = _job_specs()[source]
    match = JOB_COMMAND.fullmatch(spec["entrypoint"].strip())
    assert match
    args = _parse(f"{source}.entrypoint", match[1], shlex.split(match[2]))
    gpus_per_pod, max_pods = _worker_gpus(spec["rayClusterSpec"])
    assert args.num_gpus_per_worker > 0, "production model actors run on GPUs"
    assert gpus_per_pod == args.num_gpus_per_worker
    assert args.workers <= max_pods, "more model actors than GPU pods"
    head_cpus = float(spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].get("num-cpus", 1))
    assert spec["entrypointNumCpus"] <= head_cpus, "the driver must fit on the head"


def test_raycluster_example_matches_its_gpus() -> None:
    gpus_per_pod, max_pods = _worker_gpus(_manifests()["RayCluster"]["spec"])
    for args in _example_commands(KUBERAY / "raycluster.yaml"):
        assert gpus_per_pod == args.num_gpus_per_worker and args.workers <= max_pods


def test_credentials_come_from_secrets() -> None:
    sensitive = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)
    for source, spec in _cluster_specs().items():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        env = [var for group in groups for c in _containers(group) for var in c.get("env", [])]
        names = {var["name"] for var in env}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names, source
        for var in env:
            if sensitive.search(var["name"]):
                assert "value" not in var and var["valueFrom"]["secretKeyRef"]["name"], (source, var["name"])


def test_one_image_everywhere() -> None:
    images = {
        c["image"]
        for spec in _cluster_specs().values()
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for c in _containers(g)
    }
    images.add(yaml.safe_load(AWS_YAML.read_text())["docker"]["image"])
    assert len(images) == 1, images


# ---------------------------------------------------------------------------------------------- ray up


def test_aws_cluster_yaml() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    config = yaml.safe_load(AWS_YAML.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # the launcher's own schema for `ray up`
    for key in ["cluster_name", "max_workers", "idle_timeout_minutes", "head_node_type", "setup_commands"]:
        assert key in config, key
    assert config["docker"]["image"] and config["docker"]["container_name"]
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] >= 1 and not head["resources"].get("GPU")
    (gpu_type,) = [t for t in types.values() if t["resources"].get("GPU")]
    for args in _example_commands(AWS_YAML):
        assert gpu_type["resources"]["GPU"] == args.num_gpus_per_worker
        assert args.workers <= min(gpu_type["max_workers"], config["max_workers"])


# ---------------------------------------------------------------------------------------------- commands


def test_job_commands_use_real_flags() -> None:
    from sparsevlm.config import PRESETS

    commands = _job_commands()
    assert {module for _, module, _ in commands} >= {"caption", "index_archive"}
    for where, module, argv in commands:
        args = _parse(where, module, argv)
        if args is not None:
            assert args.preset in PRESETS, f"{where}: unknown --preset {args.preset!r}"


def test_ray_job_submit_keeps_gpus_for_the_model() -> None:
    """Every written `ray job submit ... -- entrypoint` reserves a CPU and no GPU for the driver."""
    submits = []
    for path in TEXT_FILES:
        for line in _logical_lines(path.read_text()):
            if "ray job submit" in line:
                command = SHELL_END.split(line[line.index("ray job submit") :])[0]
                if " -- " in command:  # a command, not a mention in prose
                    submits.append((path.name, shlex.split(command.split(" -- ")[0])))
    assert submits
    for name, options in submits:
        assert "--entrypoint-num-cpus" in options, f"{name}: {shlex.join(options)}"
        assert "--entrypoint-num-gpus" not in options, f"{name}: {shlex.join(options)}"


# ---------------------------------------------------------------------------------------------- image


def test_dockerfile_matches_pyproject() -> None:
    text = DOCKERFILE.read_text()
    for name in ["transformers", "ray", "decord"]:
        found = set(re.findall(rf"\b{name}(?:\[[\w,]+\])?==([\w.]+)", text))
        found |= set(re.findall(rf"\b{name}\.__version__ == '([\w.]+)'", text))
        assert found == {_pinned(name)}, f"Dockerfile pins {name} {found}, pyproject.toml {_pinned(name)}"
    torch = re.search(r"ARG TORCH_VERSION=([\w.]+)", text)
    assert torch and Version(torch[1]) in _pins()["torch"].specifier
    assert torch[1] == _locked()["torch"], (
        f"the image's torch {torch[1]}, the lock's (what CI tests) {_locked()['torch']}"
    )
    # The torch/CUDA pair exists, and the base image's CUDA line is the wheel's (cu126 <-> CUDA 12.6).
    build = re.search(r"ARG TORCH_CUDA=(cu\d+)", text)
    cuda = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)[\w.]*-cudnn-runtime-ubuntu([\d.]+)", text)
    assert build and cuda and build[1] == f"cu{cuda[1]}{cuda[2]}", (build, cuda)
    release = ".".join(torch[1].split(".")[:2])
    assert build[1] in TORCH_CUDA_BUILDS[release], f"PyTorch publishes no {build[1]} build of torch {release}"
    assert '--extra-index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in text
    # The image's Python is one the project allows, and the one of its Ubuntu release.
    python = re.search(r"python(3\.\d+) -m venv", text)
    assert python and Version(python[1] + ".0") in SpecifierSet(_requires_python()), python
    assert python[1] in UBUNTU_PYTHONS[cuda[3]], f"Ubuntu {cuda[3]} has python {UBUNTU_PYTHONS[cuda[3]]}"
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", text, re.MULTILINE)
    assert "RAY_USAGE_STATS_ENABLED=0" in text and "WORKDIR /app" in text
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1] not in {"root", "0"}, "the image runs as a non-root user"
    instructions = re.sub(r"\\\n", " ", text).splitlines()  # continuation lines joined
    names = [n for line in instructions if re.match(r"(ENV|ARG)\s", line) for n in re.findall(r"(\w+)=", line)]
    baked = [n for n in names if re.search(r"^AWS_|SECRET|PASSWORD|(^|_)TOKEN($|_)", n)]
    assert names and not baked, f"credentials baked into the image: {baked}"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].removesuffix("/**") for line in ignore if line.startswith("!")}
    copied = {
        src
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY")
        for src in line.split()[1:-1]
        if not src.startswith("--")
    }
    assert copied and copied <= kept, copied - kept
    assert all((ROOT / src).exists() for src in copied)


# ---------------------------------------------------------------------------------------------- secrets


SECRET_VALUE = re.compile(r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?([^\s\"'\\]+)")
DUMMY = {"testing"}  # moto's dummy credentials in infra/local


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_literal_aws_credentials(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text), "an AWS access key id"
    for value in SECRET_VALUE.findall(text):
        assert value in DUMMY or value.startswith(("$", "<")), f"a literal secret access key: {value[:4]}..."
    assert not re.search(r"(?i)secret.{0,40}\b[A-Za-z0-9/+]{40}\b", text), "something like a 40-character secret"


# ---------------------------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(INFRA)))
def test_shell_script(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0] in {"#!/usr/bin/env bash", "#!/bin/bash"}
    assert "set -euo pipefail" in lines
    assert os.access(path, os.X_OK), "not executable"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to check the syntax with")
    check = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
