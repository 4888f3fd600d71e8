"""Proof that a champion is self-contained: it loads, predicts and serves from a clean virtualenv.

The virtualenv is built in a temporary folder outside the repository from nothing but the model's own
`requirements.txt`; `lifecycle` is not importable there. Its scores, through `mlflow.pyfunc` and through
`mlflow models serve -m models:/<name>@champion`, are compared with the rows batch prediction wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from lifecycle.config.pipeline import PipelineConfig

PREDICT_SCRIPT = """
import json, sys
import mlflow, pandas as pd
try:
    import lifecycle
    sys.exit("lifecycle is importable in the clean virtualenv: the check proves nothing")
except ImportError:
    pass
rows = pd.DataFrame(**json.load(open(sys.argv[2])))
print(json.dumps(mlflow.pyfunc.load_model(sys.argv[1]).predict(rows).tolist()))
"""


class PortabilityError(RuntimeError):
    """The model did not load, predict or serve outside the repository, or its scores differ."""


def _uv() -> str:
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise PortabilityError("uv is needed to build the clean virtualenv (pip install uv)")
    return found


def build_venv(requirements: Path, directory: Path, extra: list[str]) -> Path:
    """A virtualenv with only the model's requirements (plus the store's driver in `extra`)."""
    uv = _uv()
    subprocess.run([uv, "venv", "--quiet", "--python", "3.11", str(directory)], check=True, capture_output=True)
    python = directory / "bin" / "python"
    done = subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(python), "-r", str(requirements), *extra],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise PortabilityError(f"installing {requirements} failed: {done.stderr[-2000:]}")
    return python


def _clean_env(tracking_uri: str) -> dict[str, str]:
    """No PYTHONPATH, no repository on the path: only what a stranger's shell would have, plus the store."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # fmt: skip
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "MLFLOW_TRACKING_URI": tracking_uri}


def _one_score(task: str, predictions: Any) -> list[float]:
    """The number per row the predictions table stores: P(positive), top-class probability, value."""
    import numpy as np

    values = np.asarray(predictions, dtype=float)
    if values.ndim == 2:
        values = values[:, 1] if task == "binary" else values.max(axis=1)
    return values.ravel().tolist()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_and_score(python: Path, model_uri: str, payload: dict, env: dict[str, str], cwd: Path) -> Any:
    """Start `mlflow models serve` from the clean virtualenv, POST the rows, stop it."""
    port = _free_port()
    log = cwd / "serve.log"
    env = {**env, "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}"}  # as in an activated venv
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(python), "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise PortabilityError(f"mlflow models serve did not come up: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"dataframe_split": payload}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(30)


def _stored_scores(config: PipelineConfig, database_url: str, version: str, batch_date: str | None) -> tuple:
    """(batch day, {entity id: score}) of the newest batch (or the given one) this version scored."""
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import engine_for, predictions_table

    table = predictions_table(sa.MetaData(), config.prediction.table)
    mine = table.c.pipeline == config.name
    if version != "%":  # "%": whichever version scored the newest batch
        mine = mine & (table.c.model_version == version)
    engine = engine_for(database_url)
    try:
        if not sa.inspect(engine).has_table(table.name):
            return None, {}
        with engine.connect() as conn:
            day = (
                dt.date.fromisoformat(batch_date) if batch_date
                else conn.execute(sa.select(sa.func.max(table.c.batch_key)).where(mine)).scalar()
            )  # fmt: skip
            if day is None:
                return None, {}
            rows = conn.execute(sa.select(table.c.entity_id, table.c.score).where(mine, table.c.batch_key == day))
            return (day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])), dict(rows.all())
    finally:
        engine.dispose()


def check(
    config: PipelineConfig,
    database_url: str,
    batch_date: str | None = None,
    connection_urls: dict[str, str] | None = None,
    *,
    serve: bool = True,
) -> dict[str, Any]:
    """Score a batch with the champion in a clean virtualenv; compare with what batch prediction wrote."""
    import mlflow
    import pandas as pd

    from lifecycle.config.settings import get_settings
    from lifecycle.ml.features import input_columns
    from lifecycle.ml.scoring import stage_batch
    from lifecycle.registry import tracking

    settings = get_settings()
    champion = tracking.champion(config.registered_model_name)
    if champion is None:
        raise PortabilityError(f"{config.registered_model_name} has no champion yet: run the retrain first")
    model_uri = tracking.champion_uri(config.registered_model_name)
    day, stored = _stored_scores(config, database_url, str(champion.version), batch_date)
    reference = f"the rows batch prediction wrote to {config.prediction.table}"
    if not stored and batch_date is None:  # a champion that has not scored a batch yet: its newest batch's rows
        day, stored = _stored_scores(config, database_url, "%", None)
        reference = "batch prediction's own scoring (model_trust.load + scoring.predict) in this environment"
    if not stored:
        raise PortabilityError(
            f"no predictions of {config.name}{f' for batch {batch_date}' if batch_date else ''} in "
            f"{config.prediction.table}: score a batch first"
        )
    with tempfile.TemporaryDirectory(prefix="portable-model-") as tmp:
        work = Path(tmp)
        batch = stage_batch(config, day, (work / "batch.parquet").as_uri(), None, connection_urls or {})
        frame = pd.read_parquet(batch["uri"].removeprefix("file://"))
        frame = frame[frame[config.id_column].astype(str).isin(stored.keys())]
        rows = frame[input_columns(config, frame)]
        if reference.startswith("batch prediction's own"):
            stored = dict(zip(frame[config.id_column].astype(str), _in_process(config, model_uri, rows), strict=True))
        payload = json.loads(rows.to_json(orient="split", index=False))
        (work / "rows.json").write_text(json.dumps(payload))
        requirements = Path(mlflow.artifacts.download_artifacts(f"{model_uri}/requirements.txt", dst_path=tmp))
        started = time.perf_counter()
        extra = ["boto3"] if "s3://" in (settings.mlflow_artifact_root + str(champion.source)) else []
        python = build_venv(requirements, work / "venv", extra)
        venv_seconds = time.perf_counter() - started
        env = _clean_env(settings.mlflow_tracking_uri)
        (work / "predict.py").write_text(PREDICT_SCRIPT)
        done = subprocess.run([str(python), "predict.py", model_uri, "rows.json"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if done.returncode:
            raise PortabilityError(f"{model_uri} did not load in the clean virtualenv: {done.stderr[-3000:]}")
        expected = [stored[i] for i in frame[config.id_column].astype(str)]
        result = {
            "model_uri": model_uri,
            "version": str(champion.version),
            "batch_key": day.isoformat(),
            "compared_with": reference,
            "rows": len(expected),
            "venv_seconds": round(venv_seconds, 1),
            "requirements": requirements.read_text().split(),
            "pyfunc_max_abs_diff": _max_diff(_one_score(config.task, json.loads(done.stdout)), expected),
        }
        if serve:
            served = serve_and_score(python, model_uri, payload, env, work)
            result["serve_max_abs_diff"] = _max_diff(_one_score(config.task, served), expected)
    return result


def _in_process(config: PipelineConfig, model_uri: str, rows: Any) -> list[float]:
    from lifecycle.ml.scoring import predict
    from lifecycle.registry import model_trust

    score, _ = predict(config, model_trust.load(model_uri), rows, config.prediction.threshold)
    return [float(v) for v in score]


def _max_diff(got: list[float], expected: list[float]) -> float:
    if len(got) != len(expected):
        raise PortabilityError(f"{len(got)} scores for {len(expected)} rows")
    return max((abs(a - b) for a, b in zip(got, expected, strict=True)), default=0.0)
