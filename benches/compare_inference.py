#!/usr/bin/env python3
"""Side-by-side: our `transposed` DCGAN generators in PyTorch (eager, eval mode) vs burn flex.

Loads each weights file (our safetensors layout + config JSON; default: the two embedded models)
into the PyTorch twin's generator (tools/reference/dcgan_training/train_torch.py), times a forward
pass at batch 1 and 64 (medians), then runs
`cargo bench -p avatar-core --bench generator -- transposed_generator_forward` on the same files
and prints a Markdown table with the ratios. Pause other jobs first (numbers are per machine).

    /work/venv-ref/bin/python benches/compare_inference.py [--weights W.safetensors ...] [--threads 2]
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from compare_keras import ROOT, criterion_median_ms, median_ms, speed_verdict  # same folder

EMBEDDED = {"small": ROOT / "avatar-core/weights/dcgan_small.safetensors",
            "large": ROOT / "avatar-core/weights/dcgan_large.safetensors"}


def torch_generator(path: Path):
    """The twin's generator with the file's weights (f16/f32 stored, computed in f32)."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tools/reference/dcgan_training"))
    from train_torch import generator

    config = json.loads(path.with_suffix(".json").read_text())
    widths, r = config["widths"], config["resolution"]
    g = generator(config["latent_dim"], widths, config["channels"], r // 2 ** len(widths))
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    mods = [m for m in g if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d))]
    for i in range(len(widths)):
        conv, norm = mods[2 * i], mods[2 * i + 1]
        conv.weight.data.copy_(tensors[f"blocks.{i}.conv.weight"])
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, key).data.copy_(tensors[f"blocks.{i}.norm.{key}"])
    mods[-1].weight.data.copy_(tensors["output.weight"])
    mods[-1].bias.data.copy_(tensors["output.bias"])
    return g.eval(), config["latent_dim"]


def time_torch(path: Path, runs: int) -> tuple[int, dict[int, float]]:
    """The model's parameter count and its median forward time (ms) at batch 1 and 64."""
    import torch

    g, latent = torch_generator(path)
    medians = {}
    with torch.inference_mode():
        for batch in (1, 64):
            z = torch.randn(batch, latent, 1, 1)
            medians[batch] = median_ms(lambda: g(z), runs, warmup=3)
    return sum(p.numel() for p in g.parameters()), medians


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="*", default=[], help="more weights files (our layout); "
                    "the embedded small and large models are always timed")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads (ours: RAYON_NUM_THREADS)")
    ap.add_argument("--runs", type=int, default=30, help="timed PyTorch runs per case")
    ap.add_argument("--skip-rust", action="store_true", help="reuse the last criterion results")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    models = dict(EMBEDDED)
    for w in a.weights:
        models[Path(w).stem] = Path(w).resolve()
    measured = {name: time_torch(path, a.runs) for name, path in models.items()}
    if not a.skip_rust:
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads),
                   AVATAR_BENCH_GENERATORS=",".join(str(models[Path(w).stem]) for w in a.weights))
        subprocess.run(["cargo", "bench", "-p", "avatar-core", "--bench", "generator", "--",
                        "transposed_generator_forward"], check=True, cwd=ROOT, env=env)
    rows = ["| model | params | batch | PyTorch (ms) | ours (ms) | ours vs PyTorch |", "| --- | --- | --- | --- | --- | --- |"]
    for name, (params, torch_ms) in measured.items():
        for b in (1, 64):
            ours = criterion_median_ms("transposed_generator_forward", name, str(b))
            t = torch_ms[b]
            verdict = speed_verdict(t, ours)
            rows.append(f"| {name} | {params / 1e6:.2f} M | {b} | {t:.2f} | {ours:.2f} | {verdict} |")
    print(f"\nPyTorch {torch.__version__} eager, eval mode, inference_mode, {a.threads} threads; "
          f"ours: burn 0.22.1 flex (release, batch norms folded at load), RAYON_NUM_THREADS={a.threads}. Medians.\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
