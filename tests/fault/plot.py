"""The report's PNGs (matplotlib, the `bench` extra): latency and error rate over time
across the SIGKILL and the rollout, and latency percentiles over the surge."""

from __future__ import annotations

import math
from pathlib import Path

from tests.fault.common import ScenarioResult


def _clean(values: list[float]) -> list[float]:
    return [v * 1000 if not math.isnan(v) else math.nan for v in values]


def _timeline_panel(axis, data: dict, title: str, x_label: str) -> None:
    t = data["t"]
    axis.plot(t, _clean(data["p50"]), label="p50", color="tab:blue", linewidth=1)
    axis.plot(t, _clean(data["p99"]), label="p99", color="tab:orange", linewidth=1)
    axis.plot(t, _clean(data["max"]), label="max", color="tab:red", linewidth=0.8, alpha=0.6)
    axis.set_yscale("log")
    axis.set_ylabel("latency (ms)")
    axis.set_xlabel(x_label)
    axis.set_title(title, fontsize=10)
    errors = axis.twinx()
    errors.fill_between(t, [r * 100 for r in data["error_rate"]], step="post", color="black",
                        alpha=0.25, label="failed calls (%)")
    if "new_hash_fraction" in data:
        errors.plot(t, [f * 100 if not math.isnan(f) else math.nan
                        for f in data["new_hash_fraction"]], color="tab:green",
                    linewidth=1.2, label="answers with the new hash (%)")
    errors.set_ylim(0, 105)
    errors.set_ylabel("%")
    seen = set()
    for at, label in data["events"]:
        kind = label.split()[0]
        color = {"SIGKILL": "red", "SIGTERM": "purple", "deleted": "gray", "exited": "black",
                 "ready": "green", "restarted": "orange"}.get(kind, "gray")
        axis.axvline(at, color=color, linestyle=":", linewidth=0.8,
                     label=kind if kind not in seen else None)
        seen.add(kind)
    lines, labels = axis.get_legend_handles_labels()
    lines2, labels2 = errors.get_legend_handles_labels()
    axis.legend(lines + lines2, labels + labels2, fontsize=7, loc="upper left", ncol=2)


def timeline_png(results: dict[str, ScenarioResult], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in
              (("sigkill", "SIGKILL of one replica (t = 0: the kill)"),
               ("rollout", "Policy rollout (t = 0: rollout starts)"))
              if key in results and results[key].plot]
    if not panels:
        return None
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for axis, (key, title) in zip(axes[:, 0], panels):
        _timeline_panel(axis, results[key].plot, title, "seconds (0.25 s bins, by scheduled "
                        "start)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def surge_png(result: ScenarioResult, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = result.plot
    if not data:
        return None
    figure, axis = plt.subplots(figsize=(11, 4.2))
    axis.plot(data["t"], _clean(data["p50"]), label="p50", linewidth=1)
    axis.plot(data["t"], _clean(data["p99"]), label="p99", linewidth=1)
    axis.plot(data["t"], _clean(data["max"]), label="max", linewidth=0.8, alpha=0.6)
    axis.set_yscale("log")
    axis.set_ylabel("latency (ms)")
    axis.set_xlabel("seconds (1 s bins)")
    axis.set_title("Surge: steady → ×5 → steady → beyond capacity (large messages) → "
                   "recovery", fontsize=10)
    rates = axis.twinx()
    rates.bar(data["t"], data["calls"], width=1.0, align="edge", alpha=0.15, color="gray",
              label="calls/s offered")
    rates.bar(data["t"], [c * e for c, e in zip(data["calls"], data["error_rate"])], width=1.0,
              align="edge", alpha=0.5, color="red", label="RESOURCE_EXHAUSTED/s")
    rates.set_ylabel("calls per second")
    for label, start, _end in data["phases"]:
        axis.axvline(start, color="black", linestyle=":", linewidth=0.8)
        axis.text(start + 0.2, axis.get_ylim()[1] * 0.6, label, fontsize=7, rotation=90)
    lines, labels = axis.get_legend_handles_labels()
    lines2, labels2 = rates.get_legend_handles_labels()
    axis.legend(lines + lines2, labels + labels2, fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
