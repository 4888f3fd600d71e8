"""The online prediction service, for real: `python -m lifecycle serve` as a subprocess on a free port, an
MLflow store and a SQLite predictions database in a temporary folder, two LightGBM model versions logged the
way the retrain logs them, and HTTP requests from client threads.

Three pipelines are served from copies of demo_churn.yaml: `demo_churn` (no rollout), `churn_canary` (canary,
30% to version 2) and `churn_shadow` (shadow, the challenger named by the alias `candidate`). Every
prediction a test gets back is kept in a ledger; the last test stops the server with SIGTERM under load and
finds exactly the ledger's rows in `online_predictions`, plus one shadow row per `churn_shadow` prediction.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from lifecycle.config.pipeline import PipelineConfig, load_pipeline
from lifecycle.devtools import demo_data
from lifecycle.ml.features import build_preprocessor, input_columns
from lifecycle.ml.scoring import predict
from lifecycle.persistence.predictions_db import engine_for
from lifecycle.registry import model_trust, tracking
from lifecycle.serving.rollout import CHALLENGER, CHAMPION, assign_arm
from lifecycle.ui.models_page import rollback

REPO = Path(__file__).resolve().parents[2]
KEY = "serving-test-key-0123456789"
POLL_SECONDS = 0.5
CANARY_SHARE = 0.3


@dataclass
class Ledger:
    """Every prediction the service returned: (pipeline, request_id, row_index) -> (arm, version, score, label)."""

    rows: dict[tuple[str, str, int], tuple[str, str, float, str | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, pipeline: str, predictions: list[dict[str, Any]]) -> None:
        with self.lock:
            for index, p in enumerate(predictions):
                key = (pipeline, p["request_id"], index)
                assert key not in self.rows
                self.rows[key] = (p["arm"], p["model_version"], p["score"], p["label"])


@dataclass
class Store:
    root: Path
    configs: dict[str, PipelineConfig]
    models: dict[str, Any]  # "1" and "2": the fitted pipelines as the service loads them
    runs: dict[str, tuple[str, str]]  # "1" and "2": (MLflow run id, logged model URI)
    database_url: str
    rows: pd.DataFrame  # scoring rows the models never saw


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    ledger: Ledger

    def client(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def post(self, client: httpx.Client, pipeline: str, payload: Any) -> httpx.Response:
        """POST a prediction request; a 200's predictions go into the ledger."""
        response = client.post(f"/pipelines/{pipeline}/predict", json=payload)
        if response.status_code == 200:
            body = response.json()
            self.ledger.record(pipeline, body["predictions"] if "rows" in payload else [body])
        return response

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def joined(start: dt.date, days: int, rows: int, seed: int) -> pd.DataFrame:
    activity = pd.concat(
        [demo_data.activity(start + dt.timedelta(days=i), rows, seed=seed + i) for i in range(days)], ignore_index=True
    )
    return activity.merge(demo_data.accounts(), on="account_id", how="left")


