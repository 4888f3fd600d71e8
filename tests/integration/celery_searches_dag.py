"""Four grid searches at once, for tests/integration/test_celery.py: copied into the Celery workers' DAGs folders.

Each mapped task waits at a barrier in the broker's Redis until all four have started (so they truly run at
once), then fits the demo pipeline's search on the retrain's training split (read from the artifact store) with
the default thread plan, as the retrain's grid_search does, and returns the plan, its worker and the fit's times.
"""

from __future__ import annotations

from airflow.sdk import dag, task

SEARCHES = 4


@dag(dag_id="celery_searches", schedule=None, catchup=False, max_active_tasks=SEARCHES, tags=["test"])
def celery_searches():
    @task(retries=0)
    def search(index: int, **context) -> dict:
        import os
        import time
        from pathlib import Path

        import redis

        from lifecycle.config.pipeline import load_pipeline
        from lifecycle.devtools import local_airflow
        from lifecycle.ml import training
        from lifecycle.persistence import storage

        conf = context["dag_run"].conf
        config = load_pipeline(Path(os.environ["PIPELINES_DIR"]) / f"{conf['pipeline']}.yaml")
        train = storage.read_parquet(conf["train_uri"])
        broker = redis.Redis.from_url(os.environ["AIRFLOW__CELERY__BROKER_URL"])
        key = f"celery_searches:{context['run_id']}"
        broker.incr(key)
        broker.expire(key, 3600)
        deadline = time.monotonic() + 300
        while int(broker.get(key)) < SEARCHES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {int(broker.get(key))} of {SEARCHES} searches started within 300s ({key})")
            time.sleep(0.1)
        started = time.time()
        _, summary = training.fit_search(config, train, conf["grid"], "grid")
        return {
            "index": index,
            "host": local_airflow.hostname(),
            "pid": os.getpid(),
            "plan": summary["threads"],
            "started": started,
            "ended": time.time(),
            "fits": summary["fits"],
        }

    search.expand(index=list(range(SEARCHES)))


celery_searches()
