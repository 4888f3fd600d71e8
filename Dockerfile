# syntax=docker/dockerfile:1
# The Airflow image of the production-like stack (docker-compose.yml): the official image of the
# Airflow version pinned in requirements.txt, plus the project's requirements, DAGs, plugins and the
# `lifecycle` package (include/lifecycle, importable through PYTHONPATH).
#
#   docker build --build-arg AIRFLOW_VERSION=3.3.2 -t ml-lifecycle-airflow:3.3.2 .
#
# Keep AIRFLOW_VERSION equal to the apache-airflow pin in requirements.txt and to the build arg in
# docker-compose.yml (tests/static/test_compose_stack.py checks it).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
ENV PYTHONPATH=/opt/airflow/include \
    DATA_ROOT=/opt/airflow/data

USER airflow

# Dependencies first, so a code change does not reinstall them. Naming apache-airflow with the image's
# version keeps pip from moving Airflow; the fab extra brings the auth manager compose configures.
COPY --chown=airflow:0 requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir "apache-airflow[fab]==${AIRFLOW_VERSION}" -r /tmp/requirements.txt \
    && python -c "import airflow, sys; sys.exit(airflow.__version__ != '${AIRFLOW_VERSION}')"

# dags/, plugins/, include/, pyproject.toml and docker/airflow/ (.dockerignore lets only these in).
COPY --chown=airflow:0 . /opt/airflow/
RUN mkdir -p /opt/airflow/dags /opt/airflow/plugins /opt/airflow/data \
    && python -c "import lifecycle"

WORKDIR /opt/airflow
