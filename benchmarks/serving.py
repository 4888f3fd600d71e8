"""Online predictions: our service (`python -m lifecycle serve`) against MLflow's scoring server, side by side.

One run builds a throwaway MLflow store (SQLite tracking database and artifacts in a temporary folder) and
three LightGBM pipelines trained on demo activity joined with accounts() and logged the way the retrain logs
them (skops, trust list, runtime code, signature, input example, digests). Each is registered as the champion
of its own pipeline (`demo_churn`, `churn_b`, `churn_c`, copies of demo_churn.yaml). Two servers then serve
`demo_churn`'s champion, each as a subprocess with its default settings:

  ours    python -m lifecycle serve --host 127.0.0.1 --port N, PIPELINES_DIR holding demo_churn.yaml only;
          POST /pipelines/demo_churn/predict with one row object, or {"rows": [...]}, each row the id column
          plus the signature's columns. It checks the rows, scores them and queues one log row per
          prediction for the SQLite predictions database (written by its background thread).
  mlflow  mlflow models serve -m models:/demo_churn@champion --env-manager local -w 1; POST /invocations
          with {"dataframe_split": {"columns": [...], "data": [...]}} of the signature's columns. It answers
          predict_proba (both classes); it checks the schema but logs nothing.

Both are FastAPI on a single uvicorn process. The client is this script (standard library only): a closed
loop of `--threads` client threads (1 and 4 by default), each with its own persistent HTTP/1.1 connection
(`http.client.HTTPConnection`, keep-alive, bodies encoded before the clock starts), sending back to back.
A cell is (server, rows per request, threads): `--warmup` untimed requests per thread on the fresh
connections, then `--requests` (single rows) or `--batch-requests` (100-row requests) timed ones split over
the threads. Requests/s is timed requests over the wall time from the start barrier to the last thread's
last answer; latency is each request's send-to-last-byte time, p50 and p99 pooled over all rounds. Every
round runs every cell for both servers back to back, the server that goes first alternating from cell to
cell and round to round, with `--pause` seconds between cells (our log writer drains in it), so machine
noise hits both alike. The ratios (ours / mlflow) are the numbers to read: per round, then the median.
Both servers answer the same rows with the same model: the script checks that our scores equal MLflow's
P(positive) before it times anything.

Memory: the resident set (VmRSS from /proc, the process and all its children) of each server after the
warm-up and after the rounds, and of a second instance of ours serving all three pipelines (each with its own
champion) after the same warm-up on each pipeline, measured once the rounds are over. MLflow's tree is the
`mlflow models serve` command and the uvicorn process it starts (the server itself); both are listed.

Targets (issue 10): our requests/s at least MLflow's; p99 of single rows under 20 ms on an idle machine. The
machine is shared, so the load average is printed at the start and the end.

    .venv/bin/python benchmarks/serving.py                      # 3 rounds, about 3-4 minutes
    .venv/bin/python benchmarks/serving.py --rounds 5 --requests 2000 --batch-requests 500
    .venv/bin/python benchmarks/serving.py --threads 1,2,8 --batch-rows 500 --out benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_YAML = REPO / "include" / "pipelines" / "demo_churn.yaml"
VENV_BIN = Path(sys.executable).parent
MARKER = "@@SERVING_BENCH@@"
PIPELINES = ("demo_churn", "churn_b", "churn_c")  # the first is the one both servers serve in the rounds
SERVERS = ("ours", "mlflow")
MB = 1024 * 1024


# --- preparation, in a process of its own: the store, the models, the rows ----------------------------------------


def prepare(spec: dict[str, Any]) -> None:
    """Train, log and register one champion per pipeline; write the scoring rows; print a summary."""
    import datetime as dt
    from importlib.metadata import version

    import mlflow
    import pandas as pd
    import skops.io
    import yaml
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline

    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.devtools import demo_data
    from lifecycle.ml.features import build_preprocessor, input_columns
    from lifecycle.ml.metrics import scores
    from lifecycle.ml.training import lightgbm_estimator
    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import model_trust, tracking

    root = Path(spec["root"])

    def joined(start: dt.date, days: int, rows: int, seed: int) -> pd.DataFrame:
        activity = pd.concat(
            [demo_data.activity(start + dt.timedelta(days=i), rows, seed=seed + i) for i in range(days)],
            ignore_index=True,
        )
        return activity.merge(demo_data.accounts(), on="account_id", how="left")

    demo = yaml.safe_load(DEMO_YAML.read_text())
    for folder, names in (("pipelines-1", PIPELINES[:1]), ("pipelines-3", PIPELINES)):
        (root / folder).mkdir()
        for name in names:
            (root / folder / f"{name}.yaml").write_text(yaml.safe_dump(demo | {"name": name}, sort_keys=False))
    params = {"n_estimators": spec["trees"], "num_leaves": spec["leaves"], "learning_rate": 0.1,
              "min_child_samples": 20}  # fmt: skip
    engine = engine_for(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
    trained = {}
    try:
        for index, name in enumerate(PIPELINES):
            config = load_pipeline(root / "pipelines-3" / f"{name}.yaml")
            started = time.perf_counter()
            train = joined(dt.date(2026, 1, 1), spec["train_days"], spec["train_rows"], seed=11 + 100 * index)
            columns = input_columns(config, train)
            model = Pipeline([("features", build_preprocessor(config, train)),
                              ("model", lightgbm_estimator(config, 1).set_params(**params))])  # fmt: skip
            model.fit(train[columns], train[config.target])
            example = train[columns].head(5)
            with mlflow.start_run(experiment_id=tracking.experiment_id(name)) as run:  # as retrain._log_model
                info = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=infer_signature(example, scores(model, example, config.task)),
                    input_example=example,
                    pyfunc_predict_fn="predict_proba",
                    pip_requirements=[f"{p}=={version(p)}" for p in
                                      ("scikit-learn", "scipy", "lightgbm", "pandas", "numpy", "skops", "mlflow")],
                    serialization_format="skops",
                    skops_trusted_types=model_trust.TRUSTED_TYPES,
                    code_paths=[model_trust.RUNTIME_CODE],
                    tags={"pipeline": name, "model.family": "lightgbm"},
                )  # fmt: skip
            model_trust.record_digests(info.model_id, info.model_uri)
            size = len(skops.io.dumps(model))
            number = tracking.register_champion(
                info.model_uri, name, {}, run.info.run_id, None, engine=engine, moved_by="benchmarks/serving.py"
            )
            trained[name] = {"version": number, "rows": len(train), "skops_mb": round(size / MB, 2),
                             "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    finally:
        engine.dispose()
    config = load_pipeline(root / "pipelines-1" / f"{PIPELINES[0]}.yaml")
    frame = joined(dt.date(2026, 2, 10), 1, spec["rows"], seed=99)
    columns = input_columns(config, frame)
    rows = []
    for record in frame[[config.id_column, *columns]].to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    (root / "rows.json").write_text(json.dumps({"id_column": config.id_column, "columns": columns, "rows": rows}))
    summary = {"models": trained, "params": params, "columns": len(columns),
               "missing_values": int(frame[columns].isna().sum().sum())}  # fmt: skip
    print(MARKER + json.dumps(summary), flush=True)


# --- servers -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess in a session of its own (so it and its children stop together), logging to a file."""

    def __init__(self, label: str, command: list[str], env: dict[str, str], root: Path, port: int) -> None:
        self.label, self.port = label, port
        self.log = root / f"{label}.log"
        self.launched = time.monotonic()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
            )

    def output(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, path: str, timeout: float, ok: Any = None) -> float:
        """Seconds from the launch until `path` answers 200 (and `ok` accepts its JSON)."""
        while time.monotonic() - self.launched < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, body = get(self.port, path)
                if status == 200 and (ok is None or ok(json.loads(body))):
                    return time.monotonic() - self.launched
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} was not ready within {timeout:.0f} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)  # our service then flushes its prediction log
            try:
                self.process.wait(45)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def rss_mb(self) -> dict[str, Any]:
        """VmRSS of the process and of each descendant (from /proc), and their sum."""
        pids, found = [self.process.pid], []
        while pids:
            pid = pids.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = [
                    int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
                ]  # fmt: skip
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
            found.append({"pid": pid, "name": fields["Name"].strip(), "rss_mb": round(rss, 1)})
            pids.extend(children)
        return {"total_mb": round(sum(p["rss_mb"] for p in found), 1), "processes": found}


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(port: int, path: str, body: bytes) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path} on port {port}: {response.status} {data[:500]!r}")
        return json.loads(data)
    finally:
        conn.close()


