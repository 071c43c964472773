"""``python -m benchmarks.run``: every benchmark, tables printed and written to
``benchmarks/results/`` (JSON, plus a bar chart of the speed table), with the machine."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from collections.abc import Callable
from pathlib import Path

import jax

from benchmarks.accuracy import (
    FLOW_NFES,
    FLOW_SHIFTS,
    SCHEDULES,
    clean_order_table,
    error_table,
    flow_error_table,
    round_trip_table,
)
from benchmarks.beyond import exact_inversion_table, learned_grid_table, remat_table
from benchmarks.costs import compile_table, memory_table, vmap_table
from benchmarks.sharded import sharded_table
from benchmarks.speed import speed_table

RESULTS = Path(__file__).with_name("results")


def machine() -> dict:
    """Where the numbers come from."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }


def _print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("  ".join(f"{k:>20}" for k in keys))
    for row in rows:
        values = (row.get(k, "-") for k in keys)
        print("  ".join(f"{v:>20.4g}" if isinstance(v, float) else f"{v!s:>20}" for v in values))


def speed_plot(rows: list[dict], path: Path) -> None:
    """Bars of ms per 25-step loop: jaxsched, diffusers and the floor, per scheduler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["scheduler"] for r in rows]
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 1, 3.5))
    for k, (key, name) in enumerate(
        (("jaxsched_ms", "jaxsched"), ("diffusers_ms", "diffusers"), ("floor_ms", "floor"))
    ):
        ax.bar(positions + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=name)
    ax.set_xticks(positions, labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per 25-step loop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy_plot(rows: list[dict], path: Path, columns: int = 4) -> None:
    """RMS error against NFE (log-log), one panel per schedule and grid end, ``columns`` panels
    a row: jaxsched solid, diffusers dashed, one colour per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["schedule"], r["end"]) for r in rows})
    columns = min(columns, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.6 * lines), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, (schedule, end) in zip(axes.flat, panels, strict=False):
        solvers = sorted(
            {r["solver"] for r in rows if (r["schedule"], r["end"]) == (schedule, end)}
        )
        colours = dict(zip(solvers, plt.cm.tab20.colors, strict=False))
        for r in rows:
            if (r["schedule"], r["end"]) != (schedule, end):
                continue
            style = "-" if r["library"] == "jaxsched" else "--"
            label = r["solver"] if r["library"] == "jaxsched" else None
            ax.loglog(r["nfe"], r["rms_error"], style, color=colours[r["solver"]], label=label)
        ax.set_title(f"{schedule},\nends at {end}", fontsize=8)
        ax.set_xlabel("NFE")
        ax.legend(fontsize=5, ncol=2 if len(solvers) > 8 else 1)
    for ax in axes[:, 0]:
        ax.set_ylabel("RMS error (solid: jaxsched, dashed: diffusers)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _accuracy_summary(rows: list[dict]) -> list[dict]:
    return [
        {
            "schedule": r["schedule"],
            "end": r["end"],
            "solver": r["solver"],
            "library": r["library"],
            "err@10": r["rms_error"][r["nfe"].index(10)],
            "err@25": r["rms_error"][r["nfe"].index(25)],
            "err@200": r["rms_error"][-1],
            "order": r["fitted_order"],
        }
        for r in rows
    ]


def _flow_accuracy_summary(rows: list[dict]) -> list[dict]:
    """Error per model-call budget (Heun: one call fewer), the fitted order and, on diffusers'
    rows, the largest difference from jaxsched's samples."""
    summary = []
    for r in rows:
        row = {"schedule": r["schedule"], "solver": r["solver"], "library": r["library"]}
        row.update(
            {f"err@{n}": e for n, e in zip(FLOW_NFES, r["rms_error"], strict=True)},
            order=r["fitted_order"],
        )
        if "max_abs_difference" in r:
            row["max |jaxsched - diffusers|"] = max(r["max_abs_difference"])
        summary.append(row)
    return summary


def uncached(table: Callable[..., list[dict]], *args) -> list[dict]:
    """``table(*args)``, then JAX's caches of compiled programs cleared. Every accuracy run
    compiles its own loop; kept, their memory maps pass the kernel's limit
    (``vm.max_map_count``, 65530 here) within one ``benchmarks.run`` and LLVM fails with
    "Cannot allocate memory"."""
    try:
        return table(*args)
    finally:
        jax.clear_caches()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40, help="timing rounds per benchmark")
    parser.add_argument("--skip-accuracy", action="store_true", help="speed and costs only")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    results = {"machine": machine()}
    print(json.dumps(results["machine"]))
    results["speed"] = speed_table(args.rounds)
    _print_rows(
        "speed: (16, 4, 64, 64) float32, model 0.1 x, SD schedule (flow: shift 3), 25 steps (ms)",
        results["speed"],
    )
    speed_plot(results["speed"], RESULTS / "speed.png")
    results["compile"] = compile_table()
    _print_rows("compile time of sample (DPM++ 2M)", [results["compile"]])
    results["vmap"] = vmap_table(rounds=args.rounds)
    _print_rows("vmap over 64 schedules vs one batched run (DPM++ 2M)", [results["vmap"]])
    results["memory"] = memory_table()
    _print_rows("compiled loop memory (in samples)", results["memory"])
    results["remat"] = remat_table()
    _print_rows("backward-pass temporaries (MB), 512-wide model, (64, 64) batch", results["remat"])
    results["sharded"] = sharded_table(args.rounds)
    _print_rows("sharded over 8 simulated CPU devices vs one device (ms)", results["sharded"])
    if not args.skip_accuracy:
        results["accuracy"] = [
            row
            for name in SCHEDULES
            for end in ("data", "sigma_min")
            for row in uncached(error_table, name, end)
        ]
        _print_rows(
            "accuracy: RMS error to the exact flow, fitted order (NFE >= 20)",
            _accuracy_summary(results["accuracy"]),
        )
        results["clean_orders"] = uncached(clean_order_table)
        _print_rows(
            "convergence on log-SNR-uniform grids, exact levels, float64 (jaxsched)",
            _accuracy_summary(results["clean_orders"]),
        )
        results["flow_accuracy"] = [
            row for shift in FLOW_SHIFTS for row in uncached(flow_error_table, shift)
        ]
        _print_rows(
            "flow matching: RMS error to the exact flow ODE per model-call budget, fitted order "
            "(NFE >= 15)",
            _flow_accuracy_summary(results["flow_accuracy"]),
        )
        accuracy_plot(
            results["accuracy"] + results["clean_orders"] + results["flow_accuracy"],
            RESULTS / "accuracy.png",
        )
        results["round_trip"] = uncached(round_trip_table)
        _print_rows("inversion round trip (SD schedule): RMS error", results["round_trip"])
        results["exact_inversion"] = exact_inversion_table()
        _print_rows(
            "exact vs plain DDIM inversion: round-trip RMS error", results["exact_inversion"]
        )
        results["learned_grid"] = learned_grid_table()
        _print_rows(
            "learned vs built-in grids: RMS error to a 1000-step solution (float64)",
            results["learned_grid"],
        )
    (RESULTS / f"results-{jax.default_backend()}.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
