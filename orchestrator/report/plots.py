"""The report's figures, drawn from summary.json's values (through `Run`) with matplotlib.

Each builder returns a `Figure` record (file name, caption, PNG bytes) or None when the run has
nothing to show for it (e.g. accuracy against T needs at least two values of T).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from ..core.metrics import baseline_of
from .compare import ACCURACY, compared, fronts
from .costs import engine_seconds, point_costs
from .data import Run, is_leap, sort_key

TRANSITION_COLORS = {"wrong_to_right": "#2e7d32", "right_to_wrong": "#c62828",
                     "wrong_to_wrong": "#ef6c00", "right_to_right": "#757575",
                     "no_answer_to_right": "#a5d6a7", "no_answer_to_wrong": "#ffcc80"}
TRANSITION_LABELS = {"wrong_to_right": "wrong→right", "right_to_wrong": "right→wrong",
                     "wrong_to_wrong": "wrong→other wrong", "right_to_right": "right→other right",
                     "no_answer_to_right": "none→right", "no_answer_to_wrong": "none→wrong"}


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes


def _figure(width: float = 7.0, height: float = 4.0):
    # the object-oriented API renders through Agg without touching pyplot's global backend
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _short(point: str, width: int = 28) -> str:
    """A point label that fits under a bar: `T=2048,max_rounds=8,...` on two lines."""
    if len(point) <= width:
        return point
    parts = point.split(",")
    lines, line = [], ""
    for part in parts:
        if line and len(line) + 1 + len(part) > width:
            lines.append(line)
            line = part
        else:
            line = f"{line},{part}" if line else part
    lines.append(line)
    return "\n".join(lines)


def _points(run: Run, bench: str) -> list[str]:
    return [p for p in run.order if run.metric(p, bench) is not None]


def accuracy_bars(run: Run) -> Figure | None:
    """Pass@1 and Cons@N per configuration, one panel per benchmark."""
    if not run.benchmarks or not run.order:
        return None
    n = max(len(_points(run, b)) for b in run.benchmarks)
    fig = _figure(max(6.0, 0.75 * n + 2.5), 3.2 * len(run.benchmarks) + 0.8)
    axes = fig.subplots(len(run.benchmarks), 1, squeeze=False)[:, 0]
    for ax, bench in zip(axes, run.benchmarks):
        points = _points(run, bench)
        xs = range(len(points))
        for offset, key, label in ((-0.2, "pass@1", "Pass@1"), (0.2, "cons@N", "Cons@N")):
            ys = [float(run.metric(p, bench, key) or 0.0) for p in points]
            bars = ax.bar([x + offset for x in xs], ys, width=0.4, label=label)
            ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7)
        ax.set_xticks(list(xs), [_short(p, 18) for p in points], fontsize=7,
                      rotation=30 if len(points) > 4 else 0, ha="right" if len(points) > 4 else "center")
        ax.set_ylim(0, 1.08)
        ax.set_xlim(-0.5 - max(0, 3 - len(points)) / 2, len(points) - 0.5 + max(0, 3 - len(points)) / 2)
        ax.set_ylabel(bench)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_title("Accuracy per configuration")
    return Figure("pass1.png", "Pass@1 and Cons@N per configuration (baselines first).", _png(fig))


def sweep_lines(run: Run, x: str, panel: str) -> Figure | None:
    """Accuracy against `x` (T or top_k), one line per router, one panel per value of `panel`;
    the independent baseline as a dashed line."""
    leap = [p for p in run.order if is_leap(run, p)]
    xs = sorted({run.settings[p].get(x) for p in leap} - {None}, key=sort_key)
    if len(xs) < 2:
        return None
    panels = sorted({run.settings[p].get(panel) for p in leap}, key=sort_key)
    routers = sorted({str(run.settings[p].get("router")) for p in leap})
    independent = next((p for p in run.order if baseline_of(run.settings.get(p, {}).get("mode")) == "independent"), None)
    rows = [(b, key) for b in run.benchmarks for key in ("pass@1", "cons@N")]
    fig = _figure(3.6 * len(panels) + 1.5, 2.7 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), len(panels), squeeze=False)
    for i, (bench, key) in enumerate(rows):
        for j, pv in enumerate(panels):
            ax = axes[i][j]
            for router in routers:
                pts = sorted(((run.settings[p][x], run.metric(p, bench, key)) for p in leap
                              if str(run.settings[p].get("router")) == router
                              and run.settings[p].get(panel) == pv and run.settings[p].get(x) is not None
                              and run.metric(p, bench, key) is not None), key=lambda t: sort_key(t[0]))
                if pts:
                    ax.plot([xs.index(a) for a, _ in pts], [float(v) for _, v in pts], marker="o", label=router)
            if independent is not None and run.metric(independent, bench, key) is not None:
                ax.axhline(float(run.metric(independent, bench, key)), color="grey", linestyle="--",
                           label="independent")
            ax.set_xticks(range(len(xs)), [_x_label(x, v) for v in xs])
            ax.set_ylim(-0.02, 1.05)
            ax.set_title(f"{_x_name(panel)} = {_x_label(panel, pv)}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{bench} {'Pass@1' if key == 'pass@1' else 'Cons@N'}")
            if i == len(rows) - 1:
                ax.set_xlabel(_x_name(x))
    axes[0][-1].legend(fontsize=8, loc="best")
    caption = f"Accuracy against {_x_name(x)}, one line per router (panels: {_x_name(panel)})."
    return Figure(f"accuracy_vs_{x}.png", caption, _png(fig))


def _x_name(key: str) -> str:
    return {"top_k": "top-k", "T": "T (tokens per segment)"}.get(key, key)


def _x_label(key: str, value) -> str:
    return "all" if key == "top_k" and value == -1 else str(value)


def tokens_bars(run: Run) -> Figure | None:
    """Tokens per path, sampled vs injected, per configuration (baselines first)."""
    entries = [(p, b) for b in run.benchmarks for p in _points(run, b)
               if run.metric(p, b, "tokens_per_path", "sampled") is not None]
    if not entries:
        return None
    fig = _figure(max(6.0, 0.6 * len(entries) + 2.5), 4.2)
    ax = fig.add_subplot()
    sampled = [float(run.metric(p, b, "tokens_per_path", "sampled")) for p, b in entries]
    injected = [float(run.metric(p, b, "tokens_per_path", "injected") or 0.0) for p, b in entries]
    xs = list(range(len(entries)))
    ax.bar(xs, sampled, label="sampled")
    ax.bar(xs, injected, bottom=sampled, label="injected")
    labels = [_short(p, 18) + (f"\n{b}" if len(run.benchmarks) > 1 else "") for p, b in entries]
    ax.set_xticks(xs, labels, fontsize=7, rotation=30 if len(entries) > 4 else 0,
                  ha="right" if len(entries) > 4 else "center")
    ax.set_ylabel("tokens per path")
    ax.set_title("Tokens per path: sampled vs injected")
    ax.legend(fontsize=8)
    return Figure("tokens.png", "Mean tokens per path, sampled by the model and injected "
                  "(summary prompts, peer messages, answer forcing).", _png(fig))


def transitions_plot(run: Run) -> Figure | None:
    """Per communicating configuration, stacked bars per round of the answer changes."""
    entries = [(p, b) for b in run.benchmarks for p in _points(run, b)
               if run.metric(p, b, "round_transitions")]
    if not entries:
        return None
    cols = min(4, len(entries))
    nrows = -(-len(entries) // cols)
    fig = _figure(3.3 * cols + 2.0, 2.6 * nrows + 0.8)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[len(entries):]:
        ax.set_visible(False)
    for ax, (p, b) in zip(axes.flat, entries):
        table = run.metric(p, b, "round_transitions")
        rounds = sorted(table, key=sort_key)
        bottom = [0.0] * len(rounds)
        for kind, color in TRANSITION_COLORS.items():
            ys = [float(table[r].get(kind, 0)) for r in rounds]
            ax.bar(range(len(rounds)), ys, bottom=bottom, color=color, label=TRANSITION_LABELS[kind])
            bottom = [a + c for a, c in zip(bottom, ys)]
        kept = [float(table[r].get("paths", 0)) - float(table[r].get("changed", 0))
                - sum(float(table[r].get(k, 0)) for k in ("no_answer_to_right", "no_answer_to_wrong"))
                for r in rounds]
        ax.bar(range(len(rounds)), kept, bottom=bottom, color="#e0e0e0", label="unchanged")
        ax.set_ylim(0, max(1.0, max(float(table[r].get("paths", 0)) for r in rounds)) * 1.05)
        ax.set_xticks(range(len(rounds)), rounds)
        ax.set_title(_short(p, 34) + (f" / {b}" if len(run.benchmarks) > 1 else ""), fontsize=8)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("paths", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    return Figure("transitions.png", "Paths that changed their answer after reading peer messages, "
                  "per round.", _png(fig))


def pass_at_k_plot(run: Run) -> Figure | None:
    curves = []
    for b in run.benchmarks:
        for p in _points(run, b):
            pk = {int(k): float(v) for k, v in (run.metric(p, b, "pass@k") or {}).items() if v is not None}
            if pk:
                curves.append((p, b, dict(sorted(pk.items()))))
    if not curves:
        return None
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    for p, b, pk in curves:
        style = "--" if not is_leap(run, p) else "-"
        ax.plot(list(pk), list(pk.values()), style, marker="o", markersize=3,
                label=p if len(run.benchmarks) == 1 else f"{p} / {b}")
    ks = sorted({k for _, _, pk in curves for k in pk})
    if ks and ks[-1] > 2 * max(1, ks[0]):
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("pass@k (baselines dashed)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return Figure("pass_at_k.png", "Unbiased pass@k per configuration.", _png(fig))


COST_AXES = {"tokens": "tokens per path (sampled + injected + probes)", "time": "generation time (s)"}
ACCURACY_MARKS = {"pass@1": ("o", ":"), "cons@N": ("s", "-")}  # marker, front line


def accuracy_vs_cost(run: Run) -> Figure | None:
    """Pass@1 and Cons@N of every configuration against its tokens per path (and, when the run
    recorded it, its generation time), one panel per benchmark and cost; filled markers joined
    by a grey line: the Pareto front. None for a run whose rows lack the method columns, or of a
    single point."""
    costs = point_costs(run.rows)
    entries = compared(run, costs)
    benches = [b for b in run.benchmarks if any(e[1] == b for e in entries)]
    if not benches:
        return None
    axes_kinds = ["tokens"] + (["time"] if any(engine_seconds(run.run_info, p) is not None for p in run.order) else [])
    front = fronts(run, costs)
    color = {p: f"C{i % 10}" for i, p in enumerate(run.order)}
    fig = _figure(4.6 * len(axes_kinds) + 2.6, 3.4 * len(benches) + 0.6)
    axes = fig.subplots(len(benches), len(axes_kinds), squeeze=False)
    for i, bench in enumerate(benches):
        for j, axis in enumerate(axes_kinds):
            ax = axes[i][j]
            for key, label in ACCURACY:
                marker, line = ACCURACY_MARKS[key]
                on_front = []
                for p in run.order:
                    x = (costs[(p, bench)].total if (p, bench) in costs else None) if axis == "tokens" \
                        else engine_seconds(run.run_info, p)
                    y = run.metric(p, bench, key) if (p, bench) in costs else None
                    if x is None or y is None:
                        continue
                    on = p in front.get((bench, axis, key), set())
                    ax.scatter([x], [float(y)], marker=marker, s=48 if on else 30, linewidths=1.4, zorder=3,
                               facecolors=color[p] if on else "none", edgecolors=color[p])
                    if on:
                        on_front.append((x, float(y)))
                if on_front:
                    on_front.sort()
                    ax.plot([x for x, _ in on_front], [y for _, y in on_front], line, color="grey", zorder=2,
                            linewidth=1)
            ax.set_ylim(-0.02, 1.05)
            ax.set_xlabel(COST_AXES[axis], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{bench} accuracy")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=color[p], label=_short(p, 30)) for p in run.order
               if any((p, b) in costs for b in benches)]
    handles += [Line2D([], [], marker=ACCURACY_MARKS[k][0], linestyle=ACCURACY_MARKS[k][1], color="grey",
                       markerfacecolor="none", label=f"{lab}, its front") for k, lab in ACCURACY]
    fig.legend(handles=handles, fontsize=7, loc="outside right upper")
    axes[0][0].set_title("Accuracy against cost, one point per configuration", fontsize=9)
    return Figure("accuracy_vs_tokens.png", "Pass@1 (circles) and Cons@N (squares) of every configuration "
                  "against tokens per path (sampled + injected + answer probes) and, when recorded, the "
                  "engines' generation time; filled markers joined by a grey line are the Pareto front.",
                  _png(fig))


def figures(run: Run) -> dict[str, Figure]:
    """Every figure the run has data for, by section key."""
    built = {
        "accuracy": accuracy_bars(run),
        "sweep_T": sweep_lines(run, "T", "top_k"),
        "sweep_top_k": sweep_lines(run, "top_k", "T"),
        "tokens": tokens_bars(run),
        "transitions": transitions_plot(run),
        "pass_at_k": pass_at_k_plot(run),
        "methods": accuracy_vs_cost(run),
    }
    return {k: v for k, v in built.items() if v is not None}


def write_figures(figs: dict[str, Figure], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for fig in figs.values():
        path = folder / fig.name
        path.write_bytes(fig.png)
        out.append(path)
    return out


__all__ = ["Figure", "figures", "write_figures"]
