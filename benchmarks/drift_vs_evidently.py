"""Drift check against Evidently's DataDriftPreset on the same 1M x 30 data (issue 12), side by side in one run.

Data: the 1M x 30 generator of drift_false_alarms.py (`big_frame`: 20 numeric columns of four shapes, 10
categorical ones of 3 to 100 Zipf levels). The reference is `big_frame(rows, seed 1)`; the current batch is
`big_frame(rows, seed 3)` with drift injected into six known columns (DRIFTS below: a mean shift, a scale
change, a count rate change, a rare-count rate change and two category mix changes); the other 24 columns are
stationary. Seeded and generated here, nothing downloaded. Both frames go to Parquet files in a temporary
folder, and every side reads the same files.

Sides, each run in a fresh process that reads the Parquet files, warms up on the first 2,000 rows of each frame
(untimed, so lazy imports and first-call costs are paid outside the clock on both sides), then times only the
computation and reports its peak RSS (`resource.getrusage`):

  ours               the project's interpreter: `drift.reference_profile(reference)` and then
                     `drift.check(profile, current, None, Drift())` with the default thresholds (PSI 0.2 on 10
                     reference-decile bins for numeric columns, Jensen-Shannon distance base 2 of 0.1 for
                     categorical ones, noise floor at quantile 0.99). In production the profile is built once, at
                     training, so two figures: "check only" and "profile + check".
  evidently          its own virtualenv (created on first use under .local/bench-venvs/evidently with uv, pinned
                     below; it is not a dependency of the project): `Dataset.from_pandas` of both frames with the
                     same numeric / categorical column lists, then `Report([DataDriftPreset()]).run(current,
                     reference)` with the preset's defaults (over 1,000 reference rows: Wasserstein distance
                     normed by the reference's std >= 0.1 for numeric columns with more than 5 values,
                     Jensen-Shannon distance (natural log) >= 0.1 for categorical and few-valued numeric ones).
                     Evidently computes from the raw reference and current frames on every run, so its time is
                     compared with ours both ways.
  evidently-matched  the same, with our method family and thresholds: `DataDriftPreset(num_method="psi",
                     num_threshold=0.2, cat_method="jensenshannon", cat_threshold=0.1 * sqrt(ln 2))` (Evidently's
                     JS distance uses the natural log, ours base 2: the threshold is scaled so both mean the same).
                     Evidently's PSI still bins differently (Sturges equal-width bins over both frames, or one bin
                     per value for columns with at most 20 values, instead of our 10 reference-decile bins).

`include_tests=True` is set on Evidently's reports so that each column's drift verdict is Evidently's own test
status; it adds one comparison per column. Report.run also builds the preset's plotly widgets (Evidently does
that inside run()), and the preset measures each column twice (DriftedColumnsCount's pass over all columns, then
one ValueDrift per column): that is what DataDriftPreset costs as shipped. The sides alternate within a round and the order
rotates from round to round, so machine load hits all alike; the reported figures are medians over rounds, the
ratio (Evidently / ours) is taken within each round. evidently-matched runs only in the first `--matched-rounds`
rounds (1 by default, which keeps the full run near 8 minutes on the shared 2-core machine).

Target (issue 12): ours at least 5x faster than the default DataDriftPreset counting our profile too, with the
same drifted columns flagged (`--check` exits 1 otherwise). The matched configuration is reported, not judged.

    .venv/bin/python benchmarks/drift_vs_evidently.py                  # 1M rows x 30 columns, 3 rounds, ~8 min
    .venv/bin/python benchmarks/drift_vs_evidently.py --rows 100000    # quick check, ~1.5 min
    .venv/bin/python benchmarks/drift_vs_evidently.py --rounds 5 --check --out benchmarks/results/drift_vs_evidently.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EVIDENTLY_VENV = REPO / ".local" / "bench-venvs" / "evidently"  # .local/ is git-ignored
EVIDENTLY_PIN = "evidently==0.7.23"
# 0.7.23 imports a pandas internal that pandas 3 removed; numpy, scipy and pyarrow follow the project's venv so
# the numeric kernels are the same on both sides.
EVIDENTLY_EXTRA = ("pandas==2.3.3",)
SAME_AS_PROJECT = ("numpy", "scipy", "pyarrow")
MARKER = "@@DRIFT_VS_EVIDENTLY@@"
SIDES = ("ours", "evidently", "evidently-matched")
WARMUP_ROWS = 2_000
MB = 1024 * 1024
TARGET = 5.0

Drift = Callable[[np.random.Generator, int], np.ndarray]


def _levels(count: int) -> np.ndarray:
    return np.array([f"v{j}" for j in range(count)], dtype=object)


def _zipf(count: int) -> np.ndarray:
    p = 1.0 / np.arange(1, count + 1) ** 1.1  # big_frame's category weights
    return p / p.sum()


# column -> (what changes, a draw of the drifted column); the stationary column it replaces is in the docstring
DRIFTS: dict[str, tuple[str, Drift]] = {
    "n00": ("normal(0, 1): mean +0.6 sd", lambda rng, n: rng.normal(0.6, 1.0, n)),
    "n05": ("Poisson: mean 2 -> 3", lambda rng, n: rng.poisson(3.0, n).astype(float)),
    "n06": ("lognormal(0, s): scale s 1 -> 1.8", lambda rng, n: rng.lognormal(0.0, 1.8, n)),
    "n07": ("binomial(3, p): p 0.05 -> 0.15", lambda rng, n: rng.binomial(3, 0.15, n).astype(float)),
    "c03": (
        "8 levels: half the mass to the reversed Zipf",
        lambda rng, n: rng.choice(_levels(8), n, p=0.5 * _zipf(8) + 0.5 * _zipf(8)[::-1]),
    ),
    "c08": (
        "100 levels: 40% of the mass spread evenly",
        lambda rng, n: rng.choice(_levels(100), n, p=0.6 * _zipf(100) + 0.4 / 100),
    ),
}


# --- data, in this process ------------------------------------------------------------------------------------------


def write_data(rows: int, thresholds: dict[str, float], folder: Path) -> dict[str, Any]:
    """Write reference.parquet and current.parquet; return the spec every worker reads."""
    from drift_false_alarms import big_frame  # the existing 1M x 30 generator (20 numeric, 10 categorical)

    reference, numeric, categorical = big_frame(rows, 1)
    reference.to_parquet(folder / "reference.parquet", index=False)
    del reference
    current, _, _ = big_frame(rows, 3)
    rng = np.random.default_rng(12)
    for column, (_, draw) in DRIFTS.items():
        current[column] = draw(rng, rows)
    current.to_parquet(folder / "current.parquet", index=False)
    spec = {"rows": rows, "numeric": numeric, "categorical": categorical, "injected": sorted(DRIFTS),
            "thresholds": thresholds}  # fmt: skip
    (folder / "spec.json").write_text(json.dumps(spec))
    return spec


# --- workers, each in a fresh process -------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _load(folder: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    spec = json.loads((folder / "spec.json").read_text())
    return spec, pd.read_parquet(folder / "reference.parquet"), pd.read_parquet(folder / "current.parquet")


def worker_ours(folder: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "include"))
    from lifecycle.config.pipeline import Drift
    from lifecycle.ml import drift

    spec, reference, current = _load(folder)
    config = Drift()

    def run(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[float, float, dict[str, Any]]:
        started = time.perf_counter()
        profile = drift.reference_profile(ref, spec["numeric"], spec["categorical"])
        profiled = time.perf_counter()
        result = drift.check(profile, cur, None, config)
        return profiled - started, time.perf_counter() - profiled, result

    run(reference.head(WARMUP_ROWS), current.head(WARMUP_ROWS))
    gc.collect()
    loaded = _rss_mb()
    profile_s, check_s, result = run(reference, current)
    columns = {
        c: {"method": f["metric"], "value": f["value"], "threshold": f["effective_threshold"], "drifted": f["drifted"]}
        for c, f in result["features"].items()
    }
    from importlib.metadata import version

    return {
        "seconds": profile_s + check_s,
        "parts": {"profile": profile_s, "check": check_s},
        "flagged": sorted(result["drifted_features"]),
        "columns": columns,
        "loaded_rss_mb": loaded,
        "peak_rss_mb": _peak_rss_mb(),
        "versions": {p: version(p) for p in ("pandas", *SAME_AS_PROJECT)},
    }


def worker_evidently(folder: Path, matched: bool) -> dict[str, Any]:
    from importlib.metadata import version

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    spec, reference, current = _load(folder)
    definition = DataDefinition(numerical_columns=spec["numeric"], categorical_columns=spec["categorical"])
    if matched:
        psi, js = spec["thresholds"]["psi"], spec["thresholds"]["js_base2"] * math.sqrt(math.log(2))
        preset = DataDriftPreset(num_method="psi", num_threshold=psi, cat_method="jensenshannon", cat_threshold=js)
    else:
        preset = DataDriftPreset()

    def run(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[float, float, Any]:
        started = time.perf_counter()
        cur_data = Dataset.from_pandas(cur, data_definition=definition)
        ref_data = Dataset.from_pandas(ref, data_definition=definition)
        wrapped = time.perf_counter()
        snapshot = Report([preset], include_tests=True).run(cur_data, ref_data)
        return wrapped - started, time.perf_counter() - wrapped, snapshot

    run(reference.head(WARMUP_ROWS), current.head(WARMUP_ROWS))
    gc.collect()
    loaded = _rss_mb()
    wrap_s, run_s, snapshot = run(reference, current)
    peak = _peak_rss_mb()
    started = time.perf_counter()
    out = snapshot.dict()
    dict_s = time.perf_counter() - started  # not timed above: a check that run() did the work, not dict()
    columns: dict[str, dict[str, Any]] = {}
    counted = None
    for metric in out["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            columns[config["column"]] = {
                "method": config["method"],
                "value": float(metric["value"]),
                "threshold": config["threshold"],
            }
        elif config["type"].endswith(":DriftedColumnsCount"):
            counted = int(metric["value"]["count"])
    for test in out["tests"]:
        params = test["metric_config"]["params"]
        if test["id"] == "drift" and params.get("column") in columns:
            columns[params["column"]]["drifted"] = str(test["status"]).endswith("FAIL")
    flagged = sorted(c for c, r in columns.items() if r.get("drifted"))
    return {
        "seconds": wrap_s + run_s,
        "parts": {"from_pandas": wrap_s, "report_run": run_s, "snapshot_dict_untimed": dict_s},
        "flagged": flagged,
        "drifted_columns_count": counted,
        "columns": columns,
        "loaded_rss_mb": loaded,
        "peak_rss_mb": peak,
        "versions": {p: version(p) for p in ("evidently", "pandas", *SAME_AS_PROJECT)},
    }


def worker(side: str, folder: Path) -> None:
    result = worker_ours(folder) if side == "ours" else worker_evidently(folder, side == "evidently-matched")
    print(MARKER + json.dumps(result), flush=True)


# --- Evidently's virtualenv -----------------------------------------------------------------------------------------


def evidently_python(venv: Path) -> Path:
    """The venv's interpreter, created or brought up to date with uv (PyPI only) when its pins changed."""
    from importlib.metadata import version

    python = venv / "bin" / "python"
    pins = [EVIDENTLY_PIN, *EVIDENTLY_EXTRA, *(f"{p}=={version(p)}" for p in SAME_AS_PROJECT)]
    marker = venv / "bench-pins.txt"
    if python.exists() and marker.exists() and marker.read_text().split() == pins:
        return python
    uv = VENV_BIN / "uv"
    print(f"evidently venv: {venv} <- {' '.join(pins)}", flush=True)
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)  # the project's Python, not a download
        subprocess.run([str(uv), "venv", "--quiet", "--python", base, str(venv)], check=True)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(python), *pins], check=True)
    marker.write_text("\n".join(pins) + "\n")
    return python


