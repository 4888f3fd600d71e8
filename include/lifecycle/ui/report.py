"""The evaluation report: a metrics table, curves, a confusion matrix, feature importance and, for
classification, a reliability diagram (binned mean predicted probability vs observed frequency, with counts)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np


def _importance(model: Any, top: int = 15) -> list[tuple[str, float]]:
    from lifecycle.ml.training import uncalibrated

    try:
        model = uncalibrated(model)  # a calibrated model wraps the pipeline whose steps hold the importances
        names = model.named_steps["features"].get_feature_names_out()
        values = model.named_steps["model"].feature_importances_
    except (AttributeError, KeyError):
        return []
    order = np.argsort(values)[::-1][:top]
    return [(str(names[i]), float(values[i])) for i in order]


def figure_png(
    task: str,
    y: np.ndarray,
    curves: dict[str, np.ndarray],
    model: Any,
    threshold: float,
    reliability: dict[str, dict[str, list]] | None = None,
) -> bytes:
    """The report's plots as one PNG; `reliability` (metrics.reliability per model) adds the calibration row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn import metrics as skm

    calibration = bool(reliability) and task != "regression"
    fig, axes = plt.subplots(3 if calibration else 2, 2, figsize=(11, 12.75 if calibration else 8.5))
    (a, b), (c, d) = axes[:2]
    if calibration:
        _reliability_axes(axes[2][0], axes[2][1], task, reliability)
    if task == "binary":
        for name, score in curves.items():
            fpr, tpr, _ = skm.roc_curve(y, score)
            a.plot(fpr, tpr, label=name)
            precision, recall, _ = skm.precision_recall_curve(y, score)
            b.plot(recall, precision, label=name)
        a.plot([0, 1], [0, 1], ":", color="grey")
        a.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
        b.set(title="Precision-recall", xlabel="recall", ylabel="precision")
        a.legend(), b.legend()
        matrix = skm.confusion_matrix(y, (curves["challenger"] >= threshold).astype(int), labels=[0, 1])
        c.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            c.text(j, i, str(value), ha="center", va="center")
        c.set(
            title=f"Confusion matrix at {threshold}",
            xlabel="predicted",
            ylabel="actual",
            xticks=[0, 1],
            yticks=[0, 1],
        )
    elif task == "regression":
        for name, score in curves.items():
            a.scatter(y, score, s=3, alpha=0.4, label=name)
        a.set(title="Predicted vs actual", xlabel="actual", ylabel="predicted")
        a.legend()
        b.scatter(curves["challenger"], y - curves["challenger"], s=3, alpha=0.4)
        b.axhline(0, color="grey")
        b.set(title="Residuals (challenger)", xlabel="predicted", ylabel="residual")
        c.hist(y - curves["challenger"], bins=50)
        c.set(title="Residual distribution")
    else:
        labels = np.asarray(getattr(model, "classes_", np.unique(y)))  # the model's: a class may miss the holdout
        matrix = skm.confusion_matrix(y, labels[np.argmax(curves["challenger"], axis=1)], labels=labels)
        c.imshow(matrix, cmap="Blues")
        c.set(title="Confusion matrix", xlabel="predicted", ylabel="actual")
        a.axis("off"), b.axis("off")
    importance = _importance(model)
    if importance:
        names, values = zip(*reversed(importance), strict=True)
        d.barh(names, values)
        d.set(title="Feature importance (splits)")
    else:
        d.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _reliability_axes(diagram: Any, counts: Any, task: str, reliability: dict[str, dict[str, list]]) -> None:
    """Mean predicted probability vs observed frequency per bin (points sized by rows), and rows per bin."""
    what = "P(positive)" if task == "binary" else "top-class probability"
    observed_what = "share of positives" if task == "binary" else "share where the top class is right"
    diagram.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, table in reliability.items():
        count = np.asarray(table["count"], dtype=float)
        filled = count > 0
        predicted = np.asarray(table["mean_predicted"], dtype=float)[filled]
        observed = np.asarray(table["observed"], dtype=float)[filled]
        (line,) = diagram.plot(predicted, observed, "-", label=name)
        size = 12 + 200 * count[filled] / max(count.sum(), 1)
        diagram.scatter(predicted, observed, s=size, color=line.get_color(), alpha=0.7)
    diagram.set(title=f"Reliability ({what}, points sized by rows)", xlabel=f"mean predicted {what}",
                ylabel=observed_what, xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    diagram.legend()
    table = reliability.get("challenger") or next(iter(reliability.values()))
    lower, upper = np.asarray(table["lower"]), np.asarray(table["upper"])
    counts.bar(lower, table["count"], width=upper - lower, align="edge", edgecolor="white")
    counts.set_yscale("symlog")
    counts.set(title="Rows per bin (challenger)", xlabel=f"predicted {what}", ylabel="rows", xlim=(0, 1))


def _reliability_table(decision: dict[str, Any]) -> str:
    """The challenger's reliability bins as a table: the diagram's numbers, with the rows behind each point."""
    table = (decision.get("reliability") or {}).get("challenger")
    if not table:
        return ""

    def cell(value: float | None) -> str:
        return "<td>-</td>" if value is None or value != value else f"<td>{value:.3f}</td>"

    rows = "".join(
        f"<tr><td>{lo:.3f}&ndash;{hi:.3f}</td><td>{n}</td>{cell(p)}{cell(o)}</tr>"
        for lo, hi, n, p, o in zip(table["lower"], table["upper"], table["count"], table["mean_predicted"],
                                   table["observed"], strict=True)
    )  # fmt: skip
    plan = (decision.get("calibration") or {}).get(decision.get("challenger_family", "")) or {}
    how = ""
    if plan.get("method") == "none":
        how = f" Not calibrated: {html.escape(plan.get('reason', ''))}."
    elif plan.get("method"):
        how = f" Calibrated with {html.escape(plan['method'])} on the validation split ({html.escape(plan['reason'])})."
    return (
        f"<h2>Calibration</h2><p>Reliability of the challenger on the holdout (equal-width bins).{how}</p>"
        "<table><tr><th>predicted</th><th>rows</th><th>mean predicted</th><th>observed</th></tr>"
        f"{rows}</table>"
    )


def _selection(decision: dict[str, Any]) -> str:
    """Which model family became the challenger, and by how much, on validation and holdout."""
    selection = decision.get("selection")
    if not selection:
        return ""
    rows = "".join(
        f"<tr><th>{html.escape(family)}{' (selected)' if family == selection['selected'] else ''}</th>"
        + "".join(f"<td>{v:.4f}</td>" if isinstance(v, (int, float)) else "<td>-</td>" for v in values.values())
        + "</tr>"
        for family, values in selection["families"].items()
    )
    return (
        f"<h2>Model selection</h2><p>{html.escape(selection['reason'])}</p>"
        f"<table><tr><th>family</th><th>validation {html.escape(decision['primary_metric'])}</th>"
        f"<th>holdout {html.escape(decision['primary_metric'])}</th></tr>{rows}</table><h2>Holdout metrics</h2>"
    )


def html_report(pipeline: str, decision: dict[str, Any], png: bytes) -> str:
    rows = []
    names = sorted(decision["challenger"])
    models = [("challenger", decision["challenger"]), ("baseline", decision["baseline"])]
    if decision.get("champion"):
        models.append(("champion", decision["champion"]))
    header = "".join(f"<th>{html.escape(n)}</th>" for n, _ in models)
    for metric in names:
        cells = "".join(
            f"<td>{m.get(metric, float('nan')):.4f}</td>" if isinstance(m.get(metric), (int, float)) else "<td>-</td>"
            for _, m in models
        )
        rows.append(f"<tr><th>{html.escape(metric)}</th>{cells}</tr>")
    checks = "".join(
        f"<li>{'✅' if c['passed'] else '❌'} {html.escape(c['check'])}: {html.escape(c['detail'])}</li>"
        for c in decision["checks"]
    )
    image = base64.b64encode(png).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(pipeline)} evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>{html.escape(pipeline)}: evaluation</h1>
<p><b>Verdict:</b> {html.escape(decision["verdict"])} ({html.escape(decision["mode"])} mode) &mdash;
{html.escape(decision["reason"])}<br><b>Action:</b> {html.escape(decision["action"])}</p>
{_selection(decision)}
<table><tr><th>metric</th>{header}</tr>{"".join(rows)}</table>
<h2>Checks</h2><ul>{checks}</ul>
{_reliability_table(decision)}
<img alt="evaluation plots" src="data:image/png;base64,{image}">
</body></html>"""
