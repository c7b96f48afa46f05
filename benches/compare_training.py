#!/usr/bin/env python3
"""DCGAN training throughput, ours (burn flex + autodiff, `examples/train.rs`) vs the PyTorch twin
(`tools/reference/dcgan_training/train_torch.py`: same networks, recipe and data scaling), side by
side in one run, same thread count, fresh runs from the same images.

    cargo build --release --example train
    /work/venv-ref/bin/python benches/compare_training.py --data /work/data/lorelei --threads 2

Prints a Markdown table: images per second of training-step time (data loading excluded) for
each configuration, median of --repeat alternating runs per side, and the ratio. Pause other
CPU work first (e.g. `pkill -STOP -f train-bin`).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, size, latent, G widths, D widths, batch, steps)
CONFIGS = [
    ("small 96 px, G 128-64-32-16", 96, 100, "128,64,32,16", "16,32,64,128", 16, 100),
    ("small 96 px, G 128-64-32-16", 96, 100, "128,64,32,16", "16,32,64,128", 64, 40),
    ("large 128 px, G 128-64-32-16", 128, 128, "128,64,32,16", "16,32,64,128", 16, 60),
    ("96 px, G 256-128-64-32", 96, 100, "256,128,64,32", "32,64,128,256", 64, 20),
    ("128 px, G 256-128-64-32", 128, 128, "256,128,64,32", "32,64,128,256", 32, 20),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset root with 96/ and 128/ folders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=2000, help="images loaded per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side (alternating); medians reported")
    ap.add_argument("--train-bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
                                              / "x86_64-unknown-linux-gnu/release/examples/train"))
    ap.add_argument("--baseline-bin", help="also time this (older) build of the train example, alternating")
    ap.add_argument("--config", type=int, action="append",
                    help="time only this row of CONFIGS (0-based; repeatable); default: all")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    extra = ("ours before (img/s) | ", "--- | ") if a.baseline_bin else ("", "")
    rows = [f"| model | batch | steps | {extra[0]}ours (img/s) | PyTorch (img/s) | ours vs PyTorch |",
            f"| --- | --- | --- | {extra[1]}--- | --- | --- |"]
    configs = [CONFIGS[i] for i in a.config] if a.config else CONFIGS
    for name, size, latent, widths, d_widths, batch, steps in configs:
        data = str(Path(a.data) / str(size))
        ours_runs, base_runs, torch_runs = [], [], []
        for _ in range(a.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                for binary, runs in [(a.train_bin, ours_runs), (a.baseline_bin, base_runs)]:
                    if binary is None:
                        continue
                    run = Path(tmp) / Path(binary).name
                    subprocess.run([binary, "--data", data, "--size", str(size), "--latent", str(latent),
                                    "--widths", widths, "--d-widths", d_widths, "--batch", str(batch),
                                    "--steps", str(steps), "--max-images", str(a.images), "--run-dir", str(run),
                                    "--sample-every", "1000000", "--checkpoint-every", "1000000"],
                                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    state = json.loads((run / "checkpoint" / "state.json").read_text())
                    runs.append(state["images_seen"] / state["train_seconds"])
                done = subprocess.run([sys.executable, str(ROOT / "tools/reference/dcgan_training/train_torch.py"),
                                       "--data", data, "--limit", str(a.images), "--latent", str(latent),
                                       "--widths", widths, "--d-widths", d_widths, "--batch", str(batch),
                                       "--steps", str(steps), "--threads", str(a.threads),
                                       "--out", str(Path(tmp) / "torch")],
                                      check=True, capture_output=True, text=True).stdout
                torch_runs.append(float(re.search(r"\(([\d.]+) img/s\)", done).group(1)))
        ours, torch_rate = statistics.median(ours_runs), statistics.median(torch_runs)
        before = f"{statistics.median(base_runs):.1f} | " if base_runs else ""
        ratio = ours / torch_rate
        verdict = f"{ratio:.2f}x" + (" (slower)" if ratio < 1 else " (faster)")
        rows.append(f"| {name} | {batch} | {steps} | {before}{ours:.1f} | {torch_rate:.1f} | {verdict} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"{a.threads} threads, {a.images} images per run, default recipe (lr 2e-4, EMA 0.999), "
          f"median of {a.repeat} alternating runs per side.\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