def server_env(root: Path, pipelines_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_SERVING_")}  # default settings
    env |= {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(root / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{root / 'artifacts'}",
        "DATA_ROOT": str(root / "data"),
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{root / 'predictions.db'}",
        "PIPELINES_DIR": str(pipelines_dir),
        "TMPDIR": str(root / "tmp"),  # MLflow downloads the model here: deleted with the rest
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `mlflow models serve` execs `uvicorn`
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    return env


def start_ours(root: Path, pipelines_dir: Path, label: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "lifecycle", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Server(label, command, server_env(root, pipelines_dir), root, port)


def start_mlflow(root: Path) -> Server:
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{PIPELINES[0]}@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    return Server("mlflow", command, server_env(root, root / "pipelines-1"), root, port)


def ours_ready(names: tuple[str, ...]) -> Any:
    return lambda body: body.get("ready") and all(body["pipelines"][n]["champion_version"] for n in names)


# --- the client ----------------------------------------------------------------------------------------------------


class Requests:
    """Pre-encoded request bodies for one server: `single` (one row each) and `batch` (batch_rows each)."""

    def __init__(self, server: str, data: dict[str, Any], batch_rows: int, pipeline: str = PIPELINES[0]) -> None:
        rows, columns = data["rows"], data["columns"]
        batches = [rows[i : i + batch_rows] for i in range(0, len(rows) - batch_rows + 1, batch_rows)]
        if server == "ours":
            self.path = f"/pipelines/{pipeline}/predict"
            self.single = [json.dumps(row).encode() for row in rows]
            self.batch = [json.dumps({"rows": b}).encode() for b in batches]
        else:
            self.path = "/invocations"

            def split(part: list[dict[str, Any]]) -> bytes:
                table = {"columns": columns, "data": [[row[c] for c in columns] for row in part]}
                return json.dumps({"dataframe_split": table}).encode()

            self.single = [split([row]) for row in rows]
            self.batch = [split(b) for b in batches]

    def bodies(self, batch: bool) -> list[bytes]:
        return self.batch if batch else self.single


def client_thread(
    port: int, path: str, bodies: list[bytes], offset: int, warmup: int, count: int, start: threading.Barrier,
    out: dict[str, Any],
) -> None:  # fmt: skip
    """One closed-loop client: its own keep-alive connection, `warmup` untimed requests, then `count` timed ones."""
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies, errors = [], 0
    try:
        for i in range(warmup):
            conn.request("POST", path, bodies[(offset + i) % len(bodies)], headers)
            response = conn.getresponse()
            response.read()
            errors += response.status != 200
        start.wait()
        for i in range(count):
            body = bodies[(offset + warmup + i) % len(bodies)]
            sent = time.perf_counter()
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - sent)
            errors += response.status != 200
        out["ended"] = time.perf_counter()
    except BaseException as err:  # noqa: BLE001 - reported by the main thread
        out["error"] = repr(err)
        with contextlib.suppress(threading.BrokenBarrierError):
            start.abort()
    finally:
        conn.close()
        out["latencies"], out["errors"] = latencies, errors


def run_cell(port: int, path: str, bodies: list[bytes], threads: int, requests: int, warmup: int) -> dict[str, Any]:
    """`requests` timed requests over `threads` closed-loop client threads: requests/s and the latencies."""
    start = threading.Barrier(threads + 1)
    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    share = [requests // threads + (i < requests % threads) for i in range(threads)]
    workers = [
        threading.Thread(
            target=client_thread,
            args=(port, path, bodies, i * len(bodies) // threads, warmup, share[i], start, outs[i]),
            daemon=True,
        )
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    failed = [o["error"] for o in outs if "error" in o]
    errors = sum(o["errors"] for o in outs)
    if failed or errors:
        raise RuntimeError(f"client failures on port {port}{path}: {failed[:3]}, {errors} non-200 answers")
    seconds = max(o["ended"] for o in outs) - started
    return {"seconds": seconds, "rps": requests / seconds, "latencies": [x for o in outs for x in o["latencies"]]}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def same_scores(ports: dict[str, int], requests: dict[str, Requests]) -> float:
    """Our scores against MLflow's P(positive) on the same rows: the largest absolute difference."""
    diffs = []
    for i in range(20):
        ours = post(ports["ours"], requests["ours"].path, requests["ours"].single[i])["score"]
        theirs = post(ports["mlflow"], requests["mlflow"].path, requests["mlflow"].single[i])["predictions"][0][1]
        diffs.append(abs(ours - theirs))
    ours = [p["score"] for p in post(ports["ours"], requests["ours"].path, requests["ours"].batch[0])["predictions"]]
    theirs = [p[1] for p in post(ports["mlflow"], requests["mlflow"].path, requests["mlflow"].batch[0])["predictions"]]
    if len(ours) != len(theirs):
        raise RuntimeError(f"{len(ours)} predictions from ours, {len(theirs)} from mlflow")
    diffs += [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    if max(diffs) > 1e-9:
        raise RuntimeError(f"the servers disagree: scores differ by up to {max(diffs)}")
    return max(diffs)


def warm(port: int, requests: Requests, singles: int, batches: int) -> None:
    """Sequential untimed requests on one connection: imports, first-call allocations, caches."""
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for body in [*requests.single[:singles], *requests.batch[:batches]]:
            conn.request("POST", requests.path, body, headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"warm-up on port {port}: {response.status} {data[:500]!r}")
    finally:
        conn.close()


# --- main ----------------------------------------------------------------------------------------------------------


def summarize(cells: dict[tuple[str, int, int], list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for (server, rows, threads), runs in cells.items():
        latencies = [x for r in runs for x in r["latencies"]]
        total = sum(len(r["latencies"]) for r in runs)
        out[f"{server}/{rows}/{threads}"] = {
            "server": server,
            "rows_per_request": rows,
            "threads": threads,
            "requests": total,
            "rps": total / sum(r["seconds"] for r in runs),  # over all rounds
            "rps_per_round": [round(r["rps"], 1) for r in runs],
            "p50_ms": percentile(latencies, 50) * 1000,
            "p90_ms": percentile(latencies, 90) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every cell for both servers")
    parser.add_argument("--threads", default="1,4", help="comma-separated client thread counts")
    parser.add_argument("--requests", type=int, default=600, help="timed single-row requests per cell and round")
    parser.add_argument("--batch-requests", type=int, default=150, help="timed batch requests per cell and round")
    parser.add_argument("--batch-rows", type=int, default=100, help="rows per batch request")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per client thread before a cell")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between cells")
    parser.add_argument("--rows", type=int, default=2000, help="distinct scoring rows the requests cycle through")
    parser.add_argument("--trees", type=int, default=100, help="LightGBM n_estimators of the models")
    parser.add_argument("--leaves", type=int, default=15, help="LightGBM num_leaves of the models")
    parser.add_argument("--train-days", type=int, default=14)
    parser.add_argument("--train-rows", type=int, default=1000, help="training rows per day")
    parser.add_argument("--skip-memory", action="store_true", help="no 3-pipeline instance")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--prepare", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(json.loads(args.prepare))
        return
    threads_list = [int(t) for t in args.threads.split(",") if t]
    if args.rows < args.batch_rows:
        parser.error("--rows must be at least --batch-rows")

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # the finally blocks below stop the servers and delete the folder

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    began, load_start = time.monotonic(), load_average()
    print(f"load average at start (1/5/15 min): {load_start}; {os.cpu_count()} CPUs")
    servers: list[Server] = []
    root = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    try:
        (root / "tmp").mkdir()
        env = server_env(root, root / "pipelines-1")
        spec = {"root": str(root), "trees": args.trees, "leaves": args.leaves, "rows": args.rows,
                "train_days": args.train_days, "train_rows": args.train_rows}  # fmt: skip
        done = subprocess.run([sys.executable, __file__, "--prepare", json.dumps(spec)], capture_output=True,
                              text=True, env=env, cwd=root, timeout=900)  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"preparation failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-5000:]}")
        prepared = json.loads(lines[-1][len(MARKER) :])
        data = json.loads((root / "rows.json").read_text())
        models = ", ".join(
            f"{n} v{m['version']} ({m['rows']:,} rows, {m['skops_mb']} MB as skops, {m['seconds']} s)"
            for n, m in prepared["models"].items()
        )
        print(f"models: LightGBM {prepared['params']} on {prepared['columns']} input columns; {models}")
        print(f"scoring rows: {len(data['rows']):,} ({prepared['missing_values']} missing values, sent as null)")

        ours = start_ours(root, root / "pipelines-1", "ours")
        servers.append(ours)
        mlflow = start_mlflow(root)
        servers.append(mlflow)
        started = {"ours": ours.wait_ready("/ready", 180, ours_ready(PIPELINES[:1])),
                    "mlflow": mlflow.wait_ready("/ping", 180)}  # fmt: skip
        print("ready (launch to first 200 on /ready, /ping; both launched at once): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in started.items()))  # fmt: skip
        ports = {"ours": ours.port, "mlflow": mlflow.port}
        requests = {s: Requests(s, data, args.batch_rows) for s in SERVERS}
        diff = same_scores(ports, requests)
        print(f"same answers: our scores equal MLflow's P(positive) on 20 single rows and {args.batch_rows} "
              f"batched rows (max |diff| {diff:g})")  # fmt: skip
        for s in SERVERS:
            warm(ports[s], requests[s], 200, 20)
        memory = {f"{s}, 1 pipeline, after warm-up": (ours if s == "ours" else mlflow).rss_mb() for s in SERVERS}

        plan = [(rows, threads) for rows in (1, args.batch_rows) for threads in threads_list]
        cells: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        ratios: dict[tuple[int, int], list[float]] = {}
        print(f"\n{args.rounds} rounds of {len(plan)} cells x 2 servers; single rows {args.requests} requests per "
              f"cell, {args.batch_rows}-row requests {args.batch_requests}; warm-up {args.warmup} per thread")  # fmt: skip
        for round_index in range(args.rounds):
            for cell_index, (rows, threads) in enumerate(plan):
                order = SERVERS if (round_index + cell_index) % 2 == 0 else SERVERS[::-1]
                count = args.requests if rows == 1 else args.batch_requests
                measured = {}
                for s in order:
                    time.sleep(args.pause)
                    bodies = requests[s].bodies(batch=rows != 1)
                    measured[s] = run_cell(ports[s], requests[s].path, bodies, threads, count, args.warmup)
                    cells.setdefault((s, rows, threads), []).append(measured[s])
                ratio = measured["ours"]["rps"] / measured["mlflow"]["rps"]
                ratios.setdefault((rows, threads), []).append(ratio)
                print(f"  round {round_index + 1} {rows:>4d} rows x {threads} threads: "
                      + ", ".join(f"{s} {measured[s]['rps']:7.1f} req/s" for s in order)
                      + f"  ours/mlflow {ratio:.2f}  (load {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip
        for s in SERVERS:
            memory[f"{s}, 1 pipeline, after the rounds"] = (ours if s == "ours" else mlflow).rss_mb()

        if not args.skip_memory:
            three = start_ours(root, root / "pipelines-3", "ours-3")
            servers.append(three)
            three.wait_ready("/ready", 180, ours_ready(PIPELINES))
            warm(three.port, requests["ours"], 200, 20)  # the same warm-up as the 1-pipeline instance had
            for name in PIPELINES[1:]:
                warm(three.port, Requests("ours", data, args.batch_rows, name), 200, 20)
            memory["ours, 3 pipelines, after warm-up"] = three.rss_mb()
            three.stop()

        summary = summarize(cells)
        load_end = load_average()
        print(f"\nclient: {', '.join(map(str, threads_list))} closed-loop threads, one keep-alive "
              f"http.client.HTTPConnection each; latency = send to last byte; p50/p99 pooled over {args.rounds} rounds")  # fmt: skip
        print(f"{'server':8s} {'rows/req':>8s} {'threads':>7s} {'requests':>8s} {'req/s':>8s} {'rows/s':>9s} "
              f"{'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}")  # fmt: skip
        for rows, threads in plan:
            for s in SERVERS:
                r = summary[f"{s}/{rows}/{threads}"]
                print(f"{s:8s} {rows:8d} {threads:7d} {r['requests']:8d} {r['rps']:8.1f} {r['rps'] * rows:9.0f} "
                      f"{r['p50_ms']:7.2f} {r['p90_ms']:7.2f} {r['p99_ms']:7.2f} {r['max_ms']:7.1f}")  # fmt: skip
        print("\nours / mlflow (req/s: per-round ratios and their median; latency: pooled percentiles)")
        print(f"{'rows/req':>8s} {'threads':>7s} {'req/s per round':>24s} {'median':>7s} {'p50':>6s} {'p99':>6s}")
        compared = {}
        for rows, threads in plan:
            a, b = summary[f"ours/{rows}/{threads}"], summary[f"mlflow/{rows}/{threads}"]
            per_round = ratios[(rows, threads)]
            compared[f"{rows}/{threads}"] = {
                "rows_per_request": rows,
                "threads": threads,
                "rps_ratio_per_round": [round(x, 3) for x in per_round],
                "rps_ratio_median": round(statistics.median(per_round), 3),
                "p50_ratio": round(a["p50_ms"] / b["p50_ms"], 3),
                "p99_ratio": round(a["p99_ms"] / b["p99_ms"], 3),
            }
            c = compared[f"{rows}/{threads}"]
            print(f"{rows:8d} {threads:7d} {' '.join(f'{x:.2f}' for x in per_round):>24s} "
                  f"{c['rps_ratio_median']:7.2f} {c['p50_ratio']:6.2f} {c['p99_ratio']:6.2f}")  # fmt: skip

        print("\nmemory (VmRSS from /proc; the process and its children)")
        for label, m in memory.items():
            parts = ", ".join(f"{p['name']} {p['pid']}: {p['rss_mb']:.0f}" for p in m["processes"])
            print(f"  {label:38s} {m['total_mb']:7.1f} MB   ({parts})")

        single = summary[f"ours/1/{threads_list[0]}"]
        slowest = min(c["rps_ratio_median"] for c in compared.values())
        print(f"\ntargets: throughput >= mlflow in every cell: {'met' if slowest >= 1 else 'missed'} "
              f"(lowest median ratio {slowest:.2f}); single-row p99 < 20 ms at {threads_list[0]} thread(s): "
              f"{'met' if single['p99_ms'] < 20 else 'missed'} ({single['p99_ms']:.1f} ms)")  # fmt: skip
        print(f"load average at start {load_start}, at end {load_end} (1/5/15 min); "
              f"{time.monotonic() - began:.0f} s in all")  # fmt: skip
        result = {
            "benchmark": "serving",
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "prepare")},
            "models": prepared["models"],
            "model_params": prepared["params"],
            "cells": summary,
            "ours_over_mlflow": compared,
            "memory": memory,
            "load_average": {"start": load_start, "end": load_end},
            "cpus": os.cpu_count(),
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
    except BaseException:
        for server in servers:
            if server.process.poll() is not None and server.process.returncode not in (0, -signal.SIGTERM):
                print(
                    f"--- {server.label} exited with {server.process.returncode}:\n{server.output()}", file=sys.stderr
                )
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up even if told to stop again
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the servers are stopped and the temporary folder is removed", file=sys.stderr)
        sys.exit(130)