def as_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON rows as a client sends them: null for a missing value, plus columns the model does not take."""
    rows = []
    for record in frame.to_dict("records"):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        row["snapshot_date"] = str(row["snapshot_date"])[:10]
        rows.append(row)
    return rows


def log_model(config: PipelineConfig, train: pd.DataFrame, **params: Any) -> tuple[str, str]:
    """Fit and log a model exactly as the retrain does (skops, trust list, runtime code, signature, digests)."""
    import lightgbm
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline

    columns = input_columns(config, train)
    classifier = lightgbm.LGBMClassifier(n_jobs=1, verbose=-1, random_state=7, **params)
    model = Pipeline([("features", build_preprocessor(config, train)), ("model", classifier)])
    model.fit(train[columns], train[config.target])
    example = train[columns].head(5)
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.name)) as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_proba(example)[:, 1]),
            pyfunc_predict_fn="predict_proba",
            serialization_format="skops",
            skops_trusted_types=model_trust.TRUSTED_TYPES,
            code_paths=[model_trust.RUNTIME_CODE],
            pip_requirements=[f"{p}=={version(p)}" for p in ("scikit-learn", "lightgbm", "skops", "mlflow")],
        )
    model_trust.record_digests(info.model_id, info.model_uri)
    return run.info.run_id, info.model_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("serving")
    pipelines = root / "pipelines"
    pipelines.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MLFLOW_ARTIFACT_ROOT", str(root / "mlartifacts"))
        env.setenv("ARTIFACT_ROOT", f"file://{root / 'artifacts'}")
        env.setenv("AIRFLOW_CONN_PREDICTIONS_DB", f"sqlite:///{root / 'predictions.db'}")
        env.setenv("PIPELINES_DIR", str(pipelines))
        demo = yaml.safe_load((REPO / "include" / "pipelines" / "demo_churn.yaml").read_text())
        rollouts = {
            "demo_churn": None,
            "churn_canary": {"mode": "canary", "challenger": 2, "share": CANARY_SHARE},
            "churn_shadow": {"mode": "shadow", "challenger": "candidate"},
        }
        for name, rollout in rollouts.items():
            data = copy.deepcopy(demo) | {"name": name}
            if rollout:
                data["serving"] = {"rollout": rollout}
            (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        configs = {name: load_pipeline(pipelines / f"{name}.yaml") for name in rollouts}

        config = configs["demo_churn"]
        first = log_model(config, joined(dt.date(2026, 1, 1), 8, 300, seed=11), n_estimators=30, num_leaves=7)
        second = log_model(config, joined(dt.date(2026, 1, 20), 8, 300, seed=41), n_estimators=80, num_leaves=15)
        database_url = os.environ["AIRFLOW_CONN_PREDICTIONS_DB"]
        engine = engine_for(database_url)
        client = tracking.mlflow_client()
        try:
            for name in rollouts:
                tracking.register_champion(first[1], name, {}, first[0], None, engine=engine, moved_by="the test")
            for name in ("churn_canary", "churn_shadow"):  # version 2 exists; version 1 stays the champion
                tracking.register_champion(second[1], name, {}, second[0], "1", engine=engine, moved_by="the test")
                rollback(client, name, 1, user="the test", reason="challenger only", engine=engine)
            client.set_registered_model_alias("churn_shadow", "candidate", "2")
            models = {"1": model_trust.load("models:/demo_churn/1"), "2": model_trust.load(second[1])}
        finally:
            engine.dispose()
        rows = joined(dt.date(2026, 2, 10), 1, 2000, seed=99)
        yield Store(root, configs, models, {"1": first, "2": second}, database_url, rows)
        import mlflow

        mlflow.set_tracking_uri(None)  # inside: the monkeypatch then restores the session's URI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(store) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store.root / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(store.root / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{store.root / 'artifacts'}",
        "AIRFLOW_CONN_PREDICTIONS_DB": store.database_url,
        "PIPELINES_DIR": str(store.root / "pipelines"),
        "LIFECYCLE_SERVING_POLL_SECONDS": str(POLL_SECONDS),
        "LIFECYCLE_SERVING_API_KEY": KEY,
    }
    log = store.root / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lifecycle", "serve", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=store.root,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", process, log, Ledger())
    try:
        deadline, ready = time.monotonic() + 120, None
        with server.client() as client:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    ready = client.get("/ready")
                    served = {p["name"]: p for p in client.get("/pipelines").json()}
                    if ready.status_code == 200 and all(
                        served[n]["challenger"] for n in ("churn_canary", "churn_shadow")
                    ):
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
            else:
                pytest.fail(f"the service did not get ready: {ready and ready.text}\n{server.output()}")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def reference(store: Store, version: str, frame: pd.DataFrame) -> tuple[list[float], list[str]]:
    config = store.configs["demo_churn"]
    score, label = predict(
        config, store.models[version], frame[input_columns(config, frame)], config.prediction.threshold
    )
    return [float(s) for s in score], [str(v) for v in label]


def test_ready_health_and_what_is_served(server):
    with server.client() as client:
        ready = client.get("/ready").json()
        served = {p["name"]: p for p in client.get("/pipelines").json()}
    assert ready["ready"] is True
    assert ready["pipelines"]["demo_churn"] == {"champion_version": "1", "challenger_version": None}
    assert ready["pipelines"]["churn_canary"] == {"champion_version": "1", "challenger_version": "2"}
    assert served["churn_shadow"]["rollout"] == {
        "mode": "shadow", "challenger": "candidate", "share": 0.0, "sticky_by": "account_id",
    }  # fmt: skip
    assert served["churn_canary"]["rollout"]["share"] == CANARY_SHARE
    assert served["demo_churn"]["champion"]["uri"] == "models:/demo_churn/1"
    assert served["demo_churn"]["prediction_log"]["database"] == "predictions_db"


def test_the_api_key_is_required_everywhere_but_health(server):
    with server.client(key=None) as anonymous, server.client(key="wrong-key") as wrong, server.client() as right:
        assert anonymous.get("/health").json() == {"status": "ok"}
        for client in (anonymous, wrong):
            for response in (client.get("/ready"), client.get("/pipelines"), client.post(
                    "/pipelines/demo_churn/predict", json={"account_id": 1})):  # fmt: skip
                assert response.status_code == 401, response.text
                assert response.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/docs").status_code == 404  # no unauthenticated API docs while a key is set
        assert right.get("/pipelines").status_code == 200


def test_single_rows_and_a_100_row_request_score_as_batch_prediction_does(server, store):
    frame = store.rows.head(100)
    scores, labels = reference(store, "1", frame)
    rows = as_rows(frame)
    assert any(v is None for row in rows for v in row.values())  # missing values travel as null
    with server.client() as client:
        for i in range(5):
            response = server.post(client, "demo_churn", rows[i])
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["score"] == scores[i] and answer["label"] == labels[i]
            assert answer["model_version"] == "1" and answer["arm"] == CHAMPION
            assert len(answer["request_id"]) == 32 and response.headers["x-request-id"] == answer["request_id"]
        response = server.post(client, "demo_churn", {"rows": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["score"] for p in predictions] == scores  # the same float64 numbers, not merely close
    assert [p["label"] for p in predictions] == labels
    assert {p["model_version"] for p in predictions} == {"1"} and len({p["request_id"] for p in predictions}) == 1
    assert 0 < sum(label == "1" for label in labels) < 100  # the threshold (0.3) splits these rows


def test_signature_errors_name_the_field_and_the_row(server, store):
    rows = as_rows(store.rows.head(4))
    del rows[1]["sessions_30d"]
    rows[2]["monthly_spend"] = "12.5"
    rows[3]["support_tickets"] = 2.5
    rows[0]["plan"] = 3
    with server.client() as client:
        response = server.post(client, "demo_churn", {"rows": rows})
        assert response.status_code == 422, response.text
        body = response.json()
        assert "row 1: field 'sessions_30d' is missing" in body["detail"]
        assert [(e["row"], e["field"]) for e in body["errors"]] == [
            (0, "plan"), (1, "sessions_30d"), (2, "monthly_spend"), (3, "support_tickets"),
        ]  # fmt: skip
        messages = {e["field"]: e["message"] for e in body["errors"]}
        assert (
            messages["monthly_spend"] == "row 2: field 'monthly_spend' must be a number (double), got the text '12.5'"
        )
        assert messages["support_tickets"] == "row 3: field 'support_tickets' must be a whole number (long), got 2.5"
        assert messages["plan"] == "row 0: field 'plan' must be text (string), got 3"

        no_id = as_rows(store.rows.head(1))[0]
        del no_id["account_id"]
        response = server.post(client, "demo_churn", no_id)
        assert response.status_code == 422 and "row 0: field 'account_id' is missing (the id column" in response.text

        response = server.post(client, "no_such_pipeline", as_rows(store.rows.head(1))[0])
        assert response.status_code == 404 and "'no_such_pipeline'" in response.text and "demo_churn" in response.text
        response = client.post("/pipelines/demo_churn/predict", content=b"{not json")
        assert response.status_code == 400 and "not JSON" in response.text
        response = server.post(client, "demo_churn", {"rows": [{}] * 10_001})
        assert response.status_code == 413 and "10001 rows" in response.text
        response = server.post(client, "demo_churn", [1, 2])
        assert response.status_code == 422 and '{"rows": [' in response.json()["detail"]


def test_canary_routes_its_share_of_entities_to_the_challenger_and_each_entity_always_to_the_same_arm(server, store):
    frame = store.rows.head(2000).copy()
    frame["account_id"] = np.arange(100_000, 102_000)  # 2,000 distinct entities
    rows = as_rows(frame)
    with server.client() as client:
        response = server.post(client, "churn_canary", {"rows": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    arms = [p["arm"] for p in predictions]
    assert arms == [assign_arm("churn_canary", i, "canary", CANARY_SHARE) for i in frame["account_id"]]
    share = arms.count(CHALLENGER) / len(arms)
    assert abs(share - CANARY_SHARE) < 0.04, share  # 4 standard deviations at 2,000 entities
    champion, challenger = reference(store, "1", frame), reference(store, "2", frame)
    for i, p in enumerate(predictions):
        expected = challenger if p["arm"] == CHALLENGER else champion
        assert (p["score"], p["label"]) == (expected[0][i], expected[1][i])
        assert p["model_version"] == ("2" if p["arm"] == CHALLENGER else "1")

    # The same entities again, one by one, with other feature values: the same arm each time.
    again = as_rows(store.rows.sample(60, random_state=3))
    with server.client() as client:
        for index, row in zip(range(0, 2000, 34), again, strict=False):
            row["account_id"] = int(frame["account_id"].iloc[index])
            response = server.post(client, "churn_canary", row)
            assert response.status_code == 200, response.text
            assert response.json()["arm"] == arms[index]


def test_shadow_answers_with_the_champion_and_logs_the_challenger_beside_it(server, store):
    frame = store.rows.iloc[200:230]
    with server.client() as client:
        response = server.post(client, "churn_shadow", {"rows": as_rows(frame)})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    scores, _ = reference(store, "1", frame)
    assert [p["score"] for p in predictions] == scores
    assert {(p["arm"], p["model_version"]) for p in predictions} == {(CHAMPION, "1")}

    request_id = predictions[0]["request_id"]
    shadow_scores, shadow_labels = reference(store, "2", frame)
    engine = engine_for(store.database_url)
    try:
        deadline, logged = time.monotonic() + 20, []
        while time.monotonic() < deadline and len(logged) < 60:
            time.sleep(0.3)
            with engine.connect() as conn:
                logged = conn.execute(
                    sa.text("select row_index, arm, model_version, score, label, shadow, entity_id "
                            "from online_predictions where request_id = :r order by shadow, row_index"),
                    {"r": request_id},
                ).all()  # fmt: skip
    finally:
        engine.dispose()
    assert len(logged) == 60, logged
    answered, shadowed = logged[:30], logged[30:]
    assert all(not row.shadow and row.arm == CHAMPION and row.model_version == "1" for row in answered)
    assert [row.score for row in answered] == scores
    assert all(row.shadow and row.arm == CHALLENGER and row.model_version == "2" for row in shadowed)
    assert [row.score for row in shadowed] == shadow_scores and [row.label for row in shadowed] == shadow_labels
    assert [row.entity_id for row in shadowed] == [str(i) for i in frame["account_id"]]


def test_single_row_latency(server, store):
    rows = as_rows(store.rows.head(500))
    seconds = []
    with server.client() as client:
        for row in rows:
            started = time.perf_counter()
            response = server.post(client, "demo_churn", row)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200
    p50, p99 = np.percentile(seconds, [50, 99]) * 1000
    print(f"\nsingle-row latency over {len(rows)} sequential requests: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert p50 < 500  # an indication, not a benchmark: the machine is shared


def _load(server: Server, rows: list[dict[str, Any]], stop: threading.Event, seen: list, failures: list, seed: int):
    """Send 1-5 rows at a time until stopped: (sent, received, versions) per answer, anything else a failure."""
    rng = np.random.default_rng(seed)
    with server.client() as client:
        while not stop.is_set():
            batch = [rows[i] for i in rng.integers(0, len(rows), rng.integers(1, 6))]
            sent = time.monotonic()
            try:
                response = server.post(client, "demo_churn", {"rows": batch})
            except httpx.HTTPError as err:
                failures.append((sent, repr(err)))
                continue
            if response.status_code != 200:
                failures.append((sent, f"{response.status_code} {response.text[:200]}"))
                continue
            seen.append((sent, time.monotonic(), {p["model_version"] for p in response.json()["predictions"]}))


def _switched(seen: list, moved: float, to: str, timeout: float) -> float:
    """Seconds from the alias move to the first answer from version `to`; every request sent after that
    answer arrived is answered by `to` alone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        first = next((received for _, received, versions in list(seen) if received > moved and to in versions), None)
        if first is not None:
            time.sleep(1.0)
            late = [versions for sent, _, versions in list(seen) if sent > first and versions != {to}]
            assert not late, f"answers from another version after the switch to {to}: {late[:5]}"
            return first - moved
        time.sleep(0.05)
    raise AssertionError(f"no answer from version {to} within {timeout}s of the alias move")