# --- the rounds -----------------------------------------------------------------------------------------------------


def run_side(side: str, python: Path, folder: Path, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "DO_NOT_TRACK": "1", "PYTHONHASHSEED": "0"}  # DO_NOT_TRACK: no Evidently telemetry
    command = [str(python), str(Path(__file__).resolve()), "--worker", side, "--data", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    raise RuntimeError(f"{side} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _names(columns: list[str] | set[str]) -> str:
    return ", ".join(sorted(columns)) or "-"


def agreement(ours: list[str], theirs: list[str], labels: tuple[str, str] = ("ours", "Evidently")) -> str:
    if set(ours) == set(theirs):
        return "same set"
    only_ours, only_theirs = set(ours) - set(theirs), set(theirs) - set(ours)
    return f"differ: only {labels[0]} {_names(only_ours)}; only {labels[1]} {_names(only_theirs)}"


def _rss(results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "loaded": statistics.median(r["loaded_rss_mb"] for r in results),
        "peak": max(r["peak_rss_mb"] for r in results),
    }


def summarise(spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    ours = runs["ours"]
    check_only = [r["parts"]["check"] for r in ours]
    profile_check = [r["seconds"] for r in ours]
    rows: list[dict[str, Any]] = [
        {"side": "ours, check only", "timed": "drift.check, profile built beforehand", "runs": check_only,
         "rss": _rss(ours), "flagged": ours[-1]["flagged"]},
        {"side": "ours, profile + check", "timed": "reference_profile + drift.check", "runs": profile_check,
         "rss": _rss(ours), "flagged": ours[-1]["flagged"]},
    ]  # fmt: skip
    ratios: dict[str, dict[str, float]] = {}
    for side in SIDES[1:]:
        times = [r["seconds"] for r in runs[side]]
        rows.append({"side": side, "timed": "Dataset.from_pandas x2 + Report.run", "runs": times,
                     "rss": _rss(runs[side]), "flagged": runs[side][-1]["flagged"]})  # fmt: skip
        same_round = [ours[r["round"]] for r in runs[side]]  # each ratio within one round
        ratios[side] = {
            "vs_check_only": statistics.median(t / o["parts"]["check"] for t, o in zip(times, same_round, strict=True)),
            "vs_profile_check": statistics.median(t / o["seconds"] for t, o in zip(times, same_round, strict=True)),
        }
    print(f"\n{spec['rows']:,} rows x {len(spec['numeric']) + len(spec['categorical'])} columns "
          f"({len(spec['numeric'])} numeric, {len(spec['categorical'])} categorical), median of {len(ours)} rounds "
          f"({len(runs['evidently-matched'])} for evidently-matched); "
          "RSS of the worker process: after loading the frames and the warm-up (median) -> peak (max over rounds)")  # fmt: skip
    header = f"{'side':24s} {'timed':40s} {'median s':>9s} {'min s':>7s} {'ratio ev/ours':>15s} {'RSS MB':>17s}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        ratio = ""
        if row["side"] in ratios:
            r = ratios[row["side"]]
            ratio = f"{r['vs_check_only']:5.1f}x /{r['vs_profile_check']:5.1f}x"
        rss = f"{row['rss']['loaded']:6.0f} -> {row['rss']['peak']:6.0f}"
        print(f"{row['side']:24s} {row['timed']:40s} {statistics.median(row['runs']):9.2f} {min(row['runs']):7.2f} "
              f"{ratio:>15s} {rss:>17s}")  # fmt: skip
    print("ratio ev/ours: Evidently's seconds / ours, check only / profile + check (median of per-round ratios)")

    injected = spec["injected"]
    print(f"\nflagged columns (injected drift: {_names(injected)})")
    flagged = {row["side"]: row["flagged"] for row in rows[1:]}
    for side, columns in flagged.items():
        versus = (
            "" if side.startswith("ours") else f"   vs ours: {agreement(flagged['ours, profile + check'], columns)}"
        )
        print(
            f"  {side:24s} {_names(columns):32s} vs injected: {agreement(injected, columns, ('injected', 'flagged'))}{versus}"
        )
    stable = {side: all(r["flagged"] == runs[side][0]["flagged"] for r in runs[side]) for side in SIDES}
    if not all(stable.values()):
        print(f"  note: flagged sets changed between rounds: {[s for s, ok in stable.items() if not ok]}")

    print("\nper column (value / threshold, * = drifted): the injected columns and any column a side disagrees on")
    last = {side: runs[side][-1]["columns"] for side in SIDES}
    shown = sorted(set(injected).union(*(r["flagged"] for r in (runs[s][-1] for s in SIDES))))
    print(f"  {'column':7s} {'ours (PSI / JS base 2)':>24s} {'evidently default':>28s} {'evidently-matched':>28s}   "
          "injected")  # fmt: skip
    for column in shown:
        cells = []
        for side in SIDES:
            r = last[side].get(column, {})
            mark = "*" if r.get("drifted") else " "
            method = "" if side == "ours" else f"{_short(r.get('method', ''))} "
            cells.append(f"{method}{r.get('value', float('nan')):.4f}/{r.get('threshold', float('nan')):.3g}{mark}")
        note = DRIFTS[column][0] if column in DRIFTS else "stationary"
        print(f"  {column:7s} {cells[0]:>24s} {cells[1]:>28s} {cells[2]:>28s}   {note}")
    default, ours_set = ratios["evidently"], set(flagged["ours, profile + check"])
    same = set(flagged["evidently"]) == ours_set
    met = default["vs_profile_check"] >= TARGET and same
    print(f"\ntarget (issue 12, against the default DataDriftPreset): >= {TARGET:.0f}x faster counting our profile "
          f"too, same drifted columns: {'met' if met else 'missed'} ({default['vs_profile_check']:.1f}x with profile + "
          f"check, {default['vs_check_only']:.1f}x check only; flagged sets {'equal' if same else 'differ'})")  # fmt: skip
    matched = ratios["evidently-matched"]
    print(f"against evidently-matched (same method family and thresholds): {matched['vs_profile_check']:.1f}x / "
          f"{matched['vs_check_only']:.1f}x; flagged: {agreement(sorted(ours_set), flagged['evidently-matched'])}")  # fmt: skip
    missed = {c for c in set(ours_set) - set(flagged["evidently-matched"]) if c in spec["numeric"]}
    if missed:
        print(f"  ({_names(missed)}, likely binning: Evidently's PSI puts numeric columns with over 20 values into Sturges equal-width "
              "bins over the range of both frames; on a heavy tail nearly every row lands in the first bin, so a scale "
              "change barely moves it. Ours uses 10 reference-decile bins.)")  # fmt: skip
    for side in SIDES[1:]:
        counts = {r["drifted_columns_count"] for r in runs[side]}
        if counts != {len(runs[side][-1]["flagged"])}:
            print(f"note: {side}'s DriftedColumnsCount {sorted(counts)} != its failed per-column tests")
    return {
        "rows": spec["rows"],
        "columns": len(spec["numeric"]) + len(spec["categorical"]),
        "rounds": len(ours),
        "injected": injected,
        "median_s": {row["side"]: statistics.median(row["runs"]) for row in rows},
        "ratios": ratios,
        "rss_mb": {side: _rss(runs[side]) for side in SIDES},
        "flagged": {side: runs[side][-1]["flagged"] for side in SIDES},
        "flagged_stable": stable,
        "columns_last_round": last,
        "target_met": met,
    }


def _short(method: str) -> str:
    return {
        "Wasserstein distance (normed)": "wass",
        "Jensen-Shannon distance": "JS(ln)",
        "jensenshannon": "JS(ln)",
        "psi": "PSI",
    }.get(method, method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the reference and of the current batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--matched-rounds", type=int, default=1, help="rounds that also run evidently-matched (the first ones)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per worker process")
    parser.add_argument("--evidently-venv", type=Path, default=EVIDENTLY_VENV)
    parser.add_argument("--check", action="store_true", help="exit with status 1 when the target is missed")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data)
        return

    sys.path.insert(0, str(REPO / "include"))
    from lifecycle.config.pipeline import Drift

    defaults = Drift()
    thresholds = {"psi": defaults.psi_threshold, "js_base2": defaults.js_threshold}
    started = time.perf_counter()
    pythons = {"ours": Path(sys.executable), "evidently": evidently_python(args.evidently_venv)}
    pythons["evidently-matched"] = pythons["evidently"]
    print(f"load average at start {load_average()}")
    with tempfile.TemporaryDirectory(prefix="drift-vs-evidently-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        spec = write_data(args.rows, thresholds, folder)
        print(f"data: {args.rows:,} + {args.rows:,} rows written to Parquet in {time.perf_counter() - t:.1f} s; "
              f"drift injected into {_names(spec['injected'])}")  # fmt: skip
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for round_ in range(args.rounds):
            sides = SIDES if round_ < args.matched_rounds else SIDES[:2]
            order = sides[round_ % len(sides) :] + sides[: round_ % len(sides)]
            cells = []
            for side in order:
                result = run_side(side, pythons[side], folder, args.timeout)
                runs[side].append({**result, "round": round_})
                parts = ", ".join(f"{k} {v:.2f}" for k, v in result["parts"].items())
                cells.append(f"{side} {result['seconds']:.2f} s ({parts})")
            print(f"round {round_ + 1}: " + "; ".join(cells) + f"; load {load_average()}", flush=True)
    summary = summarise(spec, runs)
    summary["versions"] = {side: runs[side][-1]["versions"] for side in ("ours", "evidently")}
    summary["load_average_end"] = load_average()
    summary["wall_s"] = time.perf_counter() - started
    print(f"load average at end {summary['load_average_end']}; whole run {summary['wall_s']:.0f} s; "
          f"versions {summary['versions']}")  # fmt: skip
    text = json.dumps(summary, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    if args.check and not summary["target_met"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
