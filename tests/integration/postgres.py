"""A PostgreSQL database of its own for each test session (or benchmark run), dropped at the end.

The server, in this order:

1. `TEST_POSTGRES_URL` when it is set (postgres://, postgresql:// or postgresql+psycopg://);
2. 127.0.0.1:5432 as user postgres, when something answers there;
3. a throwaway cluster started from the installed binaries (/usr/lib/postgresql/*/bin/initdb and pg_ctl) in a
   temporary folder on a free port, run as the `postgres` user when we are root (initdb refuses root).

No server at all is an error, never a skip: CI must run these tests.

On that server a fresh database `lifecycle_test_<random>` is created, so concurrent runs never collide, and
dropped at the end. When the role may not create databases, a fresh schema in the given database is used instead.

Tests load this file by path (tests/ is not a package) and use the `postgres_url` fixture; the benchmarks use
`throwaway_database()` directly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

ENV_VAR = "TEST_POSTGRES_URL"
LOCAL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started."""


def _normalize(url: str) -> sa.URL:
    if url.startswith(("postgres://", "postgresql://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return sa.make_url(url)


def _reachable(url: sa.URL, timeout: int = 3) -> str | None:
    """None when a connection works, else the error text."""
    import psycopg

    try:
        with psycopg.connect(**_psycopg_kwargs(url), connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as err:
        return str(err).strip()


def _psycopg_kwargs(url: sa.URL) -> dict[str, object]:
    kwargs: dict[str, object] = {"dbname": url.database or "postgres", "user": url.username or "postgres"}
    if url.host:
        kwargs["host"] = url.host
    if url.port:
        kwargs["port"] = url.port
    if url.password:
        kwargs["password"] = url.password
    for key, value in url.query.items():
        kwargs[key] = value if isinstance(value, str) else value[-1]
    return kwargs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[sa.URL]:
    """initdb + pg_ctl start in a temporary folder on a free port; stopped and deleted at the end."""
    bindir = _binaries()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise PostgresUnavailable(
            f"no PostgreSQL for the integration tests: {ENV_VAR} is not set, nothing answers on 127.0.0.1:5432 "
            "and no initdb/pg_ctl is installed (/usr/lib/postgresql/*/bin). Install postgresql or set "
            f"{ENV_VAR}=postgresql://user@host:port/db."
        )
    root = Path(tempfile.mkdtemp(prefix="lifecycle-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = "postgres"
        try:
            import pwd

            account = pwd.getpwnam(user)
        except KeyError as err:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run initdb as") from err
        os.chown(root, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", user, "--"] if shutil.which("runuser") else ["su", user, "-c"]
    data, port = root / "data", _free_port()

    def run(*command: str) -> subprocess.CompletedProcess:
        args = [*prefix, shlex.join(command)] if prefix[:1] == ["su"] else [*prefix, *command]
        return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=root)

    pg_ctl = str(bindir / "pg_ctl")
    try:
        initdb = (str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = (pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start")
        for command in (initdb, start):
            done = run(*command)
            if done.returncode != 0:
                log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
                raise PostgresUnavailable(f"{shlex.join(command)} failed: {done.stdout}{done.stderr}{log}")
        yield sa.URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=port, database="postgres")
    finally:
        if (data / "postmaster.pid").exists():
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _server() -> Iterator[tuple[sa.URL, str]]:
    """An admin URL and where it came from."""
    given = os.environ.get(ENV_VAR)
    if given:
        url = _normalize(given)
        error = _reachable(url, timeout=10)
        if error:
            raise PostgresUnavailable(f"{ENV_VAR}={url.render_as_string(hide_password=True)} is not reachable: {error}")
        yield url, ENV_VAR
        return
    local = sa.make_url(LOCAL_URL)
    if _reachable(local) is None:
        yield local, "127.0.0.1:5432"
        return
    with _throwaway_cluster() as url:
        yield url, f"throwaway cluster on port {url.port}"


def _wait_dropped(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        for _ in range(50):
            try:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except sa.exc.OperationalError:  # another session still connecting
                time.sleep(0.1)


@contextlib.contextmanager
def throwaway_database(label: str = "lifecycle_test") -> Iterator[str]:
    """A `postgresql+psycopg://` URL of a new, empty database (or schema), removed on exit."""
    name = f"{label}_{uuid.uuid4().hex[:12]}"
    with _server() as (server, _origin):
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            except sa.exc.ProgrammingError as err:  # no CREATEDB: a schema of our own in the given database
                if "permission denied" not in str(err):
                    raise
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
                try:
                    yield server.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(False)
                finally:
                    with admin.connect() as conn:
                        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                return
            try:
                yield server.set(database=name).render_as_string(hide_password=False)
            finally:
                _wait_dropped(admin, name)
        finally:
            admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own; fails (never skips) when there is no PostgreSQL."""
    try:
        with throwaway_database() as url:
            yield url
    except PostgresUnavailable as err:
        pytest.fail(str(err), pytrace=False)
