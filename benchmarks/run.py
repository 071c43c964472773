"""``python -m benchmarks.run``: every benchmark, tables printed and written to
``benchmarks/results/`` (JSON, plus a bar chart of the speed table), with the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import jax

from benchmarks.costs import compile_table, memory_table, vmap_table
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
    keys = list(rows[0])
    print("  ".join(f"{k:>20}" for k in keys))
    for row in rows:
        print(
            "  ".join(f"{v:>20.3f}" if isinstance(v, float) else f"{v!s:>20}" for v in row.values())
        )


def speed_plot(rows: list[dict], path: Path) -> None:
    """Bars of ms per 25-step loop: jaxsched, diffusers and the floor, per scheduler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["scheduler"] for r in rows]
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 3.5))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds per benchmark")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    results = {"machine": machine()}
    print(json.dumps(results["machine"]))
    results["speed"] = speed_table(args.rounds)
    _print_rows(
        "speed: (16, 4, 64, 64) float32, model 0.1 x, SD schedule, 25 steps (ms)", results["speed"]
    )
    speed_plot(results["speed"], RESULTS / "speed.png")
    results["compile"] = compile_table()
    _print_rows("compile time of sample (DPM++ 2M)", [results["compile"]])
    results["vmap"] = vmap_table(rounds=args.rounds)
    _print_rows("vmap over 64 schedules vs one batched run (DPM++ 2M)", [results["vmap"]])
    results["memory"] = memory_table()
    _print_rows("compiled loop memory (in samples)", results["memory"])
    (RESULTS / f"results-{jax.default_backend()}.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
