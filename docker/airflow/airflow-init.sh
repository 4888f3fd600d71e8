#!/usr/bin/env bash
# One-shot set-up run by the airflow-init service, as root, through the image's entrypoint (which has
# already waited for the metadata database):
#   1. migrate the metadata database (fails loudly, unlike the entrypoint's _AIRFLOW_DB_MIGRATE);
#   2. create the admin user of the FAB auth manager (kept as is when it exists);
#   3. create the Airflow roles the pipelines' `access` sections name, and sync their permissions
#      (docs/permissions.md); before the dag-processor starts, which refuses a DAG naming a missing role;
#   4. hand the shared volumes (logs, ./data) to AIRFLOW_UID, the user the other services run as.
set -euo pipefail

: "${AIRFLOW_UID:?AIRFLOW_UID is not set}"
: "${AIRFLOW_ADMIN_USERNAME:?AIRFLOW_ADMIN_USERNAME is not set}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set}"
: "${AIRFLOW_ADMIN_EMAIL:?AIRFLOW_ADMIN_EMAIL is not set}"

echo "Airflow $(airflow version)"

airflow db migrate

# Prints "... already exist in the db" and exits 0 when the user is there; the password is not reset.
airflow users create \
  --username "$AIRFLOW_ADMIN_USERNAME" \
  --password "$AIRFLOW_ADMIN_PASSWORD" \
  --email "$AIRFLOW_ADMIN_EMAIL" \
  --firstname Admin \
  --lastname User \
  --role Admin

# Prints and runs, each idempotent: `airflow roles create <every role named>`, `airflow sync-perm
# --include-dags`, and `airflow roles add-perms|del-perms` of the (global) permission to answer approvals:
# given to approver roles, taken from the other named roles. Fails, changing nothing, when a role approves
# one pipeline and rolls back another (it could approve that one's promotions too).
python -m lifecycle.ui.access setup

mkdir -p /opt/airflow/logs /opt/airflow/data
# Only what is not owned yet, so a large ./data is not rewritten on every start.
find /opt/airflow/logs /opt/airflow/data \( ! -user "$AIRFLOW_UID" -o ! -group 0 \) \
  -exec chown "${AIRFLOW_UID}:0" {} +
chmod g+rwx /opt/airflow/logs /opt/airflow/data

echo "airflow-init done"
