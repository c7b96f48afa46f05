#!/usr/bin/env python3
"""Side-by-side: the seed's Keras generator (TensorFlow, CPU) vs ours (burn flex, CPU).

Runs tools/reference/bench_keras.py and `cargo bench --bench generator -- keras_seed_generator`
back to back on the same machine and prints a Markdown table of medians and ratios.

    /work/venv-keras/bin/python benches/compare_keras.py [--python /work/venv-keras/bin/python]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def criterion_median_ms(group: str, name: str, param: str) -> float:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "criterion" / group / name / param / "new" / "estimates.json"
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"] / 1e6


def median_ms(call, runs: int, warmup: int) -> float:
    """Median wall time of `call()` in ms over `runs` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def speed_verdict(theirs_ms: float, ours_ms: float) -> str:
    """"1.23x faster" / "1.23x slower": ours against theirs, from two times."""
    if ours_ms <= theirs_ms:
        return f"{theirs_ms / ours_ms:.2f}x faster"
    return f"{ours_ms / theirs_ms:.2f}x slower"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="Python with tensorflow + tf_keras")
    ap.add_argument("--skip-rust", action="store_true", help="reuse the last criterion results")
    a = ap.parse_args()

    keras_json = ROOT / "target" / "keras_bench.json"
    keras_json.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([a.python, str(ROOT / "tools/reference/bench_keras.py"), "--keras", "2", "--out", str(keras_json)],
                   check=True)
    if not a.skip_rust:
        subprocess.run(["cargo", "bench", "-p", "avatar-core", "--bench", "generator", "--", "keras_seed_generator"],
                       check=True, cwd=ROOT)
    keras = json.loads(keras_json.read_text())
    rows = ["| model | batch | Keras call (ms) | Keras predict (ms) | ours (ms) | speed-up vs call | vs predict |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for res in (96, 128):
        for batch in (1, 64):
            pick = {r["mode"]: r["median_ms"] for r in keras["results"] if r["resolution"] == res and r["batch"] == batch}
            ours = criterion_median_ms("keras_seed_generator", f"{res}px", str(batch))
            rows.append(f"| seed Keras {res}px | {batch} | {pick['call']:.2f} | {pick['predict']:.2f} | {ours:.2f} | "
                        f"{pick['call'] / ours:.1f}x | {pick['predict'] / ours:.1f}x |")
    env = keras["env"]
    print(f"TensorFlow {env['tensorflow']}, {env['keras_flavour']} {env['keras_version']}, "
          f"{env['cpu_count']} CPUs; ours: burn 0.22.1 flex (release). Medians.\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
