"""The streaming data path (issue 30): loader throughput and memory that does not grow with the
dataset.

    python benchmarks/stream_data.py throughput --folder DIR [--image-size 64] [--workers 2]
    python benchmarks/stream_data.py memory --small DIR2K --large DIR20K [--image-size 64]

DIR is an ImageNet-layout folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) of variable-size
JPEGs, e.g. from `python benchmarks/jpeg_tree.py DIR --n-train 2000`.

`throughput`: training-loader images per second of advcli's streaming path
(`data.loaders.train_batches` over `load_dataset(..., stream="on")`: per-image seeded
RandomResizedCrop + flip, decoded in DataLoader workers) / a plain torchvision
`ImageFolder` + `DataLoader` with the same transforms (`transforms.v2.RandomResizedCrop` +
`RandomHorizontalFlip` on PIL images, then a uint8 tensor), the same batch size, workers and
shuffling, both ending in float [0, 1] batches. One epoch per call, workers started per epoch on
both sides; the sides run in ABBA order, the ratio of each pair is taken and the median printed.
Target >= 1.0.

`memory`: peak memory of a 1-epoch `advcli train` (tiny-cnn, --stream on, 2 workers) on a small
and on a large folder, each in a fresh process tree. Memory is the tree's proportional set size
(PSS: shared pages counted once across the trainer and its workers), sampled every 50 ms from
/proc; the kernel's peak RSS of the largest process is printed beside it. Target: the two peaks
differ by < 10 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _epoch_advcli(folder: Path, image_size: int, batch: int, workers: int) -> Callable[[int], int]:
    from advcli.data import load_dataset
    from advcli.data.loaders import train_batches

    data = load_dataset(f"folder:{folder}", stream="on", image_size=image_size)

    def epoch(e: int) -> int:
        n = 0
        for xb, _ in train_batches(data.train_x, data.train_y, augment="fixed", batch_size=batch,
                                   workers=workers, seed=0, epoch=e, device=torch.device("cpu")):
            n += len(xb)
        return n
    return epoch


def _epoch_torchvision(folder: Path, image_size: int, batch: int, workers: int) -> Callable[[int], int]:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
                            v2.PILToTensor()])
    dataset = ImageFolder(str(folder / "train"), transform=transform)

    def epoch(e: int) -> int:
        n = 0
        g = torch.Generator().manual_seed(e)
        for xb, _ in DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, generator=g):
            xb = xb.float().div_(255)
            n += len(xb)
        return n
    return epoch


def throughput(args: argparse.Namespace) -> None:
    sides = {
        "advcli": _epoch_advcli(args.folder, args.image_size, args.batch_size, args.workers),
        "torchvision": _epoch_torchvision(args.folder, args.image_size, args.batch_size, args.workers),
    }
    wall: dict[str, list[float]] = {k: [] for k in sides}
    count: dict[str, int] = {}
    for name, fn in sides.items():  # warm-up: page cache, imports
        count[name] = fn(0)
    for r in range(args.repeats):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            t0 = time.perf_counter()
            count[name] = sides[name](r + 1)
            wall[name].append(time.perf_counter() - t0)
    rate = {k: [count[k] / t for t in v] for k, v in wall.items()}
    pairs = [a / b for a, b in zip(rate["advcli"], rate["torchvision"], strict=True)]
    print(f"folder {args.folder}: {count['advcli']:,} training images per epoch, image size "
          f"{args.image_size}, batch {args.batch_size}, {args.workers} workers, {args.repeats} paired epochs, "
          f"{os.cpu_count()} CPUs")
    for k in sides:
        print(f"  {k:12s} {statistics.fmean(rate[k]):8.1f} ± {statistics.pstdev(rate[k]):.1f} images/s")
    ratio = statistics.median(pairs)
    print(f"throughput advcli / torchvision ImageFolder = {ratio:.2f} (pairs {min(pairs):.2f}..{max(pairs):.2f}); "
          f"target >= 1.0: {'PASS' if ratio >= 1.0 else 'FAIL'}")


def _tree_pss_kib(root: int) -> int:
    """Summed PSS of `root` and its descendants, in KiB (0 for processes gone meanwhile)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def _train_peak(folder: Path, args: argparse.Namespace, out: Path) -> tuple[float, float, float, int]:
    """(peak tree PSS MiB, kernel peak RSS MiB of the largest process, wall s, images) of one
    1-epoch train."""
    cmd = [sys.executable, "-m", "advcli", "train", "--dataset", f"folder:{folder}", "--stream", "on",
           "--image-size", str(args.image_size), "--arch", "tiny-cnn", "--epochs", "1",
           "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--augment", "fixed",
           "--device", "cpu", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_pss_kib(proc.pid))
            done.wait(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"advcli train failed on {folder}:\n{err[-2000:]}")
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n = sum(1 for p in (folder / "train").rglob("*") if p.is_file())
    return peak[0] / 1024, maxrss, wall, n


def memory(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, folder in (("small", args.small), ("large", args.large)):
            pss, rss, wall, n = _train_peak(folder, args, Path(tmp) / f"{label}.safetensors")
            rows.append((label, n, pss, rss, wall))
            print(f"  {label}: {n:,} training images, peak PSS of the process tree {pss:,.0f} MiB, "
                  f"kernel peak RSS (largest process so far) {rss:,.0f} MiB, {wall:.0f} s", flush=True)
    (_, n_s, p_s, _, _), (_, n_l, p_l, _, _) = rows
    diff = abs(p_l - p_s) / p_s
    print(f"memory: {n_l:,} vs {n_s:,} images: peak PSS {p_l:,.0f} vs {p_s:,.0f} MiB, difference "
          f"{100 * diff:.1f} %; target < 10 %: {'PASS' if diff < 0.10 else 'FAIL'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput", help="advcli streaming loader / torchvision ImageFolder, images per second")
    t.add_argument("--folder", type=Path, required=True, help="ImageNet-layout folder of JPEGs")
    t.add_argument("--repeats", type=int, default=6, help="paired epochs (ABBA order)")
    m = sub.add_parser("memory", help="peak memory of a 1-epoch train on a small and a large folder")
    m.add_argument("--small", type=Path, required=True, help="folder of ~2,000 images")
    m.add_argument("--large", type=Path, required=True, help="folder of ~20,000 images")
    for q in (t, m):
        q.add_argument("--image-size", type=int, default=64, help="side of the square training crops, pixels")
        q.add_argument("--batch-size", type=int, default=128, help="images per batch")
        q.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = p.parse_args()
    torch.set_num_threads(1)
    throughput(args) if args.what == "throughput" else memory(args)


if __name__ == "__main__":
    main()
