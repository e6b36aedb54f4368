"""Benchmark [6] `memory`: peak memory of adv-train per batch size (report only).

A process per size (`run.py --memory-child B` runs `memory_child`): peak heap RSS on the CPU,
torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from harness import EPS, Context, Ratio, emit, info

from advcli.config import Norm
from advcli.data import ImageData
from advcli.data.synthetic import CLASSES
from advcli.device import resolve_device
from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
from advcli.train.loop import TrainOptions

NAME = "memory"
# The entry point that answers --memory-child (a fresh interpreter per batch size).
RUN_SCRIPT = Path(__file__).resolve().with_name("run.py")


def _status_kib() -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    return out


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux: `5` > /proc/self/clear_refs); return the heap
    (anonymous) RSS now, in MiB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_kib().get("RssAnon", 0) / 1024


def peak_heap_rss() -> float:
    """Peak heap RSS in MiB since the last reset: the peak RSS minus the file-backed pages.

    Library code paged in during the run (a new oneDNN kernel, say) is file RSS, not the
    run's memory; file pages are read at the end, when they are at their largest."""
    st = _status_kib()
    peak = st.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return (peak - st.get("RssFile", 0) - st.get("RssShmem", 0)) / 1024


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: a warm-up batch of 2, then an adv-train epoch of one batch of size b;
    prints the peak memory above the post-warm-up baseline as JSON."""
    device = resolve_device(args.device)
    b, arch, k = args.memory_child, args.arch, args.adv_steps
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    data = ImageData("random", list(CLASSES), x, y, x[:16], y[:16], mean=[0.5] * 3, std=[0.25] * 3)

    def train(batch: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            adv_fit(
                TrainOptions(arch=arch, epochs=1, batch_size=batch, n_train=batch, lr=0.01, augment="device",
                             out=f"{tmp}/m.safetensors"),
                AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=EPS, attack="pgd", steps=k)),
                data, device,
            )

    train(2)  # warm-up: lazy imports, kernel code and allocator pools are not the batch's memory
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_mib = reset_peak_rss()
    train(b)
    peak_mib = peak_heap_rss()
    result = {"batch": b, "heap_peak_mib": peak_mib, "heap_delta_mib": peak_mib - base_mib}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(result))


def run(ctx: Context) -> None:
    s = ctx.sizes
    arch, k = s.archs[0], s.adv_steps
    info(f"memory: adv-train {arch} PGD-{k}, batch sizes {', '.join(map(str, s.mem_batches))} (a process each)")
    rows = []
    for b in s.mem_batches:
        cmd = [sys.executable, str(RUN_SCRIPT), "--memory-child", str(b), "--arch", arch,
               "--adv-steps", str(k), "--device", str(ctx.device), "--threads", str(ctx.args.threads),
               "--malloc", ctx.args.malloc]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for batch {b} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    key = "cuda_peak_mib" if "cuda_peak_mib" in rows[0] else "heap_delta_mib"
    what = "CUDA peak allocated" if key == "cuda_peak_mib" else "peak heap RSS growth during the batch"
    for row in rows:
        per = f"; {row[key] / row['batch']:.2f} MiB per example" if row[key] > 0 else ""
        emit(ctx, Ratio(
            "memory", f"[6] adv-train peak memory, batch {row['batch']} (MiB)", row[key],
            detail=f"{what}; process peak heap {row['heap_peak_mib']:.0f} MiB{per}",
        ))
