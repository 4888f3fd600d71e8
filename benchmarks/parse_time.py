"""DAG file parse time: what the DAG processor pays per file once `airflow.sdk` is already imported.

For every `dags/*.py`, a fresh Python process imports `airflow.sdk` first (not timed), then loads the DAG
file the way Airflow's DAG processor does (`SourceFileLoader` + `exec_module`) and times only that. Each
file is loaded once untimed to warm the bytecode cache, then `--repeats` times timed, then once more under
`-X importtime` to name the slowest imports. The run fails (exit 1) when a file's median is over the
budget, when it imports a heavy module (pandas, sklearn, ...), or when it does not import at all.

Each timed run also reports how much of its time went to `lifecycle.config.pipeline.load_pipelines` (reading and
validating the YAMLs, which every DAG file does) and how much to the rest (imports, building the DAGs).
`--pipelines N` parses N generated copies of the demo pipeline instead of the repo's own, to see how the
per-pipeline cost scales (issue 12: 200 pipelines in under 1.5 s per file); `--cprofile` adds one cProfile
run per file and prints its most expensive functions.

Nothing is written to the repository: AIRFLOW_HOME, the bytecode cache (PYTHONPYCACHEPREFIX), the generated
pipelines and the data/artifact roots point at a temporary directory that is removed at the end.

    .venv/bin/python benchmarks/parse_time.py                   # 5 repeats, 0.5 s budget
    .venv/bin/python benchmarks/parse_time.py --pipelines 200   # 200 pipelines, 1.5 s budget
    .venv/bin/python benchmarks/parse_time.py --repeats 9 --out benchmarks/results/parse_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "sklearn", "lightgbm", "mlflow", "great_expectations", "matplotlib")
MARKER = "@@PARSE_TIME@@"
# DAG files that may rightly define no DAG: pipeline_errors.py holds none while every YAML is valid, and
# rollout.py builds one only for pipelines with a rollout (the demo has none).
MAY_BE_EMPTY = {"pipeline_errors.py", "rollout.py"}
PROFILE_MARKER = "@@PARSE_TIME_START@@"

# Runs in the child. argv: dag file path, comma-separated heavy module names, "time", "profile" (-X importtime)
# or "cprofile".
CHILD = r"""
import importlib.machinery, importlib.util, json, sys, time

path, heavy, mode = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
t0 = time.perf_counter()
import airflow.sdk  # what every DAG file shares; already imported in the DAG processor
sdk_seconds = time.perf_counter() - t0

def top(modules):
    return sorted({m.split(".")[0] for m in modules} - {name})

# Time lifecycle.config.pipeline.load_pipelines (reading and validating the YAMLs) apart from the rest of the file:
# wrap it as soon as lifecycle.config.pipeline is imported (the DAG file imports it; nothing is imported early).
load_seconds = []

def wrap(module):
    inner = module.load_pipelines
    def load_pipelines(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            load_seconds.append(time.perf_counter() - started)
    module.load_pipelines = load_pipelines

class TimeLoad:
    def find_spec(self, fullname, target_path=None, target=None):
        if fullname != "lifecycle.config.pipeline":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, target_path)
        if spec is not None:
            run = spec.loader.exec_module
            def exec_module(module):
                run(module)
                wrap(module)
            spec.loader.exec_module = exec_module
        return spec

if "lifecycle.config.pipeline" in sys.modules:
    wrap(sys.modules["lifecycle.config.pipeline"])
else:
    sys.meta_path.insert(0, TimeLoad())

# The cyclic garbage collector's share: with hundreds of DAGs, each full collection walks every object built.
gc_seconds, gc_started = [0.0], [0.0]

def on_gc(phase, info):
    if phase == "start":
        gc_started[0] = time.perf_counter()
    else:
        gc_seconds[0] += time.perf_counter() - gc_started[0]

import gc
gc.callbacks.append(on_gc)

before = set(sys.modules)
if mode == "profile":
    print(MARKER_START, file=sys.stderr, flush=True)
profiler = None
if mode == "cprofile":
    import cProfile
    profiler = cProfile.Profile()
name = "unusual_prefix_bench_" + path.replace("/", "_").replace(".", "_")
error = None
started, cpu_started, gc_seconds[0] = time.perf_counter(), time.process_time(), 0.0
try:
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if profiler:
        profiler.enable()
    loader.exec_module(module)
except BaseException as err:  # report it, like the DAG processor's import error
    error = f"{type(err).__name__}: {err}"
