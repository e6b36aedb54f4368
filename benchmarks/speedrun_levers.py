"""The speed run's lever trials (recipes/speedrun): each lever is one `advcli adv-train` run on
45,000 CIFAR-10 training images, validated on the 5,000 held out by `--val-split` (never the test
set), and scored by its time per epoch and its validation clean and PGD-10 accuracy (fp32, the
first 1,000 validation images, measured after the last epoch). Accuracy for the training time
spent is what the choice of the speed-run config rests on; the table in benchmarks/README.md is this script's output.

    .venv/bin/python benchmarks/speedrun_levers.py --out runs/levers            # every lever (about 1.5 h on 2 cores)
    .venv/bin/python benchmarks/speedrun_levers.py --out runs/levers --only w16-e10,w16-e10-nfgsm
    .venv/bin/python benchmarks/speedrun_levers.py --out runs/levers --table    # only print the table of what ran

Runs are whole processes, one after the other, so run it on an otherwise idle machine; a lever
whose checkpoint exists is not re-run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"
COMMON = ["--val-split", "5000", "--batch-size", "256", "--lr", "0.2", "--augment", "device", "--amp", "bf16",
          "--channels-last", "--norm", "linf", "--eps", "8/255", "--fraction", "1.0", "--seed", "0", "--quiet"]

# name -> (what it tests, options beyond COMMON). --val-every = --epochs: validation after the last epoch.
LEVERS: dict[str, tuple[str, list[str]]] = {
    "w16-e10": ("resnet9-w16, FGSM-RS, 10 epochs", ["--arch", "resnet9-w16", "--epochs", "10", "--attack", "fgsm-rs"]),
    "w24-e5": ("resnet9-w24, FGSM-RS, 5 epochs (same time)",
               ["--arch", "resnet9-w24", "--epochs", "5", "--attack", "fgsm-rs"]),
    "w24-e10": ("resnet9-w24, FGSM-RS, 10 epochs", ["--arch", "resnet9-w24", "--epochs", "10", "--attack", "fgsm-rs"]),
    "w16-e20": ("resnet9-w16, FGSM-RS, 20 epochs (same time)",
                ["--arch", "resnet9-w16", "--epochs", "20", "--attack", "fgsm-rs"]),
    "w16-e10-nfgsm": ("resnet9-w16, N-FGSM (noise 2·eps, step eps), 10 epochs",
                      ["--arch", "resnet9-w16", "--epochs", "10", "--attack", "n-fgsm"]),
    "w16-e10-ema": ("resnet9-w16, FGSM-RS, --ema 0.99, 10 epochs",
                    ["--arch", "resnet9-w16", "--epochs", "10", "--attack", "fgsm-rs", "--ema", "0.99"]),
    # The objectives (issue: does a cheap TRADES or AWP on FGSM-RS beat FGSM-RS at the same budget?):
    # TRADES at the reference beta 6 with 2 inner KL steps of eps/2 (about twice FGSM-RS's cost per
    # epoch, so w16-e20 is its same-time row); AWP at the TRADES-AWP reference's gamma 5e-3 on
    # FGSM-RS, switched on after 1 epoch (the reference warms up 10 of 200 epochs).
    "w16-e10-trades2": ("resnet9-w16, TRADES beta 6 (2 inner steps of 4/255), 10 epochs",
                        ["--arch", "resnet9-w16", "--epochs", "10", "--objective", "trades", "--beta", "6",
                         "--attack", "pgd", "--steps", "2", "--step-size", "4/255"]),
    "w16-e10-awp": ("resnet9-w16, FGSM-RS + AWP (gamma 5e-3 from epoch 2), 10 epochs",
                    ["--arch", "resnet9-w16", "--epochs", "10", "--attack", "fgsm-rs", "--awp", "5e-3",
                     "--awp-warmup", "1"]),
    # --compile: time per epoch against the same short run without it (10,000 images, 3 epochs).
    "w24-e3-10k": ("resnet9-w24, FGSM-RS, 10,000 images, 3 epochs",
                   ["--arch", "resnet9-w24", "--epochs", "3", "--attack", "fgsm-rs", "--n-train", "10000"]),
    "w24-e3-10k-compile": ("resnet9-w24, FGSM-RS, 10,000 images, 3 epochs, --compile",
                           ["--arch", "resnet9-w24", "--epochs", "3", "--attack", "fgsm-rs", "--n-train", "10000",
                            "--compile"]),
}


def _epochs(options: list[str]) -> str:
    return options[options.index("--epochs") + 1]


def run(name: str, out: Path, advcli: list[str], data: str) -> None:
    ckpt = out / f"{name}.safetensors"
    if ckpt.exists():
        return
    options = LEVERS[name][1]
    cmd = [*advcli, "adv-train", "--dataset", data, *COMMON, *options,
           "--val-every", _epochs(options), "--out", str(ckpt)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def table(out: Path) -> str:
    from advcli.models.checkpoint import read_metadata

    rows = ["| lever | epochs | time per epoch | training time | val clean | val PGD-10 |",
            "|---|---|---|---|---|---|"]
    for name, (what, _) in LEVERS.items():
        ckpt = out / f"{name}.safetensors"
        if not ckpt.exists():
            continue
        meta = read_metadata(ckpt)
        history = meta["history"]
        # The last epoch also runs the validation PGD: the per-epoch time is the median of the
        # others (a median, so that a few epochs slowed by another process do not move it).
        seconds = [h["seconds"] for h in history]
        per_epoch = statistics.median(seconds[:-1] or seconds)
        total = sum(seconds)
        last = history[-1]
        rows.append(f"| {what} | {len(history)} | {per_epoch:.1f} s | {total / 60:.1f} min | "
                    f"{100 * last['val_accuracy']:.1f} % | {100 * last['val_robust_accuracy']:.1f} % |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder of the trial checkpoints")
    p.add_argument("--only", default="", help="comma-separated lever names (default: all)")
    p.add_argument("--data", default=f"folder:{DATA}", help="dataset spec (default: the CIFAR-10 JPEG zip)")
    p.add_argument("--table", action="store_true", help="print the table of the trials that ran; run nothing")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(LEVERS)
    unknown = set(names) - set(LEVERS)
    if unknown:
        p.error(f"unknown lever(s) {sorted(unknown)}; known: {', '.join(LEVERS)}")
    if not args.table:
        args.out.mkdir(parents=True, exist_ok=True)
        advcli = [os.environ["ADVCLI"]] if os.environ.get("ADVCLI") else [sys.executable, "-m", "advcli"]
        for name in names:
            run(name, args.out, advcli, args.data)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
