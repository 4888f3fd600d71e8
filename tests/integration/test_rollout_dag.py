"""The rollout DAG for real: a canary served over HTTP, its predictions logged, labels arriving as files, and
`<pipeline>__rollout` run with `airflow dags test` deciding from them, while client threads keep sending requests.

Two pipelines (copies of demo_churn.yaml, each `serving.rollout: {mode: canary, challenger: challenger, share:
0.5}` and a `labels:` file), each with two real LightGBM versions logged as the retrain logs them: one trained
normally, one on shuffled labels (no better than chance). `churn_promote` has the shuffled model as champion
and the good one behind the `challenger` alias (the gate's canary start); `churn_abort` the other way round.
The service is started as tests/integration/test_serving.py starts it (which also proves the swap itself).
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from lifecycle.config.pipeline import load_pipeline
from lifecycle.persistence import rollout_store
from lifecycle.persistence.predictions_db import engine_for
from lifecycle.registry import registry_history, tracking

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
PIPELINES = ("churn_promote", "churn_abort")
ROWS = 1400  # entities per pipeline: ~700 per arm, ~100 positives each


def _serving_helpers():
    """tests/ is not a package: test_serving.py's helpers (log_model, joined, as_rows, Server) loaded by path."""
    name = "lifecycle_tests_serving_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_serving.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


serving = _serving_helpers()


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Models, registry, pipelines and the environment the service and the DAG runs share."""
    root = tmp_path_factory.mktemp("rollout")
    pipelines = root / "pipelines"
    pipelines.mkdir()
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(root / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{root / 'artifacts'}",
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{root / 'predictions.db'}",
        "PIPELINES_DIR": str(pipelines),
        "LIFECYCLE_SEARCH_JOBS": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        demo = yaml.safe_load((REPO / "include" / "pipelines" / "demo_churn.yaml").read_text())
        for name in PIPELINES:
            data = copy.deepcopy(demo) | {"name": name}
            data["labels"] = {"uri": str(root / "labels" / name / "labels.parquet"), "layout": "file"}
            data["serving"] = {
                "rollout": {"mode": "canary", "challenger": "challenger", "share": 0.5},
                "decision": {"min_labelled": 200, "resamples": 300, "confidence": 0.9},
            }
            (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        configs = {name: load_pipeline(pipelines / f"{name}.yaml") for name in PIPELINES}

        config = configs["churn_promote"]
        train = serving.joined(dt.date(2026, 1, 1), 10, 400, seed=11)
        good = serving.log_model(config, train, n_estimators=60, num_leaves=15)
        shuffled = train.assign(churned=np.random.default_rng(5).permutation(train["churned"].to_numpy()))
        bad = serving.log_model(config, shuffled, n_estimators=60, num_leaves=15)
        engine = engine_for(env["AIRFLOW_CONN_PREDICTIONS_DB"])
        try:
            for name, (champion, challenger) in {"churn_promote": (bad, good), "churn_abort": (good, bad)}.items():
                tracking.register_champion(champion[1], name, {}, champion[0], None, engine=engine, moved_by="the test")
                tracking.start_canary(challenger[1], name, {}, challenger[0], "challenger", engine=engine,
                                      moved_by="the gate", reason="a canary")  # fmt: skip
        finally:
            engine.dispose()
        yield root, env, configs
        import mlflow

        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def server(world):
    root, env, _configs = world
    port = serving.free_port()
    full = {**os.environ, **env, "LIFECYCLE_SERVING_POLL_SECONDS": "0.5", "LIFECYCLE_SERVING_API_KEY": serving.KEY}
    log = root / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lifecycle", "serve", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=full, cwd=root)  # fmt: skip
    server = serving.Server(f"http://127.0.0.1:{port}", process, log, serving.Ledger())
    try:
        deadline = time.monotonic() + 120
        with server.client() as client:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    served = {p["name"]: p for p in client.get("/pipelines").json()}
                    if client.get("/ready").status_code == 200 and all(served[n]["challenger"] for n in PIPELINES):
                        break
                except (httpx.TransportError, ValueError, KeyError):
                    pass
                time.sleep(0.3)
            else:
                pytest.fail(f"the service did not get ready:\n{server.output()}")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


@pytest.fixture(scope="module")
def traffic(world, server):
    """Every entity asked once through the canary, then its label written (the demo generator's own outcome)."""
    root, env, _configs = world
    frame = serving.joined(dt.date(2026, 2, 10), 1, ROWS, seed=99)
    frame["account_id"] = np.arange(500_000, 500_000 + ROWS)  # distinct entities
    rows = serving.as_rows(frame)
    answers: dict[str, list[dict]] = {}
    with server.client() as client:
        for name in PIPELINES:
            answers[name] = []
            for start in range(0, ROWS, 100):
                response = server.post(client, name, {"rows": rows[start : start + 100]})
                assert response.status_code == 200, response.text
                answers[name] += response.json()["predictions"]
    logged = _wait_for_log(env, 2 * ROWS)
    days = sorted({d for d in pd.to_datetime(logged["predicted_at"], utc=True).dt.date})
    for name in PIPELINES:
        path = root / "labels" / name / "labels.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = pd.concat(
            [frame[["account_id", "churned"]].assign(snapshot_date=pd.Timestamp(day)) for day in days],
            ignore_index=True,
        )
        labels.to_parquet(path, index=False)
    return rows, answers, logged, days


