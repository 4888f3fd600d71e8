"""DAG file parse time: what the DAG processor pays per file once `airflow.sdk` is already imported.

For every `dags/*.py`, a fresh Python process imports `airflow.sdk` first (not timed), then loads the DAG
file the way Airflow's DAG processor does (`SourceFileLoader` + `exec_module`) and times only that. Each
file is loaded once untimed to warm the bytecode cache, then `--repeats` times timed, then once more under
`-X importtime` to name the slowest imports. The run fails (exit 1) when a file's median is over the
budget, when it imports a heavy module (pandas, sklearn, ...), or when it does not import at all.

Nothing is written to the repository: AIRFLOW_HOME, the bytecode cache (PYTHONPYCACHEPREFIX) and the
data/artifact roots point at a temporary directory that is removed at the end.

    .venv/bin/python benchmarks/parse_time.py                   # 5 repeats, 0.5 s budget
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
PROFILE_MARKER = "@@PARSE_TIME_START@@"

# Runs in the child. argv: dag file path, comma-separated heavy module names, "profile" or "time".
CHILD = r"""
import importlib.machinery, importlib.util, json, sys, time

path, heavy, mode = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
t0 = time.perf_counter()
import airflow.sdk  # what every DAG file shares; already imported in the DAG processor
sdk_seconds = time.perf_counter() - t0

def top(modules):
    return sorted({m.split(".")[0] for m in modules} - {name})

before = set(sys.modules)
if mode == "profile":
    print(MARKER_START, file=sys.stderr, flush=True)
name = "unusual_prefix_bench_" + path.replace("/", "_").replace(".", "_")
error = None
started = time.perf_counter()
try:
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
except BaseException as err:  # report it, like the DAG processor's import error
    error = f"{type(err).__name__}: {err}"
seconds = time.perf_counter() - started

new = set(sys.modules) - before
from airflow.sdk import DAG
dags = [] if error else sorted(v.dag_id for v in vars(module).values() if isinstance(v, DAG))
print(MARKER + json.dumps({
    "seconds": seconds,
    "sdk_seconds": sdk_seconds,
    "error": error,
    "dag_ids": dags,
    "new_modules": len(new),
    "new_top_level": top(new),
    "heavy_imported": [h for h in heavy if any(m == h or m.startswith(h + ".") for m in new)],
    "heavy_preloaded": [h for h in heavy if h in before],
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


def run_child(
    python: str, dag: Path, env: dict[str, str], profile: bool = False, timeout: float = 300
) -> tuple[dict, str]:
    cmd = [python, *(["-X", "importtime"] if profile else []), "-c", CHILD, str(dag), ",".join(HEAVY)]
    cmd.append("profile" if profile else "time")
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
    parser.add_argument("--budget", type=float, default=0.5, help="seconds allowed per file (median)")
    parser.add_argument(
        "--strict-max", action="store_true", help="apply the budget to the slowest repeat, not the median"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the -X importtime run per file")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the Airflow environment")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args()

    pattern = Path(args.dags)
    files = sorted(p for p in pattern.parent.glob(pattern.name) if p.name != "__init__.py")
    if not files:
        print(f"no DAG files match {args.dags}", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="parse-time-"))
    (tmp / "airflow").mkdir()
    env = child_env(tmp)
    results, failed = [], False
    started = time.perf_counter()
    try:
        for dag in files:
            row: dict = {"file": str(dag.relative_to(REPO)) if dag.is_relative_to(REPO) else str(dag)}
            try:
                first, _ = run_child(args.python, dag, env)  # untimed: compiles the bytecode cache
                runs = [run_child(args.python, dag, env)[0] for _ in range(args.repeats)]
                profile = None if args.no_profile else slowest_imports(run_child(args.python, dag, env, True)[1], 5)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                row.update({"error": str(err), "ok": False})
                results.append(row)
                failed = True
                continue
            seconds = [r["seconds"] for r in runs]
            errors = sorted({r["error"] for r in runs if r["error"]})
            heavy = sorted({h for r in runs for h in r["heavy_imported"]})
            judged = max(seconds) if args.strict_max else statistics.median(seconds)
            row.update(
                {
                    "median_s": round(statistics.median(seconds), 4),
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
                }
            )
            row["ok"] = not (row["over_budget"] or heavy or errors or not row["dag_ids"])
            failed |= not row["ok"]
            results.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    stat = "max" if args.strict_max else "median"
    print(f"\nDAG file import time after `import airflow.sdk` ({args.repeats} fresh processes per file)")
    print(f"budget {args.budget:.2f} s per file on the {stat}; python {args.python}\n")
    header = (
        f"{'file':<28} {'median s':>9} {'max s':>7} {'min s':>7} {'x budget':>8} {'dags':>4}  heavy imports  status"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        if "median_s" not in row:
            print(f"{row['file']:<28} {'-':>9} {'-':>7} {'-':>7} {'-':>8} {'-':>4}  -              ERROR")
            continue
        status = "ok" if row["ok"] else ("OVER BUDGET" if row["over_budget"] else "FAIL")
        heavy = ",".join(row["heavy_imported"]) or "none"
        print(
            f"{row['file']:<28} {row['median_s']:>9.3f} {row['max_s']:>7.3f} {row['min_s']:>7.3f} "
            f"{row['budget_ratio']:>8.2f} {len(row['dag_ids']):>4}  {heavy:<14} {status}"
        )
    for row in results:
        print(f"\n{row['file']}:")
        if "error" in row:
            print("  " + row["error"].replace("\n", "\n  "))
            continue
        print(f"  runs (s): {row['runs_s']}; first (cold bytecode cache): {row['first_run_s']:.3f} s")
        print(f"  `import airflow.sdk` itself (not counted): median {row['sdk_import_median_s']:.2f} s")
        print(f"  dags: {', '.join(row['dag_ids']) or 'NONE'}")
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

    summary = {
        "benchmark": "parse_time",
        "ok": not failed,
        "budget_s": args.budget,
        "statistic": stat,
        "repeats": args.repeats,
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