def test_moving_the_alias_under_load_fails_no_request_and_switches_within_a_few_polls(server, store):
    rows = as_rows(store.rows.iloc[300:600])
    stop, seen, failures = threading.Event(), [], []
    workers = [threading.Thread(target=_load, args=(server, rows, stop, seen, failures, s)) for s in range(4)]
    for worker in workers:
        worker.start()
    engine = engine_for(store.database_url)
    try:
        time.sleep(1.5)
        run_id, uri = store.runs["2"]
        moved = time.monotonic()  # a promotion, as the gate does it
        number = tracking.register_champion(uri, "demo_churn", {}, run_id, "1", engine=engine, moved_by="the test")
        assert number == "2"
        to_two = _switched(seen, moved, "2", timeout=30)
        moved = time.monotonic()  # and a rollback, as the Models page does it
        rollback(tracking.mlflow_client(), "demo_churn", 1, user="the test", expected_current=2, engine=engine)
        to_one = _switched(seen, moved, "1", timeout=30)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        engine.dispose()
    print(f"\n{len(seen)} answers under load; switched to version 2 in {to_two:.1f}s, back to 1 in {to_one:.1f}s")
    assert failures == [], failures[:5]
    assert len(seen) > 100
    assert to_two < 15 and to_one < 15, (to_two, to_one)  # a poll (0.5 s) plus loading the version