def _wait_for_log(env: dict[str, str], expected: int) -> pd.DataFrame:
    engine = engine_for(env["AIRFLOW_CONN_PREDICTIONS_DB"])
    try:
        deadline, logged = time.monotonic() + 30, pd.DataFrame()
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                logged = pd.read_sql_query(sa.text("select * from online_predictions"), conn)
            if len(logged) >= expected:
                return logged
            time.sleep(0.3)
    finally:
        engine.dispose()
    raise AssertionError(f"{len(logged)} of {expected} predictions logged after 30 s")


def _rollout(env: dict[str, str], name: str, day: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow", "dags", "test", f"{name}__rollout", day]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, **env})


class Load:
    """Client threads asking about labelled entities until stopped: every answer kept, every failure kept."""

    def __init__(self, server: Any, pipeline: str, rows: list[dict], threads: int = 2) -> None:
        self.server, self.pipeline, self.rows = server, pipeline, rows
        self.stop, self.answers, self.failures = threading.Event(), [], []
        self.workers = [threading.Thread(target=self._run, args=(seed,)) for seed in range(threads)]

    def __enter__(self) -> Load:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(60)

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with self.server.client() as client:
            while not self.stop.is_set():
                batch = [self.rows[i] for i in rng.integers(0, len(self.rows), 3)]
                sent = time.monotonic()
                try:
                    response = client.post(f"/pipelines/{self.pipeline}/predict", json={"rows": batch})
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                arms = {(p["arm"], p["model_version"]) for p in response.json()["predictions"]}
                self.answers.append((sent, arms))
                time.sleep(0.02)

    def after(self, moment: float) -> set:
        return {arm for sent, arms in self.answers if sent > moment for arm in arms}


def _wait_until_served(server: Any, name: str, champion: str, timeout: float = 30) -> float:
    """The moment the service reports `champion` and no challenger for `name`."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline:
            served = {p["name"]: p for p in client.get("/pipelines").json()}[name]
            if served["champion"]["version"] == champion and served["challenger"] is None:
                return time.monotonic()
            time.sleep(0.2)
    raise AssertionError(f"{name}: not serving champion {champion} alone after {timeout}s: {served}")


def _history(env: dict[str, str], name: str, alias: str) -> list[dict]:
    engine = engine_for(env["AIRFLOW_CONN_PREDICTIONS_DB"])
    try:
        return registry_history.periods(engine, name, alias)[::-1]
    finally:
        engine.dispose()


def _decisions(env: dict[str, str], name: str) -> list[dict]:
    engine = engine_for(env["AIRFLOW_CONN_PREDICTIONS_DB"])
    try:
        return rollout_store.load_decisions(engine, name, 10)
    finally:
        engine.dispose()


def test_the_canary_split_its_entities_and_logged_every_answer(traffic):
    _rows, answers, logged, _days = traffic
    for name in PIPELINES:
        arms = [p["arm"] for p in answers[name]]
        assert abs(arms.count("challenger") / len(arms) - 0.5) < 0.06, name
        mine = logged[logged["pipeline"] == name]
        assert len(mine) == ROWS and mine["entity_id"].nunique() == ROWS
        assert dict(mine.groupby("arm")["model_version"].unique().map(list)) == {
            "champion": ["1"],
            "challenger": ["2"],
        }


def test_a_clearly_better_challenger_is_promoted_and_then_answers_everything(world, server, traffic):
    _root, env, _configs = world
    rows, _answers, _logged, days = traffic
    day = days[-1].isoformat()
    name = "churn_promote"
    with Load(server, name, rows[:400]) as load:
        result = _rollout(env, name, day)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
        switched = _wait_until_served(server, name, "2")
        time.sleep(2.0)
    output = result.stdout + result.stderr
    assert f"{day}: promote: the challenger is not worse" in output, output[-5000:]
    assert load.failures == [], load.failures[:5]
    assert load.after(switched) == {("champion", "2")}, "after the promotion every answer is the new champion's"
    assert len(load.answers) > 50

    assert str(tracking.champion(name).version) == "2" and tracking.champion(name, "challenger") is None
    champion_moves = _history(env, name, "champion")
    assert [(m["version"], m["previous_version"], m["how"], m["moved_by"]) for m in champion_moves] == [
        ("1", None, "gate", "the test"),
        ("2", "1", "rollout", "the rollout"),
    ]
    assert [(m["version"], m["how"]) for m in _history(env, name, "challenger")] == [
        ("2", "gate"),
        (tracking.ALIAS_REMOVED, "rollout"),
    ]
    (decision,) = _decisions(env, name)
    print(f"\n{name}: {decision['reason']}")
    assert decision["decision"] == "promote" and decision["paired"] is False and decision["mode"] == "canary"
    assert (decision["champion_version"], decision["challenger_version"]) == ("1", "2")
    assert min(decision["champion_rows"], decision["challenger_rows"]) >= 600  # one label per entity, each arm ~700
    assert decision["champion_rows"] + decision["challenger_rows"] == ROWS
    assert decision["difference_ci_low"] > 0.1 and decision["challenger_ci_low"] > decision["champion_ci_high"]
    tags = tracking.mlflow_client().get_model_version(name, "2").tags
    assert tags["rollout.decision"] == "promote" and tags["rollout.decided_on"] == day

    # The same day again: the test is over, nothing is decided or moved a second time.
    again = _rollout(env, name, day)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "nothing to decide on" in again.stdout and "names no version" in again.stdout
    assert _decisions(env, name) == [decision]
    assert len(_history(env, name, "champion")) == 2 and len(_history(env, name, "challenger")) == 2


def test_a_clearly_worse_challenger_is_aborted_and_the_champion_answers_everything(world, server, traffic):
    _root, env, _configs = world
    rows, _answers, _logged, days = traffic
    day = days[-1].isoformat()
    name = "churn_abort"
    with Load(server, name, rows[:400]) as load:
        result = _rollout(env, name, day)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
        switched = _wait_until_served(server, name, "1")
        time.sleep(2.0)
    output = result.stdout + result.stderr
    assert f"{day}: abort: the challenger is worse" in output, output[-5000:]
    assert load.failures == [], load.failures[:5]
    assert load.after(switched) == {("champion", "1")}, "after the abort nobody is routed to the challenger"
    assert ("challenger", "2") in {arm for _, arms in load.answers for arm in arms}, "it was routed before"

    assert str(tracking.champion(name).version) == "1" and tracking.champion(name, "challenger") is None
    assert [m["how"] for m in _history(env, name, "champion")] == ["gate"]
    removed = _history(env, name, "challenger")[-1]
    assert (removed["version"], removed["previous_version"], removed["how"]) == (tracking.ALIAS_REMOVED, "2", "rollout")
    (decision,) = _decisions(env, name)
    print(f"\n{name}: {decision['reason']}")
    assert decision["decision"] == "abort" and decision["difference_ci_high"] < -0.1
    assert tracking.mlflow_client().get_model_version(name, "2").tags["rollout.decision"] == "abort"
