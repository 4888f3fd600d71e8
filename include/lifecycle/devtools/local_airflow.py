"""Start a real local Airflow 3 (api-server, scheduler, dag-processor, triggerer) and talk to it over REST.

Standard library only, so scripts and tests can import it before anything imports Airflow. Each service runs
as `python -m airflow <service>` in its own process group (its own session) with its own log file, all
sharing one environment: the api-server on 127.0.0.1 only, LocalExecutor, one generated JWT secret, and
SimpleAuthManager with a single admin user whose random password is written to a file and returned (or
another auth manager, e.g. FAB's, whose users the caller has created: `auth_manager=`, `username=`,
`password=`; `airflow.as_user(name, password)` then calls the API as someone else).

    with running_airflow(env, log_dir=Path("logs")) as airflow:
        unpause(airflow, "my_dag")
        run = trigger(airflow, "my_dag", {"reason": "test"})
        wait_for_run(airflow, "my_dag", run["dag_run_id"])

Other executors (`executor="CeleryExecutor"`) run their workers as `extra` services: each an Airflow command
with an environment, a working directory and a log of its own, started once the core services are healthy
(`hostname` is a `[core] hostname_callable` that tells such workers apart on one machine).

On exit every service gets SIGTERM (its whole process group, and every process it had started, task
processes included: Airflow puts those in groups of their own), then SIGKILL after a grace period.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json as jsonlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
FINISHED_STATES = frozenset({"success", "failed"})
USERNAME = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
# What each service's component is called in /api/v2/monitor/health.
HEALTH_COMPONENTS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
# What the retrain, batch prediction and monitoring tasks import (about 10 s of imports on these machines).
# LocalExecutor forks each task from a worker that the scheduler forked at its start, so modules the scheduler
# imported before that are already loaded in every task: running_airflow(preload=TASK_PRELOAD) (benchmarks/
# airflow_overhead.py). Importing them starts no Python thread and opens no connection (numpy's OpenBLAS pool
# is native and stops itself around a fork).
TASK_PRELOAD = (
    "pandas", "pyarrow.parquet", "scipy.stats", "sqlalchemy", "sklearn.pipeline", "sklearn.compose",
    "sklearn.impute", "sklearn.preprocessing", "sklearn.model_selection", "sklearn.calibration",
    "sklearn.linear_model", "sklearn.metrics", "lightgbm", "mlflow", "great_expectations",
)  # fmt: skip
# `python -c` program: import the modules named in argv[1] (comma-separated), then run `airflow <argv[2:]>`.
_PRELOAD_MAIN = (
    "import importlib, runpy, sys\n"
    "for name in filter(None, sys.argv[1].split(',')):\n"
    "    importlib.import_module(name)\n"
    "sys.argv = ['airflow', *sys.argv[2:]]\n"
    "runpy.run_module('airflow', run_name='__main__', alter_sys=True)\n"
)
HOSTNAME_VARIABLE = "LOCAL_AIRFLOW_HOSTNAME"


def hostname() -> str:
    """The name a service reports as its host: LOCAL_AIRFLOW_HOSTNAME, else the machine's FQDN (Airflow's default).

    Point `AIRFLOW__CORE__HOSTNAME_CALLABLE` at `lifecycle.devtools.local_airflow.hostname` and give each worker its own
    LOCAL_AIRFLOW_HOSTNAME: task instances then name the worker that ran them, not just the machine.
    """
    return os.environ.get(HOSTNAME_VARIABLE) or socket.getfqdn()


@dataclass(frozen=True)
class ExtraService:
    """One more Airflow process for running_airflow: `python -m airflow <args>` with `env` on top of the
    shared environment, in `cwd` (default: the caller's) and logging to <log_dir>/<name>.log."""

    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class AirflowStartError(RuntimeError):
    """Airflow did not come up: the message names the service and shows the tail of its log."""


class AirflowApiError(RuntimeError):
    """A REST call answered with an HTTP error."""

    def __init__(self, method: str, url: str, status: int, body: str):
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when 127.0.0.1:port can be bound (nothing listens there, nor on 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LocalAirflow:
    """A running local Airflow: where it answers, the login, and REST helpers."""

    base_url: str
    username: str
    password: str
    port: int
    log_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    startup_seconds: float = 0.0
    _token: str | None = field(default=None, repr=False)

    def log_file(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    def token(self, username: str | None = None, password: str | None = None) -> str:
        """A JWT from the auth manager's POST /auth/token (this handle's login unless others are given);
        SimpleAuthManager's and FAB's take the same username and password."""
        body = {"username": username or self.username, "password": self.password if password is None else password}
        answer = _request("POST", f"{self.base_url}/auth/token", body, headers={}, timeout=30)
        return answer["access_token"]

    def as_user(self, username: str, password: str) -> LocalAirflow:
        """The same Airflow, called as another user (one the auth manager knows) with a token of their own."""
        return dataclasses.replace(self, username=username, password=password, _token=None)

    def api(
        self, method: str, path: str, json: Any = None, *, timeout: float = 30, headers: dict[str, str] | None = None
    ) -> Any:
        """Call the REST API (path like "/api/v2/dags") with a Bearer token; the decoded JSON answer."""
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        if self._token is None:
            self._token = self.token()
        try:
            return _request(method, url, json, headers=self._headers(headers), timeout=timeout)
        except AirflowApiError as error:
            if error.status != 401:
                raise
        self._token = self.token()  # expired, or the api-server restarted with another secret: once more
        return _request(method, url, json, headers=self._headers(headers), timeout=timeout)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {**(extra or {}), "Authorization": f"Bearer {self._token}"}


def _request(method: str, url: str, json: Any, *, headers: dict[str, str], timeout: float) -> Any:
    data = None
    headers = {"Accept": "application/json", **headers}
    if json is not None:
        data = jsonlib.dumps(json).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method.upper(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        raise AirflowApiError(method.upper(), url, error.code, error.read().decode(errors="replace")) from None
    return jsonlib.loads(raw) if raw.strip() else None


def login_banner(airflow: LocalAirflow) -> str:
    """What to print once Airflow is up: the UI address and the login."""
    return "\n".join(
        [
            f"Airflow is up (in {airflow.startup_seconds:.0f}s): {airflow.base_url}/",
            f"  login: username {airflow.username}  password {airflow.password}",
            f"  logs:  {airflow.log_dir}",
        ]
    )


def service_environment(
    env: dict[str, str],
    port: int,
    *,
    password_file: Path | None,
    jwt_secret: str,
    api_secret: str,
    auth_manager: str = SIMPLE_AUTH_MANAGER,
    username: str = USERNAME,
    executor: str = "LocalExecutor",
) -> dict[str, str]:
    """The environment every service gets: the caller's, with what this launcher must control on top.

    With SimpleAuthManager, its one admin `username` and the passwords file; with another auth manager, only
    AIRFLOW__CORE__AUTH_MANAGER (its users are the caller's to create).
    """
    child = {key: str(value) for key, value in env.items()}
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in child.get("PATH", os.environ.get("PATH", "")).split(os.pathsep) if p and p != bin_dir]
    base_url = f"http://127.0.0.1:{port}"
    child.update(
        {
            "PATH": os.pathsep.join([bin_dir, *path]),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__API__SECRET_KEY": api_secret,
            "AIRFLOW__CORE__AUTH_MANAGER": auth_manager,
            # Nothing else listens: no scheduler health server, and the log servers (which bind every
            # interface) are not started (--skip-serve-logs); the api-server reads task logs from the local
            # files. Their ports point at free ones so that nothing is asked of whatever holds 8793.
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
    )
    if auth_manager == SIMPLE_AUTH_MANAGER:
        if password_file is None:
            raise ValueError("SimpleAuthManager needs a passwords file")
        child.update(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
            }
        )
    # LocalExecutor forks `parallelism` workers up front: keep that small on a small machine.
    child.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    return child


def _command(service: str, port: int, preload: Iterable[str] = ()) -> list[str]:
    """The service's command line; with `preload`, the scheduler imports those modules before Airflow starts."""
    command = [sys.executable, "-m", "airflow", service]
    if service == "scheduler" and preload:
        command = [sys.executable, "-c", _PRELOAD_MAIN, ",".join(preload), service]
    if service == "api-server":
        command += ["--host", "127.0.0.1", "--port", str(port)]
    elif service in ("scheduler", "triggerer"):
        command.append("--skip-serve-logs")
    return command


def _death_signal_setter():
    """On Linux, a function for the child (between fork and exec) asking for SIGTERM when its parent dies,
    so that services do not outlive a launcher that was killed outright; else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, in the parent: no import after fork
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


def _start(command: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Note: the death signal follows the thread that started the service: start from a long-lived thread."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, away from the terminal's Ctrl-C
            preexec_fn=_death_signal_setter(),
        )


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


MIGRATED_STAMP = ".local_airflow_migrated.json"


def _sqlite_path(env: dict[str, str]) -> Path | None:
    """The metadata database file when it is SQLite and plainly configured (env or airflow.cfg), else None."""
    if any(
        key in env for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET")
    ):
        return None
    home = Path(os.path.expanduser(env.get("AIRFLOW_HOME", "~/airflow")))
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if url is None:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        with contextlib.suppress(configparser.Error, OSError):
            parser.read(os.path.expanduser(env.get("AIRFLOW_CONFIG", str(home / "airflow.cfg"))))
        url = parser.get("database", "sql_alchemy_conn", fallback=f"sqlite:///{home / 'airflow.db'}")
    if not url.startswith("sqlite:////"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?")[0])


def _migration_state(env: dict[str, str]) -> dict | None:
    """What identifies an up-to-date SQLite database: its file, its Alembic revisions, Airflow's version."""
    path = _sqlite_path(env)
    if path is None or not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            revisions = sorted(
                row[0]
                for table in ("alembic_version", "alembic_version_fab")
                for row in db.execute(f"SELECT version_num FROM {table}")
            )
        version = importlib.metadata.version("apache-airflow")
    except (sqlite3.Error, importlib.metadata.PackageNotFoundError):
        return None
    return {"database": str(path), "revisions": revisions, "airflow": version}


def migrate_db(env: dict[str, str], log_path: Path, timeout: float = 600) -> float:
    """`airflow db migrate`, skipped when this launcher migrated the same SQLite file for this Airflow
    version before and its revisions have not changed since (the CLI costs ~12s even as a no-op); seconds."""
    started = time.monotonic()
    home = Path(os.path.expanduser(env.get("AIRFLOW_HOME", "~/airflow")))
    stamp = home / MIGRATED_STAMP
    state = _migration_state(env)
    with contextlib.suppress(OSError, ValueError):
        if state is not None and jsonlib.loads(stamp.read_text()) == state:
            return time.monotonic() - started
    with log_path.open("ab") as log:
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
        )
    if result.returncode != 0:
        raise AirflowStartError(f"airflow db migrate failed ({log_path}):\n{tail(log_path)}")
    state = _migration_state(env)
    if state is not None:
        with contextlib.suppress(OSError):
            stamp.write_text(jsonlib.dumps(state) + "\n")
    return time.monotonic() - started


def _health(base_url: str) -> dict | None:
    try:
        return _request("GET", f"{base_url}/api/v2/monitor/health", None, headers={}, timeout=5)
    except (OSError, AirflowApiError, ValueError):
        return None


def _unhealthy(health: dict | None, services: Iterable[str], since: dt.datetime) -> list[str]:
    """The services not (yet) healthy; a component only counts once it heartbeats after `since`."""
    if health is None:
        return ["api-server"]
    waiting = []
    if health.get("metadatabase", {}).get("status") != "healthy":
        waiting.append("api-server")  # its view of the metadatabase
    for service in services:
        component = HEALTH_COMPONENTS.get(service)
        if component is None:
            continue
        info = health.get(component) or {}
        beat = info.get(f"latest_{component}_heartbeat")
        fresh = False
        if beat:
            with contextlib.suppress(ValueError):
                at = dt.datetime.fromisoformat(beat)
                fresh = (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) >= since
        if info.get("status") != "healthy" or not fresh:
            waiting.append(service)
    return waiting


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) from /proc; empty where there is no /proc."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            table[int(entry)] = (int(fields[1]), fields[19])
    return table


def _descendants(roots: Iterable[int]) -> set[tuple[int, str]]:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            found.add((child, table[child][1]))
            stack.append(child)
    return found


def _alive(pid: int, start: str) -> bool:
    entry = _proc_table_entry(pid)
    return entry is not None and entry[1] == start


def _proc_table_entry(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def stop_services(processes: dict[str, subprocess.Popen], grace: float = 20) -> None:
    """SIGTERM each service's process group and everything it started; SIGKILL what is left after `grace`."""
    running = {name: proc for name, proc in processes.items() if proc.poll() is None}
    spawned = _descendants(proc.pid for proc in processes.values())
    for proc in running.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if all(proc.poll() is not None for proc in processes.values()) and not any(
            _alive(pid, start) for pid, start in spawned
        ):
            break
        time.sleep(0.2)
    spawned |= _descendants(proc.pid for proc in processes.values() if proc.poll() is None)
    for proc in processes.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for pid, start in spawned:
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for proc in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_airflow(
    env: dict[str, str],
    port: int | None = None,
    *,
    log_dir: Path,
    services: Iterable[str] = DEFAULT_SERVICES,
    startup_timeout: float = 240,
    grace: float = 20,
    migrate: bool = True,
    auth_manager: str = SIMPLE_AUTH_MANAGER,
    username: str | None = None,
    password: str | None = None,
    preload: Iterable[str] = (),
    executor: str = "LocalExecutor",
    extra: dict[str, ExtraService] | None = None,
) -> Iterator[LocalAirflow]:
    """Run Airflow's services until the block ends; yields a LocalAirflow once they report healthy.

    env is the services' whole environment (pass dict(os.environ) plus overrides); AIRFLOW_HOME and the
    DAGs folder come from it. port defaults to a free one. Raises AirflowStartError (with the tail of the
    failing service's log) when a service exits or is not healthy within startup_timeout seconds.

    auth_manager defaults to SimpleAuthManager, with one admin (`username`, default "admin") whose
    password is `password` or a random one. Any other (FAB_AUTH_MANAGER) needs `username` and `password`
    of an admin the caller has created in the metadata database (migrate_db(env, ...) first, then
    `airflow users create`), and that database already migrated with the same auth manager.

    preload names modules the scheduler imports before it starts (e.g. TASK_PRELOAD): with LocalExecutor every
    task process is forked from it and finds them loaded, instead of importing them again in each task; the
    scheduler's start-up pays for them once. A module that fails to import stops the scheduler at start.

    executor sets AIRFLOW__CORE__EXECUTOR for every service; `extra` services (Celery workers, say) start once
    the others are healthy, are stopped with them, and are the caller's to wait for (they have no health entry).
    """
    services = tuple(services)
    if set(extra or {}) & set(services):
        raise ValueError(f"extra services {sorted(set(extra or {}) & set(services))} share a name with a core service")
    if "api-server" not in services:
        raise ValueError("running_airflow needs the api-server among its services: health is read through it")
    port = free_port() if port is None else port
    if not port_is_free(port):
        raise AirflowStartError(f"port {port} on 127.0.0.1 is in use: pick another (or leave it to free_port())")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    password_file = None
    if auth_manager == SIMPLE_AUTH_MANAGER:
        username, password = username or USERNAME, password or secrets.token_urlsafe(12)
        password_file = log_dir / "simple_auth_manager_passwords.json"
        password_file.touch(mode=0o600)
        password_file.chmod(0o600)
        password_file.write_text(jsonlib.dumps({username: password}) + "\n")
    elif not (username and password):
        raise ValueError(f"auth manager {auth_manager} needs the username and password of a user the caller created")
    child_env = service_environment(
        env, port, password_file=password_file, jwt_secret=secrets.token_urlsafe(64), api_secret=secrets.token_hex(16),
        auth_manager=auth_manager, username=username, executor=executor,
    )  # fmt: skip
    airflow = LocalAirflow(
        base_url=f"http://127.0.0.1:{port}", username=username, password=password, port=port, log_dir=log_dir,
        env=child_env,
    )  # fmt: skip
    started = time.monotonic()
    try:
        if migrate:
            migrate_db(child_env, log_dir / "db-migrate.log", timeout=startup_timeout)
        since = dt.datetime.now(dt.UTC)  # heartbeats of jobs from an earlier launch do not count
        for service in services:
            airflow.processes[service] = _start(_command(service, port, preload), child_env, airflow.log_file(service))
        deadline = started + startup_timeout
        waiting = list(services)
        while True:
            for name, proc in airflow.processes.items():
                if proc.poll() is not None:
                    raise AirflowStartError(
                        f"airflow {name} exited with code {proc.returncode} while starting; "
                        f"{airflow.log_file(name)} ends with:\n{tail(airflow.log_file(name))}"
                    )
            waiting = _unhealthy(_health(airflow.base_url), services, since)
            if not waiting:
                break
            if time.monotonic() > deadline:
                shown = "\n".join(
                    f"--- {airflow.log_file(name)} (last lines):\n{tail(airflow.log_file(name))}"
                    for name in waiting
                    if name in airflow.processes
                )
                raise AirflowStartError(
                    f"Airflow was not healthy within {startup_timeout:.0f}s; waiting on {', '.join(waiting)}\n{shown}"
                )
            time.sleep(1)
        for name, service in (extra or {}).items():
            command = [sys.executable, "-m", "airflow", *service.args]
            airflow.processes[name] = _start(command, {**child_env, **service.env}, airflow.log_file(name), service.cwd)
        airflow.startup_seconds = time.monotonic() - started
        yield airflow
    finally:
        stop_services(airflow.processes, grace=grace)


def wait_for_dag(airflow: LocalAirflow, dag_id: str, timeout: float = 120, poll: float = 2) -> dict:
    """Poll GET /api/v2/dags/{dag_id} until the dag-processor has parsed the DAG; its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return airflow.api("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}")
        except AirflowApiError as error:
            if error.status != 404 or time.monotonic() > deadline:
                if error.status == 404:
                    errors = airflow.api("GET", "/api/v2/importErrors").get("import_errors", [])
                    raise TimeoutError(
                        f"DAG {dag_id} not parsed within {timeout:.0f}s; import errors: {errors}"
                    ) from None
                raise
        time.sleep(poll)


def unpause(airflow: LocalAirflow, dag_id: str) -> dict:
    """PATCH /api/v2/dags/{dag_id} with is_paused false."""
    path = f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}?update_mask=is_paused"
    return airflow.api("PATCH", path, {"is_paused": False})


def trigger(airflow: LocalAirflow, dag_id: str, conf: dict | None = None, logical_date: str | None = None) -> dict:
    """POST /api/v2/dags/{dag_id}/dagRuns; the new run's JSON (its id is ["dag_run_id"])."""
    body = {"logical_date": logical_date, "conf": conf or {}}
    return airflow.api("POST", f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns", body)


def wait_until_parked(airflow: LocalAirflow, dag_id: str, task_id: str, run_id: str, timeout: float = 180) -> None:
    """Until the scheduler has heard that a human-in-the-loop task's process ended, the task waiting for input.

    An answer before that races Airflow 3.3.2: it re-queues the task, the late "process ended" event then finds
    it queued, and the scheduler retries it, which asks again and waits for an answer already given (seen
    under load on a 2-core machine). Only the scheduler's log tells when that event has been handled.
    """
    marker = f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id},"
    deadline = time.monotonic() + timeout
    while True:
        lines = airflow.log_file("scheduler").read_text(errors="replace").splitlines()
        if any(marker in line and "state=awaiting_input" in line for line in lines):
            return
        if time.monotonic() > deadline:
            raise AirflowStartError(f"the scheduler never saw {task_id} wait for input ({airflow.log_dir})")
        time.sleep(1)


def list_runs(airflow: LocalAirflow, dag_id: str, limit: int = 100) -> list[dict]:
    """The DAG's runs, newest first."""
    path = f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns?order_by=-id&limit={limit}"
    return airflow.api("GET", path)["dag_runs"]


def wait_for_run(
    airflow: LocalAirflow,
    dag_id: str,
    run_id: str | None = None,
    timeout: float = 300,
    *,
    ignore: Iterable[str] = (),
    poll: float = 2,
) -> dict:
    """Poll until a run of dag_id is finished (success or failed); its JSON. Does not raise on failure.

    With run_id, that run; without, the newest run (by id) whose id is not in `ignore`, waiting for one
    to exist (asset-triggered runs appear once the scheduler has seen the asset event). TimeoutError
    (with the last state seen) when none finishes in time.
    """
    ignore = set(ignore)
    quoted = urllib.parse.quote(dag_id, safe="")
    deadline = time.monotonic() + timeout
    last: dict | None = None
    while True:
        if run_id is not None:
            try:
                last = airflow.api("GET", f"/api/v2/dags/{quoted}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
            except AirflowApiError as error:
                if error.status != 404:
                    raise
                last = None
        else:
            runs = [run for run in list_runs(airflow, dag_id, limit=len(ignore) + 1) if run["dag_run_id"] not in ignore]
            last = runs[0] if runs else None
        if last is not None and last.get("state") in FINISHED_STATES:
            return last
        if time.monotonic() > deadline:
            seen = f"{last['dag_run_id']} is {last['state']}" if last else "no run yet"
            raise TimeoutError(f"no finished run of {dag_id} within {timeout:.0f}s ({seen}); logs in {airflow.log_dir}")
        time.sleep(poll)


def backfill(
    airflow: LocalAirflow,
    dag_id: str,
    from_date: str,
    to_date: str,
    *,
    conf: dict | None = None,
    reprocess: str = "none",
    max_active_runs: int = 10,
    run_backwards: bool = False,
    timeout: float = 300,
) -> dict:
    """POST /api/v2/backfills: Airflow's own backfill of dag_id, one run per schedule time in [from, to]; its JSON.

    The runs (run type "backfill", each with the logical date of its cron time) are created at once and run by
    the scheduler, at most max_active_runs at a time and apart from the DAG's own max_active_runs; the DAG must
    be unpaused, or their tasks are never scheduled. reprocess is "none" (skip dates that already have a run),
    "failed" or "completed" (clear those runs and run them again, under the same run ids).

    On a SQLite metadata database Airflow answers 503 ("Database is locked") when the scheduler holds the
    write lock while the runs are created, and removes the half-made backfill: asked again until `timeout`
    seconds have passed (a 409 after a 503 is that backfill not yet removed; the scheduler closes it within
    2 minutes). Any other HTTP error is raised at once.
    """
    body = {
        "dag_id": dag_id, "from_date": from_date, "to_date": to_date, "dag_run_conf": conf or {},
        "reprocess_behavior": reprocess, "max_active_runs": max_active_runs, "run_backwards": run_backwards,
    }  # fmt: skip
    deadline = time.monotonic() + timeout
    locked = False
    while True:
        try:
            return airflow.api("POST", "/api/v2/backfills", body)
        except AirflowApiError as error:
            locked = locked or error.status == 503
            if not (error.status == 503 or (locked and error.status == 409)) or time.monotonic() > deadline:
                raise
        time.sleep(2)


def wait_for_backfill(airflow: LocalAirflow, backfill_id: int, timeout: float = 900, poll: float = 3) -> dict:
    """Poll GET /api/v2/backfills/{id} until the scheduler marks it complete (no run queued or running); its JSON.

    TimeoutError (with the states of its runs so far) when it is not complete in time. Does not raise on
    failed runs: read them with backfill_runs.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = airflow.api("GET", f"/api/v2/backfills/{int(backfill_id)}")
        if found.get("completed_at"):
            return found
        if time.monotonic() > deadline:
            runs = backfill_runs(airflow, found["dag_id"], found["from_date"], found["to_date"])
            states = ", ".join(f"{r['logical_date']}: {r['state']}" for r in runs) or "no runs yet"
            raise TimeoutError(
                f"backfill {backfill_id} not complete within {timeout:.0f}s ({states}); {airflow.log_dir}"
            )
        time.sleep(poll)


def backfill_runs(airflow: LocalAirflow, dag_id: str, from_date: str, to_date: str) -> list[dict]:
    """The DAG's backfill runs with logical dates in [from_date, to_date], oldest first."""
    query = urllib.parse.urlencode(
        {
            "run_type": "backfill",
            "logical_date_gte": from_date,
            "logical_date_lte": to_date,
            "order_by": "logical_date",
            "limit": 1000,
        }  # fmt: skip
    )
    return airflow.api("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns?{query}")["dag_runs"]
