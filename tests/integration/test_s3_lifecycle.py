"""The lifecycle against a real S3 HTTP endpoint (moto's server on a loopback port): sources, artifacts,
MLflow's model artifacts and the champion all live in the bucket; when the endpoint is down, tasks retry,
fail with a clear error, and nothing is registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

pytestmark = pytest.mark.airflow
BUCKET = "lifecycle-test"


def _client(url: str):
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


@pytest.fixture(scope="module")
def s3_env(s3_endpoint, demo_data, airflow_db, tmp_path_factory):
    """The environment of a deployment on S3: its own MLflow store and predictions database, data in the bucket."""
    client = _client(s3_endpoint["url"])
    client.create_bucket(Bucket=BUCKET)
    for path in demo_data.rglob("*"):
        if path.is_file() and ("2026-02" in str(path) or "2026-01" in str(path) or path.name == "accounts.csv"):
            client.upload_file(str(path), BUCKET, f"data/demo_churn/{path.relative_to(demo_data)}")
    state = tmp_path_factory.mktemp("s3-state")
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": s3_endpoint["url"], "region_name": "us-east-1"},
    }
    return {
        **os.environ,
        "ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts",
        "DATA_ROOT": f"s3://{BUCKET}/data",
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": f"s3://{BUCKET}/mlflow",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint["url"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{state / 'predictions.db'}",
    }


def _run(env: dict, dag_id: str, date: str, conf: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)


def _keys(url: str, prefix: str) -> list[str]:
    pages = _client(url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _python(env: dict, code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained_on_s3(s3_env):
    result = _run(s3_env, "demo_churn__retrain", "2026-02-10", {"reason": "s3 lifecycle"})
    assert result.returncode == 0, result.stdout[-4000:]
    return s3_env


def test_retrain_writes_every_artifact_to_the_bucket(trained_on_s3, s3_endpoint):
    keys = _keys(s3_endpoint["url"], "artifacts/demo_churn/")
    names = {"/".join(k.split("/")[3:]) for k in keys}
    assert {
        "raw/snapshot.parquet",
        "validation/report.json",
        "features/train.parquet",
        "features/holdout.parquet",
        "features/preprocessor.joblib",
        "evaluation/decision.json",
        "evaluation/report.html",
        "evaluation/report.png",
    } <= names
    assert len({k.split("/")[2] for k in keys}) == 1, "one run, one folder"
    model_files = _keys(s3_endpoint["url"], "mlflow/")
    assert any(k.endswith("/MLmodel") for k in model_files), "MLflow's model artifacts are in the bucket"
    run_folder = keys[0].split("/")[2]
    local_root = Path(os.environ["ARTIFACT_ROOT"].removeprefix("file://"))
    assert not (local_root / "demo_churn" / run_folder).exists(), "nothing of this run in the local store"


def test_champion_loads_back_from_the_bucket_with_its_lineage(trained_on_s3):
    code = """
import json, mlflow, pandas as pd
from lifecycle.persistence import storage
from lifecycle.registry.tracking import champion, champion_uri, mlflow_client
mlflow_client()
version = champion("demo_churn")
model = mlflow.pyfunc.load_model(champion_uri("demo_churn"))
snapshot = storage.read_parquet(version.tags["snapshot.uri"])
scores = model.predict(snapshot.drop(columns=["churned"]).head(20))
print(json.dumps({"version": str(version.version), "uri": version.tags["snapshot.uri"],
                  "source": version.source, "n": len(scores)}))
"""
    found = json.loads(_python(trained_on_s3, code))
    assert found["version"] == "1" and found["n"] == 20
    assert found["uri"].startswith(f"s3://{BUCKET}/artifacts/demo_churn/")


def test_batch_prediction_reads_and_writes_through_the_bucket(trained_on_s3, s3_endpoint):
    result = _run(trained_on_s3, "demo_churn__batch_predict", "2026-02-12")
    assert result.returncode == 0, result.stdout[-4000:]
    keys = _keys(s3_endpoint["url"], "artifacts/demo_churn/")
    assert any(k.endswith("prediction/batch.parquet") for k in keys)
    assert any("/prediction/scores/part-" in k for k in keys)
    code = """
import json, os, sqlalchemy as sa
engine = sa.create_engine(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
with engine.connect() as c:
    print(json.dumps([list(r) for r in c.execute(sa.text(
        "select count(*), min(model_version), min(batch_key) from predictions"))]))
"""
    rows, version, batch_key = json.loads(_python(trained_on_s3, code))[0]
    assert rows == 600 and version == "1" and batch_key.startswith("2026-02-12")


def test_endpoint_down_retries_then_fails_clearly_and_registers_nothing(trained_on_s3, s3_endpoint):
    s3_endpoint["process"].terminate()
    s3_endpoint["process"].wait(timeout=10)
    env = {**trained_on_s3, "LIFECYCLE_TASK_RETRIES": "1", "LIFECYCLE_RETRY_DELAY_SECONDS": "1"}
    result = _run(env, "demo_churn__retrain", "2026-02-11", {"reason": "endpoint down"})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "could not" in output and f"s3://{BUCKET}/" in output, output[-3000:]
    assert "try_number=2" in output or "up_for_retry" in output, "the failing task was retried"
    code = """
import json
from lifecycle.registry.tracking import mlflow_client
print(json.dumps([str(v.version) for v in mlflow_client().search_model_versions("name='demo_churn'")]))
"""
    assert json.loads(_python(trained_on_s3, code)) == ["1"], "no version registered while the store was down"
