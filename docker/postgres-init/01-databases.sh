#!/usr/bin/env bash
# Creates one database and one owner role each for Airflow's metadata, MLflow's backend store and the
# predictions written by the batch-predict DAGs, plus a second database of the mlflow role for the users
# and permissions of MLflow's basic-auth app (MLFLOW_AUTH_DB_NAME). Run by the postgres image on its
# first start only (empty data volume); the names and passwords come from the postgres service's
# environment. Every step is idempotent: re-running it creates what is missing and resets the passwords.
#
# On a data volume from before a database was added (e.g. mlflow_auth), run it once by hand:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/01-databases.sh
# Against an existing PostgreSQL server, run it by hand as a superuser, e.g.
#   PGHOST=db.example.com PGUSER=postgres AIRFLOW_DB_PASSWORD=... MLFLOW_DB_PASSWORD=... \
#     PREDICTIONS_DB_PASSWORD=... bash docker/postgres-init/01-databases.sh
# The body runs in a subshell: the postgres entrypoint sources a script that is not executable, and
# neither these shell options nor these variables may leak into it.
(
set -euo pipefail

: "${AIRFLOW_DB_NAME:=airflow}"
: "${AIRFLOW_DB_USER:=airflow}"
: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${MLFLOW_DB_NAME:=mlflow}"
: "${MLFLOW_DB_USER:=mlflow}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${MLFLOW_AUTH_DB_NAME:=mlflow_auth}"
: "${PREDICTIONS_DB_NAME:=predictions}"
: "${PREDICTIONS_DB_USER:=predictions}"
: "${PREDICTIONS_DB_PASSWORD:?PREDICTIONS_DB_PASSWORD is not set}"

create_database() {
  local name="$1" owner="$2" password="$3"
  echo "creating role ${owner} and database ${name}"
  # psql variables (:'x' quotes a literal, :"x" an identifier) keep the values out of the SQL text.
  psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-${PGUSER:-postgres}}" --dbname postgres \
    -v name="$name" -v owner="$owner" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'owner', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner')
\gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'owner', :'password')
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name')
\gexec
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
GRANT ALL PRIVILEGES ON DATABASE :"name" TO :"owner";
SQL
}

create_database "$AIRFLOW_DB_NAME" "$AIRFLOW_DB_USER" "$AIRFLOW_DB_PASSWORD"
create_database "$MLFLOW_DB_NAME" "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD"
# The same owner: only the MLflow server uses it, and it holds the mlflow role's password anyway.
create_database "$MLFLOW_AUTH_DB_NAME" "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD"
create_database "$PREDICTIONS_DB_NAME" "$PREDICTIONS_DB_USER" "$PREDICTIONS_DB_PASSWORD"
)
