"""Benchmark [9] `fast-eval`: standard AutoAttack time / the fast worst-case evaluation's time
(`eval --fast-worst-case`: APGD-CE + MALT-targeted APGD on 3 targets) on the same model, images,
eps and seed, both through eval's own entries; with both robust accuracies and the two
disagreement counts (robust under fast but broken by AutoAttack, the one that matters; broken by
fast but robust under AutoAttack). Target >= 5.

In `run.py` it measures the harness's adversarially trained synthetic model on `--aa-n` images.
Standalone, it measures real checkpoints (and models or defences written as outside code):

    python benchmarks/bench_fast_eval.py CKPT.safetensors [...] --n 200 \\
        --dataset folder:../shared/data/cifar10-jpeg.zip [--wrap FILE.py:CALLABLE]

and prints one markdown table row per model. Standard AutoAttack is run once per model (minutes
per hundred images on 2 CPU cores), right after the fast evaluation, in one process.

A recipe that already ran both through `advcli eval`, one after the other on the same images
(recipes/objectives: eval-aa.yaml, then eval-fast.yaml), gives the same row from its files:

    python benchmarks/bench_fast_eval.py --from-results AA.yaml FAST.yaml [AA.yaml FAST.yaml ...]

(the times are the result files' own per-attack wall times; process CPU time is not recorded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from bench_autoattack import quiet_autoattack  # noqa: E402
from harness import EPS, Context, Ratio, emit, eval_model, info  # noqa: E402

from advcli.config import Eps, Norm  # noqa: E402
from advcli.progress import NullReporter  # noqa: E402

NAME = "fast-eval"


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, eps: Eps = EPS,
            batch_size: int = 256) -> dict[str, Any]:
    """Both evaluations on (x, y), fast first: times, accuracies and the disagreements."""
    from advcli.evaluate.fast import fast_entry
    from advcli.evaluate.run import autoattack_entry, predict_flags

    model.to(device).eval()
    clean = predict_flags(model, x, y, batch_size, device)
    common = dict(norm=Norm.linf, eps=eps, batch_size=batch_size, seed=0, device=device, reporter=NullReporter())
    with quiet_autoattack():
        t0, c0 = time.perf_counter(), time.process_time()
        fast = fast_entry(model, x, y, clean, **common)  # type: ignore[arg-type]
        t1, c1 = time.perf_counter(), time.process_time()
        info(f"fast-eval: apgd-ce+malt-t3 {t1 - t0:.0f} s, robust {100 * fast.accuracy:.1f}%; standard AutoAttack next")
        aa = autoattack_entry(model, x, y, clean, version="standard", attacks=None, **common)  # type: ignore[arg-type]
        t2, c2 = time.perf_counter(), time.process_time()
    assert fast.flags is not None and aa.flags is not None
    return {
        "n": len(y), "clean": float(clean.mean()), "fast_s": t1 - t0, "aa_s": t2 - t1,
        "fast_cpu_s": c1 - c0, "aa_cpu_s": c2 - c1,
        "fast": fast.accuracy, "aa": aa.accuracy, "broken": fast.params["broken"],
        "fast_only_robust": int(np.count_nonzero(fast.flags & ~aa.flags)),
        "aa_only_robust": int(np.count_nonzero(aa.flags & ~fast.flags)),
    }


def row(label: str, m: dict[str, Any]) -> str:
    return (f"| {label} | {m['n']} | {100 * m['clean']:.1f} | {m['aa_s']:.0f} | {m['fast_s']:.0f} | "
            f"{m['aa_s'] / max(m['fast_s'], 1e-9):.1f}× | {100 * m['aa']:.1f} | {100 * m['fast']:.1f} | "
            f"{m['fast_only_robust']} | {m['aa_only_robust']} |")


HEADER = ("| model | n | clean % | standard AA (s) | fast (s) | ratio | AA robust % | fast robust % | "
          "robust under fast, broken by AA | broken by fast, robust under AA |\n" + "|---" * 10 + "|")


def run(ctx: Context) -> None:
    from advcli.data import test_subset, to_float

    s = ctx.sizes
    model = eval_model(ctx)
    idx = test_subset(ctx.data.test_y, s.aa_n, seed=0)
    x, y = to_float(ctx.data.test_x[idx]), ctx.data.test_y[idx].long()
    info(f"fast-eval: {s.archs[0]} (adversarially trained), {len(y)} examples, standard AutoAttack vs "
         "apgd-ce+malt-t3, one run each")
    m = measure(model, x, y, ctx.device, batch_size=max(len(y), 1))
    emit(ctx, Ratio(
        "fast-eval", f"[9] standard AutoAttack time / eval --fast-worst-case time (n={len(y)})", target=">= 5",
        value=m["aa_s"] / max(m["fast_s"], 1e-9),
        detail=f"AA {m['aa_s']:.1f} s, fast {m['fast_s']:.1f} s; robust accuracy AA {100 * m['aa']:.1f}%, fast "
               f"{100 * m['fast']:.1f}%; robust under fast but broken by AA: {m['fast_only_robust']}, broken by "
               f"fast but robust under AA: {m['aa_only_robust']}",
    ))


def from_results(aa_path: str, fast_path: str) -> tuple[str, dict[str, Any]]:
    """A row's numbers from an eval-aa file and an eval-fast file of one checkpoint on the same
    examples: refused (ValueError) when the checkpoints, the examples or the eps differ."""
    from advcli.formats.results import load_results

    aa_res, fast_res = load_results(aa_path), load_results(fast_path)
    if aa_res.model.sha256 != fast_res.model.sha256:
        raise ValueError(f"{aa_path} and {fast_path} evaluate different checkpoints")
    if (aa_res.data.index_sha256, aa_res.data.examples_sha256) != (fast_res.data.index_sha256,
                                                                   fast_res.data.examples_sha256):
        raise ValueError(f"{aa_path} and {fast_path} evaluate different examples")
    [aa] = [e for e in aa_res.entries if e.attack == "autoattack" and e.params.get("version") == "standard"]
    [fast] = [e for e in fast_res.entries if e.attack.startswith("apgd-ce+malt-t")]
    if aa.eps_key() != fast.eps_key() or aa.norm != fast.norm:
        raise ValueError(f"{aa_path} and {fast_path} attack at different threat models")
    [clean] = [e for e in aa_res.entries if e.is_clean]
    assert aa.flags is not None and fast.flags is not None and aa.time_s and fast.time_s
    return aa_res.label, {
        "n": aa.n, "clean": clean.accuracy, "fast_s": fast.time_s, "aa_s": aa.time_s,
        "fast": fast.accuracy, "aa": aa.accuracy, "broken": fast.params.get("broken"),
        "fast_only_robust": int(np.count_nonzero(fast.flags & ~aa.flags)),
        "aa_only_robust": int(np.count_nonzero(aa.flags & ~fast.flags)),
    }


def main(argv: list[str] | None = None) -> int:
    from advcli.config import parse_eps
    from advcli.data import to_float
    from advcli.data.subsets import Subset
    from advcli.models.user import load_target

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", help="checkpoints to measure")
    p.add_argument("--model", action="append", default=[], help="FILE.py:CALLABLE modules (no weights) to measure")
    p.add_argument("--wrap", help="FILE.py:CALLABLE defence around every checkpoint (outside code)")
    p.add_argument("--dataset", help="dataset (default: the checkpoint's)")
    p.add_argument("--n", type=int, default=200, help="first N test images in advcli's stratified order")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--from-results", nargs="+", metavar="AA.yaml FAST.yaml",
                   help="pairs of eval result files (standard AutoAttack, then the fast evaluation) "
                        "to tabulate instead")
    args = p.parse_args(argv)
    if args.from_results:
        if len(args.from_results) % 2:
            p.error("--from-results takes pairs: AA.yaml FAST.yaml")
        print(HEADER)
        pairs = zip(args.from_results[::2], args.from_results[1::2], strict=True)
        for aa_path, fast_path in pairs:
            label, m = from_results(aa_path, fast_path)
            print(row(label, m) + f" <!-- from {aa_path}, {fast_path}; broken per stage {m['broken']} -->")
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(HEADER)
    for ckpt, model in [(c, None) for c in args.checkpoints] + [(None, m) for m in args.model]:
        target = load_target(ckpt, model=model, wrap=args.wrap, device=device)
        data, idx, _ = target.examples(dataset=args.dataset, data_dir=None, split="test", n=args.n, seed=0,
                                    subset=Subset.stratified, device=device)
        xs, ys = data.split("test")
        m = measure(target.model, to_float(xs[idx]), ys[idx].long(), device, parse_eps(args.eps), args.batch_size)
        label = target.label(None)
        print(row(label, m) + f" <!-- broken per stage {m['broken']}; process CPU time: AA "
              f"{m['aa_cpu_s']:.0f} s, fast {m['fast_cpu_s']:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
