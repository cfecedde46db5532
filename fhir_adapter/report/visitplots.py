"""Per-visit plots shared by the disease-activity and laboratory sections: one thin line per subject
(coloured by dose level) and the summary over subjects at each visit."""

from __future__ import annotations

from typing import Literal

from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from fhir_adapter.report.blocks import describe, quartiles
from fhir_adapter.report.plotting import arm_color, log_y

Summary = Literal["mean_sd", "median_iqr"]


def visit_panel(ax: Axes, values: dict[str, dict[str, float]], order: list[str], arm_by_subject: dict[str, str],
                arms: list[str], title: str, ylabel: str, summary: Summary = "mean_sd",
                log: bool = False) -> None:
    """Draw subject lines and the per-visit summary of ``values`` (``{visit: {subject: value}}``)."""
    visits = [v for v in order if values.get(v)]
    x_of = {v: i for i, v in enumerate(visits)}
    subjects = sorted({s for v in visits for s in values[v]})
    for sid in subjects:
        pts = [(x_of[v], values[v][sid]) for v in visits if sid in values[v]]
        if log:
            pts = [(x, y) for x, y in pts if y > 0]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, color=arm_color(arm_by_subject.get(sid), arms), alpha=0.35, linewidth=0.8,
                marker="o", markersize=2, zorder=1)
    centre: list[float] = []
    low: list[float] = []
    high: list[float] = []
    xs_c: list[int] = []
    for v in visits:
        vals = [y for y in values[v].values() if not log or y > 0]
        if summary == "mean_sd":
            _, mean, sd, *_ = describe(vals)
            if mean is None:
                continue
            xs_c.append(x_of[v])
            centre.append(mean)
            low.append(mean - (sd or 0.0))
            high.append(mean + (sd or 0.0))
        else:
            q = quartiles(vals)
            if q is None:
                if len(vals) == 1:
                    xs_c.append(x_of[v])
                    centre.append(vals[0])
                    low.append(vals[0])
                    high.append(vals[0])
                continue
            xs_c.append(x_of[v])
            low.append(q[0])
            centre.append(q[1])
            high.append(q[2])
    if xs_c:
        ax.fill_between(xs_c, low, high, color="#000000", alpha=0.08, linewidth=0, zorder=2)
        ax.plot(xs_c, centre, color="#111111", linewidth=2, marker="s", markersize=4, zorder=3)
    ax.set_xticks(range(len(visits)))
    ax.set_xticklabels([f"{v}\nn={len(values[v])}" for v in visits], fontsize=7)
    ax.set_xlim(-0.5, max(len(visits) - 0.5, 0.5))
    if log:
        log_y(ax)
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def arm_legend(ax: Axes, arms: list[str], summary: Summary) -> None:
    handles = [Line2D([0], [0], color=arm_color(a, arms), linewidth=1.2, alpha=0.7, label=a) for a in arms]
    label = "mean ± SD" if summary == "mean_sd" else "median, IQR band"
    handles.append(Line2D([0], [0], color="#111111", linewidth=2, marker="s", markersize=4, label=label))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
