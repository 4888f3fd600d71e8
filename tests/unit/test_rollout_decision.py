"""The rollout decision: the join of online predictions with labels, the per-arm and difference intervals on
synthetic data whose true metrics are known in closed form, every branch of the policy, the decisions table,
and `apply` against a real MLflow store (promote, abort, a stale champion, retries)."""

from __future__ import annotations

import datetime as dt
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression

from lifecycle.config.pipeline import RolloutDecision
from lifecycle.ml.ingestion import SourceError
from lifecycle.persistence import rollout_store
from lifecycle.persistence.predictions_db import engine_for
from lifecycle.registry import registry_history, tracking
from lifecycle.tasks import rollout_decisions
from lifecycle.tasks.rollout_decisions import ABORT, CHALLENGER, CHAMPION, EXTEND, PROMOTE

UTC = dt.UTC
DAY = dt.date(2026, 3, 2)


def _prediction(entity, arm, at, score=0.5, label="0", version=None, request="r", row=0, shadow=False):
    version = version or ("1" if arm == CHAMPION else "2")
    return {"request_id": request, "row_index": row, "entity_id": str(entity), "arm": arm, "model_version": version,
            "score": score, "label": label, "predicted_at": at, "shadow": shadow}  # fmt: skip


def _labels(rows: list[tuple[str, dt.datetime, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["entity_id", "labelled_at", "label"])
    frame["batch_key"] = frame["labelled_at"].dt.date
    return frame[["entity_id", "labelled_at", "batch_key", "label"]]


# ---- the join -------------------------------------------------------------------------------------------------------


def test_a_prediction_meets_the_label_of_its_entity_and_its_utc_day_only():
    new_york = dt.timezone(dt.timedelta(hours=-5))
    predictions = pd.DataFrame(
        [
            _prediction("a", CHAMPION, dt.datetime(2026, 3, 1, 10, tzinfo=UTC), request="r1"),
            _prediction("b", CHAMPION, dt.datetime(2026, 3, 1, 23, 30, tzinfo=new_york), request="r2"),  # 04:30 UTC 3-2
            _prediction("c", CHALLENGER, dt.datetime(2026, 3, 1, 12, tzinfo=UTC), request="r3"),
            _prediction("d", CHAMPION, dt.datetime(2026, 3, 1, 12, tzinfo=UTC), request="r4"),  # no label yet
        ]
    )
    labels = _labels(
        [
            ("a", pd.Timestamp("2026-03-01"), 1),
            ("a", pd.Timestamp("2026-03-02"), 0),  # another day's outcome of the same entity
            ("b", pd.Timestamp("2026-03-01"), 1),  # New York's day, not the UTC day of the request
            ("b", pd.Timestamp("2026-03-02"), 0),
            ("c", pd.Timestamp("2026-03-01 08:00"), 0),
            ("c", pd.Timestamp("2026-03-01 20:00"), 1),  # two labels that day: the latest wins
        ]
    )
    joined = rollout_decisions.join_labels(predictions, labels)
    got = {(r.entity_id, str(r.day), r.arm): r.actual for r in joined.itertuples()}
    assert got == {
        ("a", "2026-03-01", CHAMPION): 1,
        ("b", "2026-03-02", CHAMPION): 0,
        ("c", "2026-03-01", CHALLENGER): 1,
    }


def test_an_entity_asked_about_twice_that_day_counts_once_with_its_latest_prediction():
    at = dt.datetime(2026, 3, 1, 9, tzinfo=UTC)
    predictions = pd.DataFrame(
        [
            _prediction("a", CHAMPION, at, score=0.1, request="r1"),
            _prediction("a", CHAMPION, at + dt.timedelta(hours=3), score=0.9, request="r2"),
            _prediction("a", CHAMPION, at + dt.timedelta(days=1), score=0.4, request="r3"),  # another day: its own
        ]
    )
    labels = _labels([("a", pd.Timestamp("2026-03-01"), 1), ("a", pd.Timestamp("2026-03-02"), 0)])
    joined = rollout_decisions.join_labels(predictions, labels)
    assert sorted(zip(joined["day"].astype(str), joined["score"], strict=True)) == [
        ("2026-03-01", 0.9),
        ("2026-03-02", 0.4),
    ]


def test_shadow_pairs_are_the_same_request_and_row_and_a_missing_shadow_score_drops_the_pair():
    at = dt.datetime(2026, 3, 1, 9, tzinfo=UTC)
    predictions = pd.DataFrame(
        [
            _prediction("a", CHAMPION, at, score=0.2, request="r1", row=0),
            _prediction("a", CHALLENGER, at, score=0.7, request="r1", row=0, shadow=True),
            _prediction("b", CHAMPION, at, score=0.3, request="r1", row=1),  # its shadow row was dropped
            _prediction("c", CHAMPION, at, score=0.4, request="r2", row=0),
            _prediction("c", CHALLENGER, at, score=0.6, request="r2", row=0, shadow=True),
        ]
    )
    pairs = rollout_decisions.pair_shadow(predictions)
    assert sorted(zip(pairs["entity_id"], pairs["score"], pairs["challenger_score"], strict=True)) == [
        ("a", 0.2, 0.7),
        ("c", 0.4, 0.6),
    ]


# ---- the intervals, where the truth is known ------------------------------------------------------------------------


def _binormal(rng, n: int, shift: float, noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """y ~ Bernoulli(0.3); score = sigmoid(shift * y + N(0, 1)): ROC AUC is exactly Phi(shift / sqrt 2)."""
    y = (rng.random(n) < 0.3).astype(int)
    z = rng.standard_normal(n) if noise is None else noise
    return y, 1.0 / (1.0 + np.exp(-(shift * y + z)))


def _auc(shift: float) -> float:
    return float(norm.cdf(shift / math.sqrt(2)))


def test_unpaired_intervals_cover_the_true_aucs_and_their_difference():
    rng = np.random.default_rng(1)
    truth_a, truth_b = _auc(0.6), _auc(1.2)
    covered = {"champion": 0, "challenger": 0, "difference": 0}
    reps = 12  # fixed seeds: the same numbers every run (each roc_auc costs ~1-5 ms, 200 per repetition)
    for seed in range(reps):
        champion, challenger = _binormal(rng, 600, 0.6), _binormal(rng, 500, 1.2)
        result = rollout_decisions.compare(
            "binary", "roc_auc", True, champion, challenger, paired=False, resamples=100, confidence=0.9, seed=seed
        )
        covered["champion"] += result["champion_ci_low"] <= truth_a <= result["champion_ci_high"]
        covered["challenger"] += result["challenger_ci_low"] <= truth_b <= result["challenger_ci_high"]
        covered["difference"] += result["difference_ci_low"] <= truth_b - truth_a <= result["difference_ci_high"]
        assert result["champion_ci_low"] <= result["champion_value"] <= result["champion_ci_high"]
    # 90% intervals over 12 repetitions: 10.8 expected; too narrow an interval would cover far fewer.
    assert min(covered.values()) >= 9, covered
    assert result["resamples"] == 100 and result["paired"] is False


def test_paired_intervals_cover_the_truth_and_are_narrower_than_ignoring_the_pairing():
    rng = np.random.default_rng(2)
    truth = _auc(1.0) - _auc(0.8)
    covered, narrower = 0, 0
    reps = 10
    for seed in range(reps):
        n = 800
        shared = rng.standard_normal(n)  # what both models get wrong on the same rows
        noise_a = 0.9 * shared + math.sqrt(1 - 0.81) * rng.standard_normal(n)
        noise_b = 0.9 * shared + math.sqrt(1 - 0.81) * rng.standard_normal(n)
        y = (rng.random(n) < 0.3).astype(int)
        a = 1.0 / (1.0 + np.exp(-(0.8 * y + noise_a)))
        b = 1.0 / (1.0 + np.exp(-(1.0 * y + noise_b)))
        kwargs = {"resamples": 100, "confidence": 0.9, "seed": seed}
        paired = rollout_decisions.compare("binary", "roc_auc", True, (y, a), (y, b), paired=True, **kwargs)
        unpaired = rollout_decisions.compare("binary", "roc_auc", True, (y, a), (y, b), paired=False, **kwargs)
        assert paired["difference"] == pytest.approx(unpaired["difference"])  # the same point estimate
        covered += paired["difference_ci_low"] <= truth <= paired["difference_ci_high"]
        width = paired["difference_ci_high"] - paired["difference_ci_low"]
        narrower += width < 0.6 * (unpaired["difference_ci_high"] - unpaired["difference_ci_low"])
    assert covered >= 8, covered
    assert narrower == reps


def test_a_lower_is_better_metric_is_oriented_so_that_above_zero_is_better():
    """Regression MAE, where y - prediction ~ N(0, s) has MAE exactly s * sqrt(2 / pi)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(3000)
    y_a, y_b = x + rng.normal(0, 0.5, 3000), x + rng.normal(0, 0.5, 3000)
    pred_a, pred_b = x + rng.normal(0, 1.0, 3000), x + rng.normal(0, 0.3, 3000)  # the challenger is better
    result = rollout_decisions.compare(
        "regression", "mae", False, (y_a, pred_a), (y_b, pred_b), paired=False, resamples=200, confidence=0.9
    )
    truth_a, truth_b = math.hypot(0.5, 1.0) * math.sqrt(2 / math.pi), math.hypot(0.5, 0.3) * math.sqrt(2 / math.pi)
    assert result["champion_ci_low"] <= truth_a <= result["champion_ci_high"]
    assert result["challenger_ci_low"] <= truth_b <= result["challenger_ci_high"]
    assert result["difference"] == pytest.approx(result["champion_value"] - result["challenger_value"])
    assert result["difference_ci_low"] > 0.3  # truth 0.47: better, with the sign that says so


# ---- the policy -------------------------------------------------------------------------------------------------------


def _result(low: float, high: float) -> dict:
    return {"difference": (low + high) / 2, "difference_ci_low": low, "difference_ci_high": high,
            "champion_value": 0.7, "challenger_value": 0.7 + (low + high) / 2, "paired": False}  # fmt: skip


@pytest.mark.parametrize(
    ("low", "high", "rows", "days", "tolerance", "expected", "words"),
    [
        (0.02, 0.08, 500, 3, 0.0, PROMOTE, "low end above -tolerance +0.0000"),
        (-0.01, 0.05, 500, 3, 0.02, PROMOTE, "not worse"),  # within the tolerance: non-inferior is enough
        (-0.09, -0.03, 500, 3, 0.0, ABORT, "high end below -tolerance"),
        (-0.09, -0.03, 50, 3, 0.0, ABORT, "worse"),  # clearly worse needs no minimum
        (0.02, 0.08, 50, 3, 0.0, EXTEND, "too few labelled rows (min_labelled 200 per arm)"),
        (-0.02, 0.04, 500, 3, 0.0, EXTEND, "the interval spans -tolerance"),
        (-0.02, 0.04, 500, 14, 0.0, ABORT, "undecided after 14 days (max_days 14), the champion stays"),
        (0.02, 0.08, 50, 20, 0.0, ABORT, "undecided after 20 days"),
    ],
)
def test_each_branch_of_the_policy_and_its_reason(low, high, rows, days, tolerance, expected, words):
    rule = RolloutDecision(tolerance=tolerance)
    decision, reason = rollout_decisions.policy(rule, "roc_auc", rows, rows + 10, _result(low, high), days)
    assert decision == expected
    assert words in reason
    assert f"{rows} champion and {rows + 10} challenger labelled rows" in reason
    assert f"[{low:+.4f}, {high:+.4f}]" in reason
    if decision == EXTEND:
        assert f"day {days} of max_days 14" in reason


def test_nothing_measurable_extends_until_max_days():
    rule = RolloutDecision(max_days=5)
    empty = {"difference": None, "difference_ci_low": None, "difference_ci_high": None}
    assert rollout_decisions.policy(rule, "roc_auc", 0, 0, empty, 2)[0] == EXTEND
    decision, reason = rollout_decisions.policy(rule, "roc_auc", 0, 0, empty, 5)
    assert decision == ABORT and "cannot be measured yet" in reason


# ---- evaluate: from logged rows and labels to a decision ------------------------------------------------------------


def _canary_log(rng, n: int, shift_a: float, shift_b: float, day: dt.date = DAY):
    """A canary's log and labels: entities split between arms, each arm's scores binormal with its shift."""
    rows, labels = [], []
    at = dt.datetime.combine(day, dt.time(12), tzinfo=UTC)
    for i in range(n):
        arm = CHALLENGER if i % 2 else CHAMPION
        y, score = _binormal(rng, 1, shift_b if arm == CHALLENGER else shift_a)
        rows.append(
            _prediction(i, arm, at, score=float(score[0]), label="1" if score[0] >= 0.3 else "0", request=f"r{i}")
        )
        labels.append((str(i), pd.Timestamp(day), int(y[0])))
    return pd.DataFrame(rows), _labels(labels)


def test_evaluate_promotes_a_clearly_better_canary_and_aborts_a_clearly_worse_one(make_config):
    config = make_config(serving={"rollout": {"mode": "canary", "challenger": "challenger", "share": 0.5},
                                  "decision": {"min_labelled": 200, "resamples": 200}})  # fmt: skip
    rng = np.random.default_rng(4)
    predictions, labels = _canary_log(rng, 1200, 0.3, 1.5)
    better = rollout_decisions.evaluate(config, predictions, labels, ("1", "2"), 1)
    assert better["decision"] == PROMOTE, better["reason"]
    assert better["champion_rows"] == 600 and better["challenger_rows"] == 600
    assert better["metric"] == "roc_auc" and better["paired"] is False and better["difference_ci_low"] > 0
    worse = rollout_decisions.evaluate(config, *_canary_log(rng, 1200, 1.5, 0.3), ("1", "2"), 1)
    assert worse["decision"] == ABORT and worse["difference_ci_high"] < 0, worse["reason"]


def test_evaluate_counts_only_the_versions_under_test(make_config):
    config = make_config(serving={"rollout": {"mode": "canary", "challenger": "challenger"}})
    predictions, labels = _canary_log(np.random.default_rng(5), 400, 0.5, 0.5)
    predictions.loc[predictions.index < 100, "model_version"] = "7"  # an earlier champion's answers
    result = rollout_decisions.evaluate(config, predictions, labels, ("1", "2"), 1)
    assert result["champion_rows"] + result["challenger_rows"] == 300
    assert result["decision"] == EXTEND and "too few labelled rows" in result["reason"]


def test_a_multiclass_roc_auc_is_measured_as_accuracy_and_the_reason_says_so(make_config):
    config = make_config(task="multiclass", serving={"rollout": {"mode": "ab", "challenger": 2}},
                         gate={"floors": {}}, training={"primary_metric": "roc_auc"})  # fmt: skip
    at = dt.datetime.combine(DAY, dt.time(9), tzinfo=UTC)
    rows = [_prediction(i, CHALLENGER if i % 2 else CHAMPION, at, score=0.6, request=f"r{i}",
                        label=("a" if i % 2 else ["a", "b", "c"][i % 3])) for i in range(300)]  # fmt: skip
    labels = _labels([(str(i), pd.Timestamp(DAY), "a") for i in range(300)])
    result = rollout_decisions.evaluate(config, pd.DataFrame(rows), labels, ("1", "2"), 1)
    assert result["metric"] == "accuracy"
    assert result["challenger_value"] == 1.0 and result["champion_value"] == pytest.approx(50 / 150)
    assert "roc_auc needs more than the online log keeps: measured accuracy" in result["reason"]


def test_labels_that_do_not_fit_the_task_name_the_column_and_values(make_config):
    config = make_config(task="regression", target="monthly_spend", gate={"floors": {}},
                         training={"primary_metric": "rmse"}, features={"numeric": ["sessions_30d"]},
                         performance={"policy": {}},
                         serving={"rollout": {"mode": "ab", "challenger": 2}})  # fmt: skip
    at = dt.datetime.combine(DAY, dt.time(9), tzinfo=UTC)
    predictions = pd.DataFrame([_prediction(1, CHAMPION, at, score=3.0, label=None)])
    labels = _labels([("1", pd.Timestamp(DAY), "twelve")])
    with pytest.raises(SourceError, match=r"labels source column 'monthly_spend'.*values like \['twelve'\]"):
        rollout_decisions.evaluate(config, predictions, labels, ("1", "2"), 1)


# ---- the decisions table ----------------------------------------------------------------------------------------------


def _row(day: dt.date, decision: str, run: str) -> dict:
    return {"pipeline": "p", "decided_on": day, "mode": "canary", "metric": "roc_auc", "champion_version": "1",
            "challenger_version": "2", "champion_rows": 10, "challenger_rows": 12, "paired": False,
            "decision": decision, "reason": "because", "airflow_run_id": run, "difference": 0.1}  # fmt: skip


def test_a_day_is_replaced_whole_and_the_newest_days_come_first(tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path / 'predictions.db'}")
    assert rollout_store.load_decisions(engine, "p", 10) == []
    rollout_store.replace_decision(engine, _row(DAY, EXTEND, "run-1"))
    rollout_store.replace_decision(engine, _row(DAY, PROMOTE, "run-2"))  # a rerun of the day
    rollout_store.replace_decision(engine, _row(DAY - dt.timedelta(days=1), EXTEND, "run-0"))
    rows = rollout_store.load_decisions(engine, "p", 10)
    assert [(r["decided_on"], r["decision"], r["airflow_run_id"]) for r in rows] == [
        (DAY, PROMOTE, "run-2"),
        (DAY - dt.timedelta(days=1), EXTEND, "run-0"),
    ]
    assert rows[0]["difference"] == 0.1 and rows[0]["champion_ci_low"] is None and rows[0]["decided_at"]
    assert len(rollout_store.load_decisions(engine, "p", 1)) == 1
    with pytest.raises(ValueError, match=r"unknown columns \['verdict'\]"):
        rollout_store.replace_decision(engine, _row(DAY, PROMOTE, "r") | {"verdict": "x"})
    engine.dispose()


# ---- apply, against a real MLflow store -------------------------------------------------------------------------------


@pytest.fixture
def registry(mlflow_store, tmp_path, request, make_config):
    """A registered model with version 1 the champion and version 2 behind the `challenger` alias."""
    client, experiment = mlflow_store
    name = f"rollout_{request.node.name.removeprefix('test_')[:40]}"
    engine = engine_for(f"sqlite:///{tmp_path / 'predictions.db'}")
    for number in ("1", "2"):
        model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.sklearn.log_model(model, name="model", serialization_format="skops", pip_requirements=[])
        if number == "1":
            tracking.register_champion(info.model_uri, name, {}, run.info.run_id, None, engine=engine, moved_by="t")
        else:
            tracking.start_canary(info.model_uri, name, {}, run.info.run_id, "challenger", engine=engine, moved_by="t")
    config = make_config(name=name, serving={"rollout": {"mode": "canary", "challenger": "challenger"}})
    yield client, config, engine, f"sqlite:///{tmp_path / 'predictions.db'}"
    engine.dispose()


def _decision(verdict: str) -> dict:
    return {"skipped": False, "day": DAY.isoformat(), "decision": verdict, "reason": f"{verdict} because numbers",
            "champion_version": "1", "challenger_version": "2", "challenger_alias": "challenger"}  # fmt: skip


def _moves(engine, name: str, alias: str) -> list[tuple]:
    moves = registry_history.periods(engine, name, alias)
    return [(p["version"], p["previous_version"], p["how"]) for p in moves][::-1]


def test_promote_moves_the_champion_removes_the_challenger_and_a_second_apply_changes_nothing(registry):
    client, config, engine, url = registry
    name = config.registered_model_name
    first = rollout_decisions.apply(config, "run-1", _decision(PROMOTE), url)
    assert first["champion_moved"] and first["moved_now"] and first["alias_removed"]
    assert str(tracking.champion(name).version) == "2" and tracking.champion(name, "challenger") is None
    again = rollout_decisions.apply(config, "run-1", _decision(PROMOTE), url)  # a retry, or the same decision rerun
    assert again["champion_moved"] and not again["moved_now"] and not again["alias_removed"]
    assert _moves(engine, name, "champion") == [("1", None, "gate"), ("2", "1", "rollout")]
    assert _moves(engine, name, "challenger") == [("2", None, "gate"), (tracking.ALIAS_REMOVED, "2", "rollout")]
    moved = registry_history.periods(engine, name)[0]
    assert moved["moved_by"] == "the rollout" and "promote because numbers" in moved["reason"]
    tags = client.get_model_version(name, "2").tags
    assert tags["rollout.decision"] == PROMOTE and tags["rollout.decided_on"] == DAY.isoformat()
    assert tags["previous_champion"] == "1"
    assert rollout_decisions.decide(config, "run-2", DAY, url)["skipped"]  # the test is over: nothing to decide


def test_a_retry_after_dying_between_the_champion_move_and_the_alias_removal_finishes_the_job(registry):
    _client, config, engine, url = registry
    name = config.registered_model_name
    tracking.promote_version(name, "2", "1", engine=engine, moved_by="the rollout", how="rollout")  # then it died
    answer = rollout_decisions.apply(config, "run-1", _decision(PROMOTE), url)
    assert not answer["moved_now"] and answer["alias_removed"]
    assert tracking.champion(name, "challenger") is None
    assert [m[2] for m in _moves(engine, name, "champion")] == ["gate", "rollout"]


def test_promote_refuses_when_the_champion_moved_since_the_decision(registry):
    client, config, engine, url = registry
    name = config.registered_model_name
    client.set_registered_model_alias(name, "champion", "2")  # someone moved it in MLflow's UI
    client.set_registered_model_alias(name, "challenger", "1")
    stale = _decision(PROMOTE) | {"challenger_version": "1"}
    with pytest.raises(tracking.ChampionMovedError, match="is version 2, but the decision compared version 1 against"):
        rollout_decisions.apply(config, "run-1", stale, url)
    assert str(tracking.champion(name).version) == "2" and str(tracking.champion(name, "challenger").version) == "1"
    assert _moves(engine, name, "champion")[-1] == ("2", "1", "observed")


def test_abort_removes_the_challenger_alias_once_and_extend_changes_nothing(registry):
    client, config, engine, url = registry
    name = config.registered_model_name
    extended = rollout_decisions.apply(config, "run-0", _decision(EXTEND), url)
    assert extended["action"] == EXTEND and str(tracking.champion(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["rollout.decision"] == EXTEND
    for _ in range(2):
        answer = rollout_decisions.apply(config, "run-1", _decision(ABORT), url)
        assert not answer["champion_moved"]
    assert str(tracking.champion(name).version) == "1" and tracking.champion(name, "challenger") is None
    assert _moves(engine, name, "challenger") == [("2", None, "gate"), (tracking.ALIAS_REMOVED, "2", "rollout")]
    assert _moves(engine, name, "champion") == [("1", None, "gate")]
    assert client.get_model_version(name, "2").tags["rollout.decision"] == ABORT


def test_an_alias_moved_to_a_new_test_is_not_removed_by_the_old_decision(registry):
    client, config, engine, url = registry
    name = config.registered_model_name
    client.set_registered_model_alias(name, "challenger", "1")  # a new test started meanwhile
    answer = rollout_decisions.apply(config, "run-1", _decision(ABORT), url)
    assert answer["alias_removed"] is False and str(tracking.champion(name, "challenger").version) == "1"


def test_decide_skips_without_a_rollout_or_a_challenger_and_records_nothing(registry, make_config):
    client, config, engine, url = registry
    name = config.registered_model_name
    none = make_config(name=name)
    assert "mode is none" in rollout_decisions.decide(none, "r", DAY, url)["reason"]
    unlabelled = make_config(
        name=name, labels=None, serving={"rollout": {"mode": "canary", "challenger": "challenger"}}
    )
    with pytest.raises(SourceError, match="has no 'labels' source"):
        rollout_decisions.decide(unlabelled, "r", DAY, url)
    early = rollout_decisions.decide(config, "r", DAY, url)  # the challenger alias moved today, after DAY
    assert early["skipped"] and "began on" in early["reason"] and f"after {DAY}" in early["reason"]
    labelled = make_config(name=name, labels={"uri": "/nowhere/labels.parquet", "layout": "file"},
                           serving={"rollout": {"mode": "canary", "challenger": "challenger"}})  # fmt: skip
    client.delete_registered_model_alias(name, "challenger")
    skipped = rollout_decisions.decide(labelled, "r", DAY, url)
    assert skipped["skipped"] and "alias 'challenger'" in skipped["reason"] and "names no version" in skipped["reason"]
    assert rollout_store.load_decisions(engine, labelled.name, 10) == []
