"""
### Pipeline files that cannot be used

Holds no DAG while every pipeline YAML is valid. When one is not, this file fails to import with a
message naming the YAML file and the field, so Airflow shows it under *Dag Import Errors*, while the
retrain, batch-predict and drift-check DAG files keep building every valid pipeline: one team's typo
does not stop the others' schedules.
"""

from __future__ import annotations

from lifecycle.config.pipeline import ConfigError, load_pipelines

_, _errors = load_pipelines()
if _errors:
    raise ConfigError(
        f"{len(_errors)} pipeline file(s) left out; the other pipelines' DAGs are loaded:\n" + "\n".join(_errors)
    )
