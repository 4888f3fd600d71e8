"""Per-pipeline permissions under the FAB auth manager (the compose stack's), on a real api-server, scheduler,
dag-processor and triggerer, each user calling over HTTP with a token of their own.

The pipeline names `access: {approvers: [demo_approvers], rollbackers: [demo_operators]}`. Its roles are set up
with the commands `docker/airflow/airflow-init.sh` runs (`lifecycle.ui.access.role_setup_commands`), its DAGs'
access_control reaches FAB through the dag-processor, and:

- `ordinary` (Viewer) reads the approval request but may neither answer it nor roll back;
- `operator` (Viewer + demo_operators) may not answer it, and rolls the champion back;
- `plain` (the built-in User role, which edits every DAG) is refused the rollback by the rollbacker check;
- `approver` (Viewer + demo_approvers) may not roll back, and approves: the run promotes, recorded as theirs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lifecycle.devtools import local_airflow as la

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
PIPELINE = "demo_churn"
DAG_ID = f"{PIPELINE}__retrain"
ROLLBACK = f"/lifecycle/pipelines/{PIPELINE}/rollback"
USERS = {
    "admin": ["Admin"],
    "ordinary": ["Viewer"],
    "approver": ["Viewer", "demo_approvers"],
    "operator": ["Viewer", "demo_operators"],
    "plain": ["User"],
}
# `airflow <command>` for each command, in one interpreter: as processes of their own they cost ~9 s each here.
CLI = textwrap.dedent(
    """
    import json, sys
    from airflow.cli import cli_parser

    parser = cli_parser.get_parser()
    for argv in json.loads(sys.argv[1]):
        print("$ airflow", *argv, flush=True)
        args = parser.parse_args(argv)
        args.func(args)
    """
)


def airflow_cli(env: dict[str, str], commands: list[list[str]], log: Path) -> None:
    with log.open("ab") as out:
        result = subprocess.run(
            [sys.executable, "-c", CLI, json.dumps(commands)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    assert result.returncode == 0, f"airflow CLI failed, see {log}:\n{la.tail(log)}"


def status(user: la.LocalAirflow, method: str, path: str, body: object = None, **kwargs) -> tuple[int, str]:
    """The HTTP status and body of a call as `user` (errors included)."""
    try:
        return 200, json.dumps(user.api(method, path, body, **kwargs))
    except la.AirflowApiError as err:
        return err.status, err.body


def rollback(user: la.LocalAirflow, version: int, expected_current: int | None = None) -> tuple[int, str]:
    body = {"version": version, "expected_current": expected_current, "reason": f"{user.username} rolls back"}
    return status(user, "POST", ROLLBACK, body, headers={"X-Lifecycle-Action": "rollback"})


def page(user: la.LocalAirflow) -> str:
    request = urllib.request.Request(
        f"{user.base_url}/lifecycle/?pipeline={PIPELINE}", headers={"Authorization": f"Bearer {user.token()}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


def task_state(airflow: la.LocalAirflow, run_id: str, task_id: str) -> str | None:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
    code, body = status(airflow, "GET", path)
    if code == 404:
        return None
    assert code == 200, body
    return json.loads(body).get("state")


def permissions(airflow: la.LocalAirflow, role: str) -> set[tuple[str, str]]:
    answer = airflow.api("GET", f"/auth/fab/v1/roles/{role}")
    return {(p["action"]["name"], p["resource"]["name"]) for p in answer["actions"]}


def test_pipeline_roles_decide_who_approves_and_who_rolls_back(demo_data, tmp_path):
    from lifecycle.config.pipeline import load_all
    from lifecycle.ui.access import role_setup_commands

    started = time.monotonic()
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    text = (REPO / "include" / "pipelines" / f"{PIPELINE}.yaml").read_text()
    assert "  mode: enforce" in text and "\naccess:" not in text
    text = text.replace("  mode: enforce", "  mode: approve")
    text += "\naccess:\n  approvers: [demo_approvers]\n  rollbackers: [demo_operators]\n"
    (pipelines / f"{PIPELINE}.yaml").write_text(text)
    env = {
        **os.environ,
        "PIPELINES_DIR": str(pipelines),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__AUTH_MANAGER": la.FAB_AUTH_MANAGER,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{tmp_path / 'artifacts'}",
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{tmp_path / 'predictions.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    # `airflow db migrate` creates FAB's tables too when FAB is the auth manager (no `airflow fab-db migrate`).
    la.migrate_db(env, logs / "db-migrate.log")
    passwords = {name: secrets.token_urlsafe(12) for name in USERS}
    users = []
    for name, roles in USERS.items():
        users.append(
            # --password=...: a token starting with "-" would read as another option after a bare -p
            ["users", "create", "-u", name, f"--password={passwords[name]}", "-e", f"{name}@example.com"]
            + ["-f", name, "-l", "Test", "-r", roles[0]]
        )
        users += [["users", "add-role", "-u", name, "-r", role] for role in roles[1:]]
    # The roles before any DAG is parsed: FAB refuses a DAG whose access_control names a missing role.
    airflow_cli(env, role_setup_commands(load_all(pipelines)) + users, logs / "airflow-cli.log")
    setup_seconds = time.monotonic() - started

    conf = {
        "as_of_date": "2026-02-10",
        "reason": "permissions test",
        "grid": {"num_leaves": [15], "n_estimators": [100]},
    }
    with la.running_airflow(
        env, log_dir=logs, auth_manager=la.FAB_AUTH_MANAGER, username="admin", password=passwords["admin"]
    ) as airflow:
        assert airflow.api("GET", "/api/v2/monitor/health")  # the admin's FAB login works
        user = {name: airflow.as_user(name, passwords[name]) for name in USERS}
        la.wait_for_dag(airflow, DAG_ID)
        # The dag-processor synced the YAML's access onto the roles; the set-up gave HITL to approvers only.
        approvers, operators = permissions(airflow, "demo_approvers"), permissions(airflow, "demo_operators")
        for held in (approvers, operators):
            assert {("can_read", f"DAG:{DAG_ID}"), ("can_edit", f"DAG:{DAG_ID}")} <= held
            assert ("can_read", f"DAG:{PIPELINE}__batch_predict") in held
            assert ("can_edit", f"DAG:{PIPELINE}__batch_predict") not in held
        assert ("can_edit", "HITL Detail") in approvers and ("can_edit", "HITL Detail") not in operators

        la.unpause(airflow, DAG_ID)
        run_id = la.trigger(airflow, DAG_ID, conf)["dag_run_id"]
        deadline = time.monotonic() + 600
        while (state := task_state(airflow, run_id, "evaluation.approve")) not in ("awaiting_input", "deferred"):
            assert state not in ("failed", "upstream_failed", "skipped"), f"approval task is {state}"
            assert time.monotonic() < deadline, f"the approval request never came (last state {state})"
            time.sleep(3)
        details = (
            f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
            "/taskInstances/evaluation.approve/-1/hitlDetails"
        )
        approve = {"chosen_options": ["Approve"]}

        # Reading the request is everyone's; answering it is the approvers'.
        assert user["ordinary"].api("GET", details)["options"] == ["Approve", "Reject"]
        for name in ("ordinary", "operator"):
            code, body = status(user[name], "PATCH", details, approve)
            assert code == 403, f"{name} answered the approval: {code} {body}"

        # Rolling back: Airflow's DAG edit check refuses `ordinary`; the rollbacker check refuses the rest,
        # naming the roles that may.
        code, body = rollback(user["ordinary"], 1)
        assert code == 403, body
        for name in ("approver", "plain"):
            code, body = rollback(user[name], 1)
            assert code == 403, f"{name}: {code} {body}"
            assert "demo_operators" in body and "Admin" in body, body

        la.wait_until_parked(airflow, DAG_ID, "evaluation.approve", run_id)
        code, body = status(user["approver"], "PATCH", details, approve)
        assert code == 200, body
        assert json.loads(body)["responded_by"]["name"] == "approver"
        run = la.wait_for_run(airflow, DAG_ID, run_id, timeout=300)
        assert run["state"] == "success"

        # The test's own client on the run's store: os.environ is the session's (other tests change it).
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
        first = client.get_model_version_by_alias(PIPELINE, "champion")
        assert str(first.version) == "1"
        assert first.tags["gate.approval"] == "approved"
        assert first.tags["gate.approved_by"] == "approver"
        # A second version and champion, as the next promotion would leave them (a second retrain and
        # approval would double the test's time), so that there is a version to roll back to.
        # (From the model's artifacts: a models:/ source would be resolved through MLflow's global tracking URI.)
        artifacts = client.get_logged_model(first.source.removeprefix("models:/")).artifact_location
        second = client.create_model_version(PIPELINE, artifacts, run_id=first.run_id)
        client.set_registered_model_alias(PIPELINE, "champion", second.version)

        assert 'id="rollback-form"' in page(user["operator"])
        assert 'id="rollback-form"' not in page(user["approver"])
        code, body = rollback(user["approver"], 1, expected_current=2)
        assert code == 403, body
        code, body = rollback(user["operator"], 1, expected_current=2)
        assert code == 200, body
        assert json.loads(body)["by"] == "operator"
        back = client.get_model_version_by_alias(PIPELINE, "champion")
        assert str(back.version) == "1" and back.tags["rollback.by"] == "operator"
    print(
        f"set-up {setup_seconds:.0f}s, Airflow up in {airflow.startup_seconds:.0f}s, total {time.monotonic() - started:.0f}s"
    )
