"""advcli speed and memory benchmarks (issue #9). Every number printed is a ratio measured in ONE
run, side by side, so that a shared or noisy machine slows both sides alike.

    .venv/bin/python benchmarks/run.py                           # everything, default sizes (`make bench`)
    .venv/bin/python benchmarks/run.py --only pgd-step,eval-pgd --repeats 9
    .venv/bin/python benchmarks/run.py --malloc default          # without the allocator tuning the CLI does
    .venv/bin/python benchmarks/run.py --size smoke --no-cache   # seconds; what the smoke test runs

Benchmarks (name: what is divided by what; target):
  pgd-step    one PGD step (attack.perturb with k steps, / k) / one forward pass (no_grad, eval
              mode), same model and batch; input gradient only                            <= 2.1
  adv-train   adv-train time per batch (the real `fit` loop with PGD-k) /
              (k-step PGD on a batch + one training step on a batch)                      <= 1.05
  eval-pgd    eval's clean + PGD-10 throughput / torchattacks PGD (clean pass, attack, final pass)
              on the same model, examples, eps, step size and steps                        >= 2
  augment     `device` augmentation images/s / `fixed` mode with 2 DataLoader workers     >= 10
  autoattack  eval's AutoAttack entry / pyautoattack called directly on the same model,
              points and seed (version custom, apgd-ce); a time ratio                      <= 1.05
  memory      peak memory of adv-train per batch size (a process per size: peak heap RSS
              on the CPU, torch.cuda.max_memory_allocated on a GPU)                        report
  options     adv-train step time with --channels-last / --amp bf16 / both, vs neither     report
  compile     training step time with --compile (torch.compile) vs eager, and the
              compilation time of the first step                                            report
  objectives  one adv-train update with --objective trades / mart / --awp, vs PGD-AT
              (same model, batch, inner steps): the per-epoch cost of each objective       report
  fast-eval   standard AutoAttack time / eval --fast-worst-case time on the same model and
              points (--aa-n), with both robust accuracies and their disagreements         >= 5

How a ratio is measured: every side gets one untimed warm-up call; then the sides run
interleaved in ABBA order (A B, B A, A B, ...), `--repeats` times; the ratio of each pair is
taken, and the MEDIAN of the pair ratios is the result (their range is shown). Each side's
wall time is shown as mean ± std; "cpu" is the same ratio in this process's CPU time, which
a busy machine disturbs less (when the two agree, the load did not bias the result).
Exit status is 0 even when a target is missed (timings are noisy); `--strict` exits 1 then.

Layout: this file parses the options and runs the chosen benchmarks in order; `harness.py`
holds the sizes, the timing and printing, and the data and models they share; each benchmark
is one file, `bench_<name>.py`, with its `NAME` and `run(ctx)`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# The benchmark modules sit next to this file; `python benchmarks/run.py` puts this folder on
# sys.path, importing this file from elsewhere (tests/test_benchmarks_smoke.py) does not.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_adv_train  # noqa: E402
import bench_augment  # noqa: E402
import bench_autoattack  # noqa: E402
import bench_compile  # noqa: E402
import bench_eval_pgd  # noqa: E402
import bench_fast_eval  # noqa: E402
import bench_memory  # noqa: E402
import bench_objectives  # noqa: E402
import bench_options  # noqa: E402
import bench_pgd_step  # noqa: E402
import bench_robustbench  # noqa: E402
import torch  # noqa: E402
from harness import SIZES, Context, Ratio, Sizes, info, pair_ratio, synthetic_data, tune_malloc  # noqa: E402

from advcli.device import resolve_device  # noqa: E402
from advcli.io import atomic_write_text  # noqa: E402

__all__ = ["BENCHMARKS", "RUNNERS", "Ratio", "main", "pair_ratio"]

# In the order they run and print.
MODULES = (bench_pgd_step, bench_adv_train, bench_eval_pgd, bench_augment, bench_autoattack, bench_memory,
           bench_options, bench_compile, bench_objectives, bench_robustbench, bench_fast_eval)
RUNNERS: dict[str, Callable[[Context], None]] = {m.NAME: m.run for m in MODULES}
BENCHMARKS = tuple(RUNNERS)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--size", choices=sorted(SIZES), default="default", help="preset sizes (default: default)")
    p.add_argument("--archs", help="comma-separated models for pgd-step; the first also runs the others")
    p.add_argument("--batch-size", type=int, help="batch size of pgd-step, adv-train, eval-pgd, augment, options")
    p.add_argument("--repeats", type=int, help="interleaved pairs per ratio")
    p.add_argument("--eval-n", type=int, help="examples for eval-pgd")
    p.add_argument("--aa-n", type=int, help="examples for autoattack and fast-eval")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine two threads wait for each other at\n"
                        "every op and the timings measure the scheduler; 0 = torch's own choice)")
    p.add_argument("--malloc", choices=("default", "tuned"), default="tuned",
                   help="tuned: keep freed memory in the process (glibc mallopt; see tune_malloc)")
    p.add_argument("--cache-dir", default=str(Path(os.environ.get("ADVCLI_CACHE", Path.home() / ".cache/advcli"))
                                              / "bench"), help="where the trained eval model is cached")
    p.add_argument("--no-cache", action="store_true", help="train the eval model afresh and do not cache it")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--arch", default="tiny-cnn", help=argparse.SUPPRESS)
    p.add_argument("--adv-steps", type=int, default=5, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_sizes(args: argparse.Namespace) -> Sizes:
    over: dict[str, Any] = {}
    if args.archs:
        over["archs"] = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    if args.batch_size:
        over["batch"] = args.batch_size
    for name in ("repeats", "eval_n", "aa_n"):
        if getattr(args, name):
            over[name] = getattr(args, name)
    return replace(SIZES[args.size], **over)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.malloc == "tuned" and not tune_malloc():
        info("--malloc tuned: glibc's mallopt is not available here; running with the default allocator")
    if args.memory_child:
        bench_memory.memory_child(args)
        return 0
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; valid values: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    sizes = resolve_sizes(args)
    device = resolve_device(args.device)
    t_start = time.perf_counter()
    env = machine()
    print(f"advcli benchmarks: size {args.size}, device {device}, {env['cpu']}, {env['cores']} cores, "
          f"torch {env['torch']} ({env['threads']} threads), malloc {args.malloc}, "
          f"load average {env['load_avg_1m']} at start")
    print("ratio = median over interleaved (ABBA) pairs after a warm-up; cpu = the same in process CPU time; "
          "times: mean ± std")
    tmp = Path(tempfile.mkdtemp(prefix="advcli-bench-"))
    try:
        ctx = Context(args, sizes, device, synthetic_data(sizes), tmp)
        for name in chosen:
            t0 = time.perf_counter()
            RUNNERS[name](ctx)
            info(f"{name}: {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start
    load_end = round(os.getloadavg()[0], 2)
    targeted = [r for r in ctx.results if r.target]
    missed = [r for r in targeted if r.verdict == "FAIL"]
    print(f"summary: {len(targeted) - len(missed)}/{len(targeted)} targets met in {total:.0f} s "
          f"(load average {load_end} at the end)"
          + (f"; missed: {', '.join(r.label.split(' (')[0] for r in missed)}" if missed else ""))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps({
            "machine": env | {"load_avg_1m_end": load_end, "device": str(device), "malloc": args.malloc},
            "size": args.size, "sizes": asdict(sizes), "seconds": round(total, 1),
            "results": [asdict(r) | {"verdict": r.verdict} for r in ctx.results],
        }, indent=2) + "\n")
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