def test_a_version_that_fails_to_load_leaves_the_old_model_serving(server, store):
    """A champion whose files were changed after logging is refused (its digests), and version 1 answers on."""
    config = store.configs["demo_churn"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.root / 'mlflow.db'}")
        env.setenv("MLFLOW_ARTIFACT_ROOT", str(store.root / "mlartifacts"))
        run_id, uri = log_model(config, joined(dt.date(2026, 1, 5), 8, 300, seed=77), n_estimators=20)
        client = tracking.mlflow_client()
        stored = Path(client.get_logged_model(uri.removeprefix("models:/")).artifact_location.removeprefix("file://"))
        with (stored / "requirements.txt").open("a") as requirements:
            requirements.write("evil-package==6.6.6\n")  # changed in the artifact store after logging
        engine = engine_for(store.database_url)
        try:
            number = tracking.register_champion(uri, "demo_churn", {}, run_id, "1", engine=engine, moved_by="the test")
            assert number == "3"
            with server.client() as http:
                deadline, problems = time.monotonic() + 20, []
                while time.monotonic() < deadline and not problems:
                    time.sleep(POLL_SECONDS)
                    served = {p["name"]: p for p in http.get("/pipelines").json()}["demo_churn"]
                    problems = [p for p in served["registry"]["problems"] if "version 3" in p]
                assert served["registry"]["champion_version"] == "3" and served["champion"]["version"] == "1"
                assert "UntrustedModelError" in problems[0] and "changed: requirements.txt" in problems[0], problems
                response = server.post(http, "demo_churn", as_rows(store.rows.head(1))[0])
                assert response.status_code == 200 and response.json()["model_version"] == "1"
                assert http.get("/ready").status_code == 200  # a champion is loaded: the old one
            rollback(client, "demo_churn", 1, user="the test", reason="tampered", expected_current=3, engine=engine)
        finally:
            engine.dispose()
    assert "loading version 3 failed, still serving 1" in server.output()


