#!/usr/bin/env bash
# One-shot set-up run by the airflow-init service, as root, through the image's entrypoint (which has
# already waited for the metadata database):
#   1. migrate the metadata database (fails loudly, unlike the entrypoint's _AIRFLOW_DB_MIGRATE);
#   2. create the admin user of the FAB auth manager (kept as is when it exists);
#   3. hand the shared volumes (logs, ./data) to AIRFLOW_UID, the user the other services run as.
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

mkdir -p /opt/airflow/logs /opt/airflow/data
# Only what is not owned yet, so a large ./data is not rewritten on every start.
find /opt/airflow/logs /opt/airflow/data \( ! -user "$AIRFLOW_UID" -o ! -group 0 \) \
  -exec chown "${AIRFLOW_UID}:0" {} +
chmod g+rwx /opt/airflow/logs /opt/airflow/data

echo "airflow-init done"
