"""Every test session gets its own embedded stack in a temporary folder, set before anything imports Airflow."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lifecycle.config.settings import embedded_environment

REPO = Path(__file__).resolve().parents[1]
SESSION_DIR = Path(tempfile.mkdtemp(prefix="lifecycle-tests-"))

# The embedded default of lifecycle.config.settings, its state under this session's folder, plus what only tests set.
# Every value is set, not defaulted: a variable exported in the developer's shell must not reach the tests.
TEST_ENV = {
    **embedded_environment(SESSION_DIR),
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "LIFECYCLE_RETRY_DELAY_SECONDS": "1",
    "DO_NOT_TRACK": "true",
}
for _value in TEST_ENV.values():  # SQLite creates its file, not the folder it lives in
    if _value.startswith("sqlite:///"):
        Path(_value.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
os.environ.update(TEST_ENV)

# The demo data the Airflow tests train on: 60 days, drift injected from day 50.
DATA_START = dt.date(2026, 1, 1)
DATA_END = dt.date(2026, 3, 1)
DRIFT_FROM = dt.date(2026, 2, 20)


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    if os.environ.get("KEEP_TEST_STATE") != "1":
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_data() -> Path:
    from lifecycle.devtools import demo_data

    root = Path(os.environ["DATA_ROOT"]) / "demo_churn"
    demo_data.write(root, DATA_START, DATA_END, rows_per_day=600, drift_from=DRIFT_FROM)
    return root


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's SQLite metadata database, migrated once per session (in a subprocess, like a user would)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ)


@pytest.fixture(scope="session")
def dag_runner():
    return run_dag


def run_dag(
    dag_id: str, logical_date: str, conf: dict | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    """`airflow dags test` in a fresh process: the real task runner, and no OpenMP state inherited from pytest."""
    import json

    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, logical_date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ)


@pytest.fixture(scope="session")
def champion(demo_data, airflow_db) -> subprocess.CompletedProcess:
    """One retrain through Airflow for the whole session: it creates the first champion (version 1)."""
    result = run_dag("demo_churn__retrain", "2026-02-10", {"reason": "first champion"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """The corruption catalogue's totals: cases caught at the stage they name, of the cases tried."""
    totals: dict[str, list[int]] = {}
    for outcome in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") != "call":
                continue
            properties = dict(getattr(report, "user_properties", []))
            stage = properties.get("catalogue")
            if stage is None:
                continue
            cases = 1 + int(properties.get("catalogue_extra", 0))
            caught, tried = totals.setdefault(stage, [0, 0])
            totals[stage] = [caught + (cases if outcome == "passed" else 0), tried + cases]
    if totals:
        terminalreporter.section("corruption catalogue")
        kinds: dict[str, list[int]] = {}
        for stage, (caught, tried) in sorted(totals.items()):
            terminalreporter.write_line(f"{stage}: caught {caught} / {tried}")
            kind = stage.split(":")[0]
            kinds[kind] = [a + b for a, b in zip(kinds.get(kind, [0, 0]), (caught, tried), strict=True)]
        for kind, (caught, tried) in sorted(kinds.items()):
            terminalreporter.write_line(f"{kind}: caught {caught} / {tried} in all")
