"""
### Rollout: decide a canary, A/B or shadow test from the labelled online predictions → promote, extend or abort

One DAG per pipeline whose `serving.rollout.mode` is not none (`<pipeline>__rollout`), on
`serving.decision.schedule`. It joins the predictions the serving service logged since the test began with
the labels that have arrived (entity and UTC day), measures the primary metric per arm with a bootstrap
interval (paired in shadow mode), and by `serving.decision` promotes the challenger (the `champion` alias
moves by compare-and-set and the challenger alias is removed), extends the test, or aborts it (the
challenger alias is removed: serving sends everything to the champion). Every decision is a row of
`rollout_decisions`; every alias change a row of the registry history. With no test running it says so
and skips. A promotion updates the `<pipeline>__champion` Asset.
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset, Param, TaskGroup, task

from lifecycle.config.pipeline import PipelineConfig, load_all
from lifecycle.tasks.airflow_glue import (
    collector_paused,
    connection_urls,
    default_args,
    fail_fast_on_bad_input,
    run_date,
    sqlalchemy_url,
)
from lifecycle.ui.access import access_control


def champion_asset(config: PipelineConfig) -> Asset:
    """Updated when the rollout moved the champion (nothing is scheduled on it here: it is for whoever follows)."""
    return Asset(name=f"{config.name}__champion", uri=f"x-lifecycle://{config.name}/champion")


def build(config: PipelineConfig) -> DAG:
    name = config.name
    champion = champion_asset(config)
    with DAG(
        dag_id=f"{name}__rollout",
        description=f"Decide the {config.serving.rollout.mode} test of {name} from labelled online predictions",
        doc_md=__doc__,
        schedule=config.serving.decision.schedule,
        catchup=False,  # no start_date: a new deployment waits for the next cron time instead of running the last
        max_active_runs=1,
        default_args=default_args(config),
        params={
            "day": Param(
                None,
                type=["null", "string"],
                format="date",
                title="Decision day",
                description="Decide from predictions made up to the end of this day (UTC) and labels arrived by "
                "then. Empty: the run's logical date.",
            ),
        },
        tags=["lifecycle", "rollout", name, *config.tags],
        # The rollout's own roles: read for everyone the YAML names, like the drift check (no one needs to edit).
        access_control=access_control(config, "rollout"),
    ) as dag:

        @task
        @fail_fast_on_bad_input
        def decide(**context) -> dict:
            from lifecycle.tasks import rollout_decisions

            url = sqlalchemy_url(config.prediction.conn_id)
            day = run_date(context, "day")
            return rollout_decisions.decide(config, context["run_id"], day, url, connection_urls(config))

        @task.short_circuit
        def test_running(decision: dict) -> bool:
            """A skip, not a failure, when there is no test to decide (mode none, or the challenger is gone)."""
            if decision["skipped"]:
                print(f"nothing to decide on {decision['day']}: {decision['reason']}")
                return False
            print(f"{decision['day']}: {decision['decision']}: {decision['reason']}")
            return True

        @task
        @fail_fast_on_bad_input
        def apply_decision(decision: dict, **context) -> dict:
            from lifecycle.tasks import rollout_decisions

            url = sqlalchemy_url(config.prediction.conn_id)
            return rollout_decisions.apply(config, context["run_id"], decision, url)

        @task.short_circuit
        def champion_moved(applied: dict) -> bool:
            print(f"{applied['action']}: {applied['reason']}")
            return bool(applied["champion_moved"])

        @task(outlets=[champion])
        def announce_champion(applied: dict, decision: dict, **context) -> dict:
            extra = {
                "champion_version": applied["challenger_version"],
                "previous_champion": applied.get("previous_champion"),
                "decided_on": decision["day"],
                "reason": applied["reason"][:2000],
                "rollout_run_id": context["run_id"],
            }
            context["outlet_events"][champion].extra = extra
            return extra

        with TaskGroup("decide"):
            decision = decide()
            running = test_running(decision)
        with TaskGroup("apply"):
            applied = apply_decision(decision)
            running >> applied
            champion_moved(applied) >> announce_champion(applied, decision)
    return dag


with collector_paused():  # hundreds of DAGs: see lifecycle.tasks.airflow_glue.collector_paused
    for _config in load_all():
        if _config.serving.rollout.mode != "none":
            globals()[f"{_config.name}__rollout"] = build(_config)
