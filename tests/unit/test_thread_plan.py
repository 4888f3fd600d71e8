"""The thread plan: a worker's cores shared by its task slots, never oversubscribed, and the embedded default
(LocalExecutor, `airflow dags test`) unchanged: every core for the one task."""

from __future__ import annotations

import pytest

from lifecycle.ml import training

VARIABLES = (
    "LIFECYCLE_SEARCH_JOBS",
    "LIFECYCLE_WORKER_CORES",
    "LIFECYCLE_WORKER_SLOTS",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "AIRFLOW__CORE__EXECUTOR",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _celery_worker(env, concurrency: int, cores: int) -> None:
    env.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    env.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", str(concurrency))
    env.setenv("LIFECYCLE_WORKER_CORES", str(cores))


def test_without_worker_concurrency_a_task_gets_every_core_as_before():
    plan = training.thread_plan()
    assert plan["slots"] == 1
    assert plan["search_jobs"] == plan["cores"] == training.available_cores()
    assert plan["lgbm_threads"] == 1


def test_local_executor_ignores_a_celery_setting_it_does_not_use(clean_environment):
    clean_environment.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    clean_environment.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "16")
    clean_environment.setenv("LIFECYCLE_WORKER_CORES", "8")
    assert training.thread_plan() == {"search_jobs": 8, "lgbm_threads": 1, "cores": 8, "slots": 1}


@pytest.mark.parametrize(
    ("concurrency", "cores", "jobs"),
    [(4, 4, 1), (4, 16, 4), (2, 8, 4), (3, 8, 2), (16, 4, 1), (1, 6, 6)],
)
def test_a_full_celery_worker_never_uses_more_threads_than_its_cores(clean_environment, concurrency, cores, jobs):
    _celery_worker(clean_environment, concurrency, cores)
    plan = training.thread_plan()
    assert plan == {"search_jobs": jobs, "lgbm_threads": 1, "cores": cores, "slots": concurrency}
    busy = concurrency * plan["search_jobs"] * plan["lgbm_threads"]
    assert busy <= max(cores, concurrency), "every slot busy with a search: at most one thread per core"


def test_executor_lists_and_explicit_slots_count(clean_environment):
    _celery_worker(clean_environment, 4, 8)
    clean_environment.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor,CeleryExecutor")
    assert training.worker_slots() == 4
    clean_environment.setenv("LIFECYCLE_WORKER_SLOTS", "8")
    assert training.thread_plan()["search_jobs"] == 1, "LIFECYCLE_WORKER_SLOTS wins over worker_concurrency"


def test_search_jobs_override_and_explicit_arguments(clean_environment):
    _celery_worker(clean_environment, 4, 4)
    clean_environment.setenv("LIFECYCLE_SEARCH_JOBS", "3")
    assert training.thread_plan()["search_jobs"] == 3, "the task's own count, outright"
    assert training.thread_plan(cores=8, slots=2)["search_jobs"] == 4, "given cores are the worker's, not the task's"


@pytest.mark.parametrize("name", ["LIFECYCLE_WORKER_CORES", "LIFECYCLE_WORKER_SLOTS", "LIFECYCLE_SEARCH_JOBS"])
@pytest.mark.parametrize("value", ["0", "-2", "four"])
def test_a_bad_setting_is_named(clean_environment, name, value):
    clean_environment.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}={value!r}"):
        training.thread_plan()


def test_the_search_gets_the_plan(make_config, training_frame, clean_environment):
    _celery_worker(clean_environment, 2, 4)
    clean_environment.setattr(training, "SMALL_SEARCH_ROWS", len(training_frame))  # this frame counts as large
    config = make_config(training={"validation_days": 2, "holdout_days": 4, "cv_folds": 2})
    search = training.make_search(config, training_frame, {"num_leaves": [4]}, "grid")
    assert search.n_jobs == 2
    assert search.estimator.named_steps["model"].get_params()["n_jobs"] == 1


def test_a_small_training_set_searches_in_the_tasks_own_process(make_config, training_frame, clean_environment):
    """Worker processes cost seconds to start and the fits take milliseconds: a segment model's search runs alone."""
    _celery_worker(clean_environment, 2, 4)
    config = make_config(training={"validation_days": 2, "holdout_days": 4, "cv_folds": 2})
    assert len(training_frame) < training.SMALL_SEARCH_ROWS
    search = training.make_search(config, training_frame, {"num_leaves": [4]}, "grid")
    assert search.n_jobs == 1
    assert search.estimator.named_steps["model"].get_params()["n_jobs"] == 1