finally:
    if profiler:
        profiler.disable()
seconds = time.perf_counter() - started
cpu_seconds = time.process_time() - cpu_started
gc.callbacks.remove(on_gc)

hot = []
if profiler:
    import pstats
    stats = pstats.Stats(profiler).stats
    def where(key):
        file, line, func = key
        return f"{'/'.join(file.split('/')[-2:])}:{line}({func})" if line else func
    for key, (cc, nc, tt, ct, _) in sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]:
        hot.append({"function": where(key), "calls": nc, "self_s": round(tt, 4), "cumulative_s": round(ct, 4)})

new = set(sys.modules) - before
from airflow.sdk import DAG
dags = [] if error else sorted(v.dag_id for v in vars(module).values() if isinstance(v, DAG))
print(MARKER + json.dumps({
    "seconds": seconds,
    "cpu_seconds": cpu_seconds,
    "gc_seconds": gc_seconds[0],
    "load_seconds": sum(load_seconds),
    "load_calls": len(load_seconds),
    "sdk_seconds": sdk_seconds,
    "error": error,
    "dag_ids": dags,
    "new_modules": len(new),
    "new_top_level": top(new),
    "heavy_imported": [h for h in heavy if any(m == h or m.startswith(h + ".") for m in new)],
    "heavy_preloaded": [h for h in heavy if h in before],
    "cprofile": hot,
}))
""".replace("MARKER_START", repr(PROFILE_MARKER)).replace("MARKER +", repr(MARKER) + " +")


def child_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(tmp / "airflow"),  # never ~/airflow or the repo's .local
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONPYCACHEPREFIX": str(tmp / "pycache"),  # keep .pyc files out of dags/ and include/
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "dags"), env.get("PYTHONPATH")])),
            "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "true",
        }
    )
    # Optional for parsing (used only in ${...} expansion); set so nothing points at the repo's .local.
    env.setdefault("DATA_ROOT", str(tmp / "data"))
    env.setdefault("ARTIFACT_ROOT", f"file://{tmp / 'artifacts'}")
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# Appended to every generated copy: a shadow test, so that rollout.py builds its DAG for each pipeline too.
SHADOW = "\nserving:\n  rollout: {mode: shadow, challenger: challenger}\n"


def write_pipelines(folder: Path, count: int) -> list[str]:
    """`count` distinct copies of the demo pipeline: each with its own `name` and `model_name` (the two things
    `load_pipelines` requires to be unique across files), and a shadow rollout so that every DAG file builds
    one DAG per pipeline."""
    demo = (REPO / "include" / "pipelines" / "demo_churn.yaml").read_text()
    assert demo.count("\nname: demo_churn\n") == 1 and "\nserving:" not in demo, "the demo changed: adapt this"
    folder.mkdir(parents=True)
    names = []
    for i in range(count):
        name = f"bench_{i:04d}"
        text = demo.replace("\nname: demo_churn\n", f"\nname: {name}\nmodel_name: {name}_model\n")
        (folder / f"{name}.yaml").write_text(text + SHADOW)
        names.append(name)
    return names


def run_child(
    python: str, dag: Path, env: dict[str, str], mode: str = "time", timeout: float = 600
) -> tuple[dict, str]:
    cmd = [python, *(["-X", "importtime"] if mode == "profile" else []), "-c", CHILD, str(dag), ",".join(HEAVY)]
    cmd.append(mode)
    proc = subprocess.run(cmd, env=env, cwd=env["AIRFLOW_HOME"], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"child for {dag.name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return json.loads(lines[-1][len(MARKER) :]), proc.stderr


def slowest_imports(stderr: str, count: int) -> dict[str, list[dict]]:
    """From one `-X importtime` run, after the marker: what the DAG file itself pulled in.

    `direct` are the outermost imports (cumulative time, children included); `self` are the modules whose
    own top-level code took longest.
    """
    rows = []
    for line in stderr.split(PROFILE_MARKER, 1)[-1].splitlines():
        if not line.startswith("import time:"):
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
        if not self_us.strip().isdigit():  # the header line
            continue
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((name.strip(), int(self_us) / 1e6, int(cumulative_us) / 1e6, depth))
    if not rows:
        return {"direct": [], "self": []}
    outer = min(r[3] for r in rows)
    direct = sorted((r for r in rows if r[3] == outer), key=lambda r: r[2], reverse=True)[:count]
    own = sorted(rows, key=lambda r: r[1], reverse=True)[:count]
    return {
        "direct": [{"module": r[0], "cumulative_s": round(r[2], 3)} for r in direct],
        "self": [{"module": r[0], "self_s": round(r[1], 3)} for r in own],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dags", default=str(REPO / "dags" / "*.py"), help="glob of DAG files (default: dags/*.py)")
    parser.add_argument("--repeats", type=int, default=5, help="timed imports per file, each in a fresh process")
    parser.add_argument(
        "--budget", type=float, help="seconds allowed per file (median); default 0.5, or 1.5 with --pipelines"
    )
    parser.add_argument(
        "--pipelines",
        type=int,
        default=0,
        help="parse N generated copies of the demo pipeline (a temporary PIPELINES_DIR) instead of the repo's",
    )
    parser.add_argument("--cprofile", action="store_true", help="one cProfile run per file: its costliest functions")
    parser.add_argument(
        "--strict-max", action="store_true", help="apply the budget to the slowest repeat, not the median"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the -X importtime run per file")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the Airflow environment")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args()

    pattern = Path(args.dags)
    # Absolute: the children run in the temporary AIRFLOW_HOME, where a relative --dags would not resolve.
    files = sorted(p.resolve() for p in pattern.parent.glob(pattern.name) if p.name != "__init__.py")
    if not files:
        print(f"no DAG files match {args.dags}", file=sys.stderr)
        return 2

    if args.budget is None:
        args.budget = 1.5 if args.pipelines > 0 else 0.5
    tmp = Path(tempfile.mkdtemp(prefix="parse-time-"))
    (tmp / "airflow").mkdir()
    env = child_env(tmp)
    if args.pipelines > 0:
        write_pipelines(tmp / "pipelines", args.pipelines)
        env["PIPELINES_DIR"] = str(tmp / "pipelines")
    pipelines_dir = Path(env.get("PIPELINES_DIR") or REPO / "include" / "pipelines")
    pipeline_count = len(list(pipelines_dir.glob("*.y*ml")))
    results, failed = [], False
    started = time.perf_counter()
    try:
        for dag in files:
            row: dict = {"file": str(dag.relative_to(REPO)) if dag.is_relative_to(REPO) else str(dag)}
            try:
                first, _ = run_child(args.python, dag, env)  # untimed: compiles the bytecode cache
                runs = [run_child(args.python, dag, env)[0] for _ in range(args.repeats)]
                profile = (
                    None if args.no_profile else slowest_imports(run_child(args.python, dag, env, "profile")[1], 5)
                )
                hot = run_child(args.python, dag, env, "cprofile")[0]["cprofile"] if args.cprofile else None
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                row.update({"error": str(err), "ok": False})
                results.append(row)
                failed = True
                continue
            seconds = [r["seconds"] for r in runs]
            errors = sorted({r["error"] for r in runs if r["error"]})
            heavy = sorted({h for r in runs for h in r["heavy_imported"]})
            judged = max(seconds) if args.strict_max else statistics.median(seconds)
            load = statistics.median(r["load_seconds"] for r in runs)
            row.update(
                {
                    "median_s": round(statistics.median(seconds), 4),
                    "per_pipeline_ms": round(1000 * statistics.median(seconds) / max(pipeline_count, 1), 2),
                    "load_pipelines_median_s": round(load, 4),
                    "load_pipelines_calls": runs[-1]["load_calls"],
                    "rest_median_s": round(statistics.median(r["seconds"] - r["load_seconds"] for r in runs), 4),
                    "cpu_median_s": round(statistics.median(r["cpu_seconds"] for r in runs), 4),
                    "gc_median_s": round(statistics.median(r["gc_seconds"] for r in runs), 4),
                    "first_run_load_pipelines_s": round(first["load_seconds"], 4),
                    "max_s": round(max(seconds), 4),
                    "min_s": round(min(seconds), 4),
                    "runs_s": [round(s, 4) for s in seconds],
                    "first_run_s": round(first["seconds"], 4),
                    "budget_s": args.budget,
                    "over_budget": judged > args.budget,
                    "budget_ratio": round(judged / args.budget, 3),
                    "sdk_import_median_s": round(statistics.median(r["sdk_seconds"] for r in runs), 3),
                    "dag_ids": runs[-1]["dag_ids"],
                    "heavy_imported": heavy,
                    "heavy_preloaded_by_airflow_sdk": runs[-1]["heavy_preloaded"],
                    "new_top_level_modules": runs[-1]["new_top_level"],
                    "errors": errors,
                    "slowest_imports": profile,
                    "cprofile_top": hot,
                }
            )
            empty = not row["dag_ids"] and dag.name not in MAY_BE_EMPTY
            row["ok"] = not (row["over_budget"] or heavy or errors or empty)
            failed |= not row["ok"]
            results.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    stat = "max" if args.strict_max else "median"
    print(f"\nDAG file import time after `import airflow.sdk` ({args.repeats} fresh processes per file)")
    print(f"budget {args.budget:.2f} s per file on the {stat}; python {args.python}")
    where = f"{args.pipelines} generated copies of the demo" if args.pipelines > 0 else "the repo's pipelines"
    print(f"{pipeline_count} pipeline file(s): {where}")
    print("load s: in load_pipelines (YAML + validation); rest s: the rest (imports, DAGs); gc s: in the cyclic")
    print("garbage collector; cpu s: the CPU time of the same runs (less sensitive to other load on the machine)\n")
    header = (
        f"{'file':<28} {'median s':>9} {'ms/pipe':>7} {'load s':>7} {'rest s':>7} {'gc s':>6} {'cpu s':>6} "
        f"{'max s':>7} {'min s':>7} {'x budget':>8} {'dags':>4}  heavy imports  status"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        if "median_s" not in row:
            print(f"{row['file']:<28} {'-':>9}  ERROR")
            continue
        status = "ok" if row["ok"] else ("OVER BUDGET" if row["over_budget"] else "FAIL")
        heavy = ",".join(row["heavy_imported"]) or "none"
        print(
            f"{row['file']:<28} {row['median_s']:>9.3f} {row['per_pipeline_ms']:>7.2f} "
            f"{row['load_pipelines_median_s']:>7.3f} {row['rest_median_s']:>7.3f} {row['gc_median_s']:>6.3f} "
            f"{row['cpu_median_s']:>6.3f} {row['max_s']:>7.3f} "
            f"{row['min_s']:>7.3f} {row['budget_ratio']:>8.2f} {len(row['dag_ids']):>4}  {heavy:<14} {status}"
        )
    for row in results:
        print(f"\n{row['file']}:")
        if "error" in row:
            print("  " + row["error"].replace("\n", "\n  "))
            continue
        print(
            f"  runs (s): {row['runs_s']}; first (cold bytecode cache): {row['first_run_s']:.3f} s, of which "
            f"load_pipelines {row['first_run_load_pipelines_s']:.3f} s"
        )
        print(f"  `import airflow.sdk` itself (not counted): median {row['sdk_import_median_s']:.2f} s")
        ids = row["dag_ids"]
        shown = ", ".join(ids if len(ids) <= 4 else [*ids[:2], "...", ids[-1]])
        print(f"  dags ({len(ids)}): {shown or 'none'}")
        print(f"  new top-level packages: {', '.join(row['new_top_level_modules'])}")
        if row["heavy_preloaded_by_airflow_sdk"]:
            print(f"  note: already loaded by airflow.sdk: {row['heavy_preloaded_by_airflow_sdk']}")
        for error in row["errors"]:
            print(f"  IMPORT ERROR: {error}")
        if row["slowest_imports"]:
            direct = ", ".join(f"{r['module']} {r['cumulative_s']:.3f}" for r in row["slowest_imports"]["direct"])
            own = ", ".join(f"{r['module']} {r['self_s']:.3f}" for r in row["slowest_imports"]["self"])
            print(f"  slowest imports, cumulative s (one -X importtime run): {direct}")
            print(f"  slowest modules, self s: {own}")
        for hot in row["cprofile_top"] or []:
            print(
                f"  cProfile: {hot['self_s']:>7.3f} s self {hot['cumulative_s']:>7.3f} s cumulative "
                f"{hot['calls']:>8} calls  {hot['function']}"
            )

    summary = {
        "benchmark": "parse_time",
        "ok": not failed,
        "budget_s": args.budget,
        "statistic": stat,
        "repeats": args.repeats,
        "pipelines": pipeline_count,
        "generated_pipelines": args.pipelines,
        "wall_s": round(time.perf_counter() - started, 1),
        "files": results,
    }
    print(f"\n{'PASS' if not failed else 'FAIL'}: {sum(r.get('ok', False) for r in results)}/{len(results)} files ok")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
