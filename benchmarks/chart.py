"""results.json -> docs/benchmarks/throughput_vs_p99.png (needs the `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"Mailwarden": ("tab:green", "o"), "SpamAssassin": ("tab:red", "s"),
         "Rspamd": ("tab:blue", "^")}


def write_png(data: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for system in data["systems"]:
        levels = [lv for lv in system["levels"] if lv["completed"] > 0]
        if not levels:
            continue
        color, marker = STYLE.get(system["name"], ("tab:gray", "x"))
        xs = [lv["throughput"] for lv in levels]
        ys = [lv["p99_ms"] for lv in levels]
        ax.plot(xs, ys, marker=marker, color=color, label=system["name"])
        for lv, x, y in zip(levels, xs, ys):
            ax.annotate(f"C={lv['concurrency']}", (x, y), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (messages/s, log scale)")
    ax.set_ylabel("p99 latency (ms, log scale)")
    m = data["machine"]
    ax.set_title(f"Throughput vs p99 latency per concurrency level\n{m['cores']} cores, "
                 f"{data['started']}, load before {data['load_before']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
