"""The compose stack's MLflow server with authentication, for real and without Docker.

docker/mlflow/entrypoint.sh (the mlflow image's entrypoint) runs as it does in the container: it renders the
basic-auth app's ini from the environment into a temporary folder, then execs the `mlflow server` command of
docker-compose.yml's `mlflow` service (host, port and artifact root pointed at this machine) from the
virtualenv. Users and permissions live in a fresh PostgreSQL database, as in the stack, and so does the backend
store; both are dropped at the end (postgres.py next to this file: TEST_POSTGRES_URL, else 127.0.0.1:5432, else
a throwaway cluster). Over real HTTP: no login or a wrong password is refused, the admin account from the
environment creates an experiment, a registered model and the champion alias, a second user with no grant
cannot move that alias, and `mlflow.MlflowClient` logs in with MLFLOW_TRACKING_USERNAME/PASSWORD.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "mlflow" / "entrypoint.sh"
COMPOSE = ROOT / "docker-compose.yml"
API = "/api/2.0/mlflow"
ADMIN = "lifecycle-admin"
START_TIMEOUT = 120  # seconds; about 20 s on the project's machine

pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _psycopg2_url(url: str) -> str:
    """The URL as the stack writes it (postgresql://, i.e. psycopg2, which the mlflow image installs)."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _compose_command(port: int, artifacts: Path) -> list[str]:
    """The mlflow service's command with compose's defaults, bound to a loopback port of this machine."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]["command"]
    # ${VAR:-default} -> default (the stack's command uses no required variable).
    command = [re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", part) for part in command]
    assert "--app-name=basic-auth" in command, command
    local = {"--host": "127.0.0.1", "--port": str(port), "--default-artifact-root": artifacts.as_uri()}
    command = [part for part in command if part.split("=", 1)[0] not in local]
    # One worker is enough here and starts faster than uvicorn's default of four.
    return [*command, *(f"{key}={value}" for key, value in local.items()), "--workers=1"]


def _base_env(home: Path) -> dict[str, str]:
    """A clean environment (nothing from the test session's own MLflow settings) with the venv first on PATH."""
    env = {key: os.environ[key] for key in ("LANG", "LC_ALL", "TMPDIR") if key in os.environ}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(home)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    return env


def _auth_env(home: Path, database_uri: str, password: str) -> dict[str, str]:
    """What docker-compose.yml gives the mlflow container, with the ini in a temporary folder."""
    return {
        **_base_env(home),
        "MLFLOW_AUTH_CONFIG_PATH": str(home / "auth" / "basic_auth.ini"),
        "MLFLOW_AUTH_DATABASE_URI": database_uri,
        "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ",
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }


@dataclass
class Server:
    url: str
    admin_password: str
    auth_database: str
    config: Path
    log: Path

    def call(self, method: str, path: str, auth: tuple[str, str] | None, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.url}{API}/{path}", auth=auth, timeout=30, **kwargs)

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.call(method, path, (ADMIN, self.admin_password), **kwargs)
        assert response.status_code == 200, f"admin {method} {path}: {response.status_code} {response.text}"
        return response


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _stop(process: subprocess.Popen) -> None:
    """Stop the process group the server was started in (mlflow server, uvicorn, its worker): TERM, then KILL."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)
    # uvicorn's worker exits after its parent: nothing of the group may outlive the test.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
    _signal_group(process, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres_helper) -> Iterator[Server]:
    helper = postgres_helper
    home = tmp_path_factory.mktemp("mlflow-auth")
    port, password = _free_port(), secrets.token_hex(16)
    log = home / "server.log"
    with contextlib.ExitStack() as stack:
        try:
            auth_db = _psycopg2_url(stack.enter_context(helper.throwaway_database("mlflow_auth_test")))
            backend = _psycopg2_url(stack.enter_context(helper.throwaway_database("mlflow_backend_test")))
        except helper.PostgresUnavailable as err:
            pytest.fail(str(err), pytrace=False)
        env = _auth_env(home, auth_db, password)
        # Job execution (huey consumers) has nothing to do with authentication and doubles the start-up time.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        # The backend store as the stack passes it: MLFLOW_BACKEND_STORE_URI (read by `mlflow server`).
        env["MLFLOW_BACKEND_STORE_URI"] = backend
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(ENTRYPOINT), *_compose_command(port, home / "artifacts")],
                env=env,
                cwd=home,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        stack.callback(_stop, process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {START_TIMEOUT} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield Server(url, password, auth_db, Path(env["MLFLOW_AUTH_CONFIG_PATH"]), log)


@pytest.fixture(scope="module")
def champion(server: Server) -> dict[str, str]:
    """Made by the admin over plain HTTP: an experiment, a run, a registered model with two versions, the alias."""
    name = f"auth-test-{uuid.uuid4().hex[:8]}"
    experiment = server.admin("POST", "experiments/create", json={"name": name}).json()["experiment_id"]
    run = server.admin("POST", "runs/create", json={"experiment_id": experiment}).json()["run"]["info"]
    server.admin("POST", "registered-models/create", json={"name": name})
    for _ in range(2):
        body = {"name": name, "source": f"{run['artifact_uri']}/model", "run_id": run["run_id"]}
        server.admin("POST", "model-versions/create", json=body)
    server.admin("POST", "registered-models/alias", json={"name": name, "alias": "champion", "version": "1"})
    analyst = ("analyst", secrets.token_hex(16))
    server.admin("POST", "users/create", json={"username": analyst[0], "password": analyst[1]})
    return {
        "model": name,
        "experiment": experiment,
        "source": f"{run['artifact_uri']}/model",
        "run_id": run["run_id"],
        "analyst": analyst[0],
        "analyst_password": analyst[1],
    }


def _alias_version(server: Server, model: str) -> str:
    response = server.admin("GET", "registered-models/alias", params={"name": model, "alias": "champion"})
    return response.json()["model_version"]["version"]


# ---------------------------------------------------------------- the entrypoint


def test_entrypoint_renders_the_auth_config(server: Server) -> None:
    assert stat.S_IMODE(server.config.stat().st_mode) == 0o600, "the ini holds passwords: owner-only"
    config = configparser.ConfigParser()  # what mlflow.server.auth.config reads it with
    assert config.read(server.config) == [str(server.config)]
    section = config["mlflow"]
    assert section["default_permission"] == "READ"
    assert section["database_uri"] == server.auth_database
    assert section["admin_username"] == ADMIN and section["admin_password"] == server.admin_password
    assert section["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    # The admin was bootstrapped in PostgreSQL, not in a SQLite file next to the server.
    engine = sa.create_engine(server.auth_database, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            admins = conn.execute(sa.text("SELECT username FROM users WHERE is_admin")).scalars().all()
    finally:
        engine.dispose()
    assert admins == [ADMIN]
    assert not list(server.config.parent.parent.glob("*.db")), "the auth app fell back to SQLite"


PASSWORD, SECRET_KEY = "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        pytest.param({PASSWORD: None}, PASSWORD, id="password-unset"),
        pytest.param({PASSWORD: ""}, PASSWORD, id="password-empty"),
        pytest.param({PASSWORD: "change-me"}, PASSWORD, id="password-placeholder"),
        pytest.param({PASSWORD: "<strong-password>"}, PASSWORD, id="password-docs-placeholder"),
        pytest.param({PASSWORD: "password1234"}, PASSWORD, id="password-mlflow-old-default"),
        pytest.param({PASSWORD: "short-pw"}, PASSWORD, id="password-too-short"),
        pytest.param({PASSWORD: "a-long-password\ndefault_permission = MANAGE"}, PASSWORD, id="password-newline"),
        pytest.param({SECRET_KEY: None}, SECRET_KEY, id="secret-key-unset"),
        pytest.param({SECRET_KEY: "changeme"}, SECRET_KEY, id="secret-key-placeholder"),
        pytest.param({"MLFLOW_AUTH_DATABASE_URI": None}, "MLFLOW_AUTH_DATABASE_URI", id="database-unset"),
        pytest.param({"MLFLOW_AUTH_ADMIN_USERNAME": ""}, "MLFLOW_AUTH_ADMIN_USERNAME", id="username-empty"),
        pytest.param({"MLFLOW_AUTH_DEFAULT_PERMISSION": "EDIT"}, "MLFLOW_AUTH_DEFAULT_PERMISSION", id="default-edit"),
    ],
)
def test_entrypoint_refuses_to_start_without_real_secrets(tmp_path: Path, change: dict, variable: str) -> None:
    env = _auth_env(tmp_path, "sqlite:///unused.db", secrets.token_hex(16))
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    marker = tmp_path / "server-started"
    command = [str(ENTRYPOINT), sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 78, (done.returncode, done.stderr)
    assert variable in done.stderr, f"the refusal does not name {variable}: {done.stderr!r}"
    assert not marker.exists(), "the command ran anyway"
    assert not Path(env["MLFLOW_AUTH_CONFIG_PATH"]).exists(), "an ini was written anyway"


def test_entrypoint_keeps_percent_signs_and_execs_the_command(tmp_path: Path) -> None:
    # A URL-encoded database password has % in it, which configparser would otherwise interpolate.
    password = "p%40ss%word-" + secrets.token_hex(4)
    uri = "postgresql://mlflow:s%40cret%2F@postgres:5432/mlflow_auth"
    env = _auth_env(tmp_path, uri, password)
    read = "import configparser, os; c = configparser.ConfigParser(); c.read(os.environ['MLFLOW_AUTH_CONFIG_PATH'])"
    show = "; print(c['mlflow']['admin_password']); print(c['mlflow']['database_uri'])"
    done = subprocess.run(
        [str(ENTRYPOINT), sys.executable, "-c", read + show], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [password, uri]


# ---------------------------------------------------------------- the server over HTTP


def test_health_needs_no_login(server: Server) -> None:
    # The compose health check sends no credentials.
    response = requests.get(f"{server.url}/health", timeout=10)
    assert response.status_code == 200, response.text


def test_the_api_refuses_requests_without_a_valid_login(server: Server, champion: dict[str, str]) -> None:
    move = {"name": champion["model"], "alias": "champion", "version": "2"}
    for auth in (None, (ADMIN, "wrong-" + secrets.token_hex(8)), ("nobody", server.admin_password)):
        search = server.call("GET", "experiments/search", auth, params={"max_results": 1})
        assert search.status_code == 401, (auth, search.status_code, search.text)
        assert search.headers.get("WWW-Authenticate", "").startswith("Basic"), search.headers
        moved = server.call("POST", "registered-models/alias", auth, json=move)
        assert moved.status_code == 401, (auth, moved.status_code, moved.text)
    assert _alias_version(server, champion["model"]) == "1"


def test_the_admin_creates_experiments_models_and_aliases(server: Server, champion: dict[str, str]) -> None:
    experiment = server.admin("GET", "experiments/get", params={"experiment_id": champion["experiment"]})
    assert experiment.json()["experiment"]["name"] == champion["model"]
    versions = server.admin("GET", "model-versions/search", params={"filter": f"name='{champion['model']}'"})
    assert sorted(v["version"] for v in versions.json()["model_versions"]) == ["1", "2"]
    assert _alias_version(server, champion["model"]) == "1"


def test_a_user_without_a_grant_cannot_move_the_champion_alias(server: Server, champion: dict[str, str]) -> None:
    analyst = (champion["analyst"], champion["analyst_password"])
    model = champion["model"]
    # default_permission = READ: the model is visible...
    seen = server.call("GET", "registered-models/get", analyst, params={"name": model})
    assert seen.status_code == 200, seen.text
    # ...but it cannot be changed.
    moved = server.call(
        "POST", "registered-models/alias", analyst, json={"name": model, "alias": "champion", "version": "2"}
    )
    assert moved.status_code == 403, (moved.status_code, moved.text)
    deleted = server.call("DELETE", "registered-models/alias", analyst, json={"name": model, "alias": "champion"})
    assert deleted.status_code == 403, (deleted.status_code, deleted.text)
    renamed = server.call("POST", "registered-models/rename", analyst, json={"name": model, "new_name": model + "-x"})
    assert renamed.status_code == 403, (renamed.status_code, renamed.text)
    # Nor can the user hand itself more rights.
    escalated = server.call("PATCH", "users/update-admin", analyst, json={"username": analyst[0], "is_admin": True})
    assert escalated.status_code == 403, (escalated.status_code, escalated.text)
    assert _alias_version(server, model) == "1"


def test_mlflow_client_logs_in_with_the_tracking_env_vars(
    server: Server, champion: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model = champion["model"]
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException, match="401|not authenticated|UNAUTHENTICATED"):
        client.get_model_version_by_alias(model, "champion")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", champion["analyst"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", champion["analyst_password"])
    assert client.get_model_version_by_alias(model, "champion").version == "1"
    with pytest.raises(MlflowException, match="403|Permission denied|PERMISSION_DENIED"):
        client.set_registered_model_alias(model, "champion", "2")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    client.set_registered_model_alias(model, "champion", "2")
    assert client.get_model_version_by_alias(model, "champion").version == "2"
    experiment = client.create_experiment(f"client-{uuid.uuid4().hex[:8]}")
    assert client.get_experiment(experiment).lifecycle_stage == "active"


def test_a_grant_from_the_admin_lets_the_user_move_the_alias(server: Server, champion: dict[str, str]) -> None:
    """The 403 above is the permission model at work: the admin's grant (the API README.md names) lifts it."""
    analyst = (champion["analyst"], champion["analyst_password"])
    model = f"auth-grant-{uuid.uuid4().hex[:8]}"
    server.admin("POST", "registered-models/create", json={"name": model})
    for _ in range(2):
        version = {"name": model, "source": champion["source"], "run_id": champion["run_id"]}
        server.admin("POST", "model-versions/create", json=version)
    server.admin("POST", "registered-models/alias", json={"name": model, "alias": "champion", "version": "1"})
    move = {"name": model, "alias": "champion", "version": "2"}
    assert server.call("POST", "registered-models/alias", analyst, json=move).status_code == 403

    grant = {"username": analyst[0], "resource_type": "registered_model", "resource_id": model, "permission": "EDIT"}
    response = requests.post(
        f"{server.url}/api/3.0/mlflow/users/permissions/grant",
        auth=(ADMIN, server.admin_password),
        json=grant,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    moved = server.call("POST", "registered-models/alias", analyst, json=move)
    assert moved.status_code == 200, (moved.status_code, moved.text)
    assert _alias_version(server, model) == "2"
    # EDIT on that one model only: the pipeline's champion stays out of reach.
    other = {"name": champion["model"], "alias": "champion", "version": "1"}
    assert server.call("POST", "registered-models/alias", analyst, json=other).status_code == 403