def test_after_sigterm_under_load_the_log_holds_exactly_one_row_per_returned_prediction(server, store):
    rows = as_rows(store.rows.iloc[600:900])
    stop, seen, failures = threading.Event(), [], []
    workers = [threading.Thread(target=_load, args=(server, rows, stop, seen, failures, 10 + s)) for s in range(3)]
    for worker in workers:
        worker.start()
    with server.client() as client:  # and a shadowed request in flight too
        assert server.post(client, "churn_shadow", {"rows": rows[:50]}).status_code == 200
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    try:
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly: the exit status says SIGTERM.
        assert server.process.wait(60) in (0, -signal.SIGTERM), server.output()
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert seen, "no request was answered before SIGTERM"
    assert "prediction logs flushed" in server.output()

    engine = engine_for(store.database_url)
    try:
        with engine.connect() as conn:
            logged = conn.execute(
                sa.text("select pipeline, request_id, row_index, arm, model_version, score, label, shadow "
                        "from online_predictions")
            ).all()  # fmt: skip
    finally:
        engine.dispose()
    answered = {(r.pipeline, r.request_id, r.row_index): (r.arm, r.model_version, r.score, r.label)
                for r in logged if not r.shadow}  # fmt: skip
    assert len(answered) == len([r for r in logged if not r.shadow])  # no row twice
    assert answered == server.ledger.rows  # every returned prediction, as returned, and nothing else
    shadowed = {(r.pipeline, r.request_id, r.row_index) for r in logged if r.shadow}
    expected = {key for key in server.ledger.rows if key[0] == "churn_shadow"}
    assert shadowed == expected and len(shadowed) == len([r for r in logged if r.shadow])
    assert len(expected) >= 80  # this test's 50 rows and the shadow test's 30


