"""The rollout decisions table: every daily verdict of `<pipeline>__rollout` on a canary or A/B test.

One row per (pipeline, decision day): the arms' versions, labelled rows, the primary metric per arm with its
interval, the difference and its interval, whether it was paired, the decision (promote, extend, abort) and why.
A rerun of a day replaces that day's row.
"""

from __future__ import annotations

import sqlalchemy as sa

TABLE = "rollout_decisions"


def decisions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        TABLE,
        metadata,
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("decided_on", sa.Date, nullable=False),  # the day the rollout DAG ran for
        sa.Column("mode", sa.String(20), nullable=False),  # shadow | canary | ab
        sa.Column("metric", sa.String(30), nullable=False),
        sa.Column("champion_version", sa.String(50), nullable=False),
        sa.Column("challenger_version", sa.String(50), nullable=False),
        sa.Column("champion_rows", sa.Integer, nullable=False),  # labelled online predictions per arm
        sa.Column("challenger_rows", sa.Integer, nullable=False),
        sa.Column("champion_value", sa.Float, nullable=True),
        sa.Column("champion_ci_low", sa.Float, nullable=True),
        sa.Column("champion_ci_high", sa.Float, nullable=True),
        sa.Column("challenger_value", sa.Float, nullable=True),
        sa.Column("challenger_ci_low", sa.Float, nullable=True),
        sa.Column("challenger_ci_high", sa.Float, nullable=True),
        sa.Column("difference", sa.Float, nullable=True),  # challenger minus champion, oriented: > 0 is better
        sa.Column("difference_ci_low", sa.Float, nullable=True),
        sa.Column("difference_ci_high", sa.Float, nullable=True),
        sa.Column("paired", sa.Boolean, nullable=False),  # True: both arms scored the same requests (shadow)
        sa.Column("decision", sa.String(20), nullable=False),  # promote | extend | abort
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("pipeline", "decided_on", name="uq_rollout_decisions_day"),
    )
