"""Training: thread plan, a tiny search with each strategy, and a model that actually learns."""

from __future__ import annotations

import numpy as np
import pytest

from lifecycle.ml import features, training
from lifecycle.ml.metrics import compute, scores

SERIAL = {"search_jobs": 1, "lgbm_threads": 1}
GRID = {"num_leaves": [4, 8], "n_estimators": [20]}


@pytest.fixture(scope="module")
def config(make_config):
    return make_config(training={"validation_days": 2, "holdout_days": 4, "cv_folds": 2})


@pytest.fixture(scope="module")
def parts(config, training_frame):
    return features.time_split(training_frame, config)


@pytest.mark.parametrize("cores", [None, 1, 2, 3, 8, 64])
def test_thread_plan_never_nests_parallelism(cores):
    plan = training.thread_plan(cores)
    assert plan["search_jobs"] >= 1 and plan["lgbm_threads"] >= 1
    assert min(plan["search_jobs"], plan["lgbm_threads"]) == 1
    expected = cores or training.available_cores()
    assert plan["search_jobs"] * plan["lgbm_threads"] <= expected


@pytest.mark.parametrize("strategy", ["grid", "halving"])
def test_tiny_search_fits_and_predicts_probabilities(config, parts, strategy):
    train, holdout = parts["train"], parts["holdout"]
    search, summary = training.fit_search(config, train, GRID, strategy, plan=SERIAL)
    assert summary["strategy"] == strategy
    assert summary["candidates"] == 2
    assert summary["best_params"]["num_leaves"] in (4, 8) and summary["best_params"]["n_estimators"] == 20
    assert summary["input_columns"] == config.feature_columns
    assert np.isfinite(summary["best_cv_score"])
    assert summary["threads"] == SERIAL
    model = search.best_estimator_
    assert model.named_steps["model"].get_params()["n_jobs"] == 1
    proba = model.predict_proba(holdout[summary["input_columns"]])
    assert proba.shape == (len(holdout), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    rows = training.candidates(search)
    assert {tuple(sorted(r["params"].items())) for r in rows} >= {
        (("n_estimators", 20), ("num_leaves", 4)),
        (("n_estimators", 20), ("num_leaves", 8)),
    }
    assert min(r["rank"] for r in rows) == 1
    if strategy == "halving":
        assert all(r["resources"] for r in rows)


def test_search_scores_with_the_primary_metric(make_config, parts):
    config = make_config(training={"validation_days": 2, "holdout_days": 4, "cv_folds": 2, "primary_metric": "pr_auc"})
    search = training.make_search(config, parts["train"], GRID, "grid", SERIAL)
    assert search.scoring == "average_precision"
    assert search.cv.n_splits == 2


def test_model_learns_real_labels_not_shuffled_ones(config, parts):
    """Behavioural: the same search on shuffled labels must lose on the holdout."""
    train, holdout = parts["train"], parts["holdout"]
    grid = {"num_leaves": [7], "n_estimators": [60], "learning_rate": [0.05]}
    real, _ = training.fit_search(config, train, grid, "grid", plan=SERIAL)
    shuffled_train = train.copy()
    shuffled_train[config.target] = np.random.default_rng(0).permutation(train[config.target].to_numpy())
    fake, _ = training.fit_search(config, shuffled_train, grid, "grid", plan=SERIAL)
    columns = config.feature_columns
    y = holdout[config.target]
    real_auc = compute("binary", y, scores(real.best_estimator_, holdout[columns], "binary"))["roc_auc"]
    fake_auc = compute("binary", y, scores(fake.best_estimator_, holdout[columns], "binary"))["roc_auc"]
    assert real_auc > 0.65
    assert abs(fake_auc - 0.5) < 0.1
    assert real_auc - fake_auc > 0.1


def test_baseline_fits_and_beats_chance(config, parts):
    train, holdout = parts["train"], parts["holdout"]
    model = training.fit_baseline(config, train)
    score = scores(model, holdout[config.feature_columns], "binary")
    assert score.shape == (len(holdout),)
    assert compute("binary", holdout[config.target], score)["roc_auc"] > 0.6