def test_the_log_keeps_its_rows_while_the_database_is_down_and_refuses_when_full(tmp_path):
    from lifecycle.serving.log_writer import PredictionLog

    folder = tmp_path / "not-yet"  # SQLite cannot open a file in a folder that does not exist: the database is down
    engine = engine_for(f"sqlite:///{folder / 'predictions.db'}")
    writer = PredictionLog(engine, capacity=250, batch_rows=40, flush_seconds=0.05, name="down")
    now = dt.datetime.now(dt.UTC)
    row = lambda request, i: ("p", request, i, str(i), CHAMPION, "p", "1", 0.5, "1", now, False)  # noqa: E731
    writer.start()
    try:
        assert writer.offer([row("a", i) for i in range(100)])
        assert writer.offer([row("b", i) for i in range(100)])
        assert not writer.offer([row("c", i) for i in range(100)])  # 300 > 250: refused whole, nothing queued
        time.sleep(1.0)
        assert writer.queued == 200 and writer.written == 0 and writer.failures >= 2 and writer.refused == 100
        assert "unable to open database file" in writer.last_error
        folder.mkdir()  # the database is back: the kept rows are written, in batches, none lost or doubled
        deadline = time.monotonic() + 20
        while writer.queued and time.monotonic() < deadline:
            time.sleep(0.1)
        assert writer.offer([row("d", i) for i in range(10)])
    finally:
        assert writer.close(10) == 0  # the 10 rows queued last are written by the shutdown flush
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.text("select request_id, count(*) from online_predictions group by 1")).all())
    assert counts == {"a": 100, "b": 100, "d": 10}

    # Down at shutdown: close() retries until its deadline, then says how many rows it could not write.
    engine.dispose()
    lost = PredictionLog(engine_for(f"sqlite:///{tmp_path / 'gone' / 'x.db'}"), capacity=10, batch_rows=5,
                         flush_seconds=0.05)  # fmt: skip
    lost.start()
    assert lost.offer([row("e", i) for i in range(3)])
    started = time.monotonic()
    assert lost.close(1.0) == 3 and time.monotonic() - started < 8
