"""Grid-search training of LightGBM inside the feature pipeline, and the baseline beside it."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import TimeSeriesSplit
from sklearn.pipeline import Pipeline

from lifecycle.config import PipelineConfig
from lifecycle.features import build_preprocessor, input_columns
from lifecycle.metrics import SCORERS


def available_cores() -> int:
    """Cores this task may use: LIFECYCLE_SEARCH_JOBS, else joblib's count (which honours container quotas)."""
    override = os.environ.get("LIFECYCLE_SEARCH_JOBS")
    if override:
        return max(1, int(override))
    import joblib

    return max(1, joblib.cpu_count(only_physical_cores=False))


def thread_plan(cores: int | None = None) -> dict[str, int]:
    """Parallelise the search across candidates and give each LightGBM one thread.

    LightGBM with all cores inside a search that also uses all cores oversubscribes the machine
    (7x slower measured on 2 cores); one level of parallelism at a time avoids it.
    """
    cores = cores or available_cores()
    return {"search_jobs": cores, "lgbm_threads": 1}


def lightgbm_estimator(config: PipelineConfig, threads: int) -> Any:
    import lightgbm as lgb

    common = {"n_jobs": threads, "random_state": config.training.random_state, "verbose": -1}
    if config.task == "regression":
        return lgb.LGBMRegressor(**common)
    return lgb.LGBMClassifier(**common)


def baseline_estimator(config: PipelineConfig, frame: pd.DataFrame) -> Pipeline:
    """A linear model on the same features: what the challenger must beat to be worth its complexity."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    linear = Ridge() if config.task == "regression" else LogisticRegression(max_iter=2000)
    return Pipeline([("features", build_preprocessor(config, frame)), ("scale", StandardScaler()), ("model", linear)])


def make_search(
    config: PipelineConfig,
    frame: pd.DataFrame,
    grid: dict[str, list[Any]],
    strategy: str,
    plan: dict[str, int] | None = None,
) -> Any:
    plan = plan or thread_plan()
    pipeline = Pipeline(
        [
            ("features", build_preprocessor(config, frame)),
            ("model", lightgbm_estimator(config, plan["lgbm_threads"])),
        ]
    )
    param_grid = {f"model__{key}": values for key, values in grid.items()}
    common = {
        "scoring": _scoring(config, frame),
        "cv": TimeSeriesSplit(n_splits=config.training.cv_folds),
        "n_jobs": plan["search_jobs"],
        "refit": True,
        "error_score": "raise",
    }
    if strategy == "halving":
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import HalvingGridSearchCV

        return HalvingGridSearchCV(pipeline, param_grid, factor=3, random_state=config.training.random_state, **common)
    from sklearn.model_selection import GridSearchCV

    return GridSearchCV(pipeline, param_grid, **common)


def _scoring(config: PipelineConfig, frame: pd.DataFrame) -> Any:
    """scikit-learn's scorer, except for multiclass: a time-series fold often lacks a rare class, and
    scikit-learn's multiclass scorers then raise, so the fold is scored on all the training classes."""
    if config.task != "multiclass":
        return SCORERS[(config.training.primary_metric, config.task)]
    from lifecycle.metrics import search_scorer

    return search_scorer(config.task, config.training.primary_metric, np.unique(frame[config.target].dropna()))


def candidates(search: Any) -> list[dict[str, Any]]:
    """One record per evaluated candidate (per halving round), for the nested MLflow runs."""
    results = search.cv_results_
    rows = []
    for i, params in enumerate(results["params"]):
        rows.append(
            {
                "params": {k.removeprefix("model__"): v for k, v in params.items()},
                "mean_cv_score": float(results["mean_test_score"][i]),
                "std_cv_score": float(results["std_test_score"][i]),
                "mean_fit_seconds": float(results["mean_fit_time"][i]),
                "rank": int(results["rank_test_score"][i]),
                "round": int(results["iter"][i]) if "iter" in results else 0,
                "resources": int(results["n_resources"][i]) if "n_resources" in results else None,
            }
        )
    return rows


def fit_search(
    config: PipelineConfig,
    train: pd.DataFrame,
    grid: dict[str, list[Any]],
    strategy: str,
    plan: dict[str, int] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the search on the time-ordered training split; return it and a summary."""
    columns = input_columns(config, train)
    train = train.sort_values(config.timestamp_column, kind="stable")
    search = make_search(config, train, grid, strategy, plan)
    started = time.perf_counter()
    try:
        search.fit(train[columns], train[config.target])
    finally:
        # The search's worker processes would otherwise outlive the Airflow task by minutes.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    summary = {
        "strategy": strategy,
        "seconds": round(time.perf_counter() - started, 2),
        "candidates": int(np.prod([len(v) for v in grid.values()])),
        "fits": len(search.cv_results_["params"]) * config.training.cv_folds,
        "best_params": {k.removeprefix("model__"): v for k, v in search.best_params_.items()},
        "best_cv_score": float(search.best_score_),
        "input_columns": columns,
        "threads": plan or thread_plan(),
    }
    return search, summary


def fit_baseline(config: PipelineConfig, train: pd.DataFrame) -> Pipeline:
    columns = input_columns(config, train)
    model = clone(baseline_estimator(config, train))
    return model.fit(train[columns], train[config.target])
