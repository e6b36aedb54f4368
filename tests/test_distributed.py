"""torchrun/DDP on CPU with the gloo backend: 2-rank training, disjoint shards, per-rank seeds, and a
streamed folder's epoch on 2 ranks against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from advcli.data.loaders import train_batches
from advcli.models.checkpoint import load_checkpoint, read_metadata

CPU = torch.device("cpu")


def _torchrun(args: list[str], cwd, target: tuple[str, ...] = ("-m", "advcli"),
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`target` (advcli, or a script) with `args` on 2 ranks (gloo: the device is the CPU)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", ADVCLI_NO_PROGRESS="1", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *target, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# One epoch of streamed training batches on this process's rank (all ranks, under torchrun), as
# the training loop asks for them: (item, sha256 of its augmented pixels) in the order yielded,
# for the whole epoch and for a resume that skips the first SKIP batches.
STREAMED_EPOCH = """
import hashlib, json, sys
import torch
from advcli import distributed
from advcli.data import load_dataset
from advcli.data.loaders import train_batches

root, out, skip = sys.argv[1], sys.argv[2], int(sys.argv[3])
info, device = distributed.setup(torch.device("cpu"))
d = load_dataset(f"folder:{root}", stream="on", image_size=16)
seen = {}
for k in (0, skip):
    seen[k] = [[i, hashlib.sha256(img.numpy().tobytes()).hexdigest()]
               for xb, yb in train_batches(d.train_x, torch.arange(len(d.train_y)), augment="fixed",
                                           batch_size=BATCH, workers=1, seed=5, epoch=1, device=device,
                                           rank=info.rank, world_size=info.world_size, skip=k)
               for img, i in zip(xb, yb.tolist())]
with open(f"{out}.{info.rank}.json", "w") as fh:
    json.dump({"world_size": info.world_size, "epoch": seen[0], "resumed": seen[skip]}, fh)
distributed.cleanup()
"""


@pytest.mark.parametrize("augment", ["device", "fixed"])
def test_ranks_see_disjoint_data_and_different_augmentation(augment):
    n = 200
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[:, :, :, :16] = 255  # asymmetric so flips and crops show
    ids = torch.arange(n)  # labels carry the example ids through the pipeline
    got, imgs = {}, {}
    for rank in (0, 1):
        batches = list(train_batches(x, ids, augment=augment, batch_size=32, workers=0, seed=0, epoch=3,
                                     device=CPU, rank=rank, world_size=2))
        got[rank] = torch.cat([b[1] for b in batches])
        imgs[rank] = torch.cat([b[0] for b in batches])
    assert len(got[0]) == len(got[1]) == n // 2
    assert not set(got[0].tolist()) & set(got[1].tolist())  # disjoint shards
    assert len(set(got[0].tolist()) | set(got[1].tolist())) == n
    # Same images everywhere, so any difference is the augmentation stream: ranks must differ.
    assert not torch.equal(imgs[0], imgs[1])
    # A different epoch reshuffles the shards.
    nxt = torch.cat([b[1] for b in train_batches(x, ids, augment=augment, batch_size=32, workers=0, seed=0, epoch=4,
                                                 device=CPU, rank=0, world_size=2)])
    assert set(nxt.tolist()) != set(got[0].tolist())


@pytest.mark.slow
def test_two_rank_training_under_torchrun_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ddp.safetensors"
    r = _torchrun(["train", "--epochs", "1", "--n-train", "512", "--device", "cpu", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = read_metadata(out)
    assert meta["distributed"] == {"world_size": 2, "global_batch_size": 256}
    ck = load_checkpoint(out)
    with torch.no_grad():
        assert ck.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # One rank wrote one table on stdout.
    assert r.stdout.count("advcli train") == 1
    # Resume under torchrun continues from the saved state.
    r2 = _torchrun(["train", "--epochs", "2", "--n-train", "512", "--device", "cpu", "--out", str(out), "--resume"], tmp_path)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert read_metadata(out)["metrics"]["epochs_run"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("attack", [["--autoattack", "--aa-version", "custom", "--aa-attacks", "apgd-ce"],
                                    ["--fast-worst-case"]], ids=["autoattack", "fast-worst-case"])
def test_sharded_eval_equals_single_process_eval(tmp_path, tiny_ckpt, attack):
    from advcli.formats.results import load_results

    args = ["eval", str(tiny_ckpt), "--num-examples", "48", "--eps", "2/255", "--pgd-steps", "3", "--batch-size", "16",
            *attack, "--device", "cpu", "-q"]
    single = subprocess.run([sys.executable, "-m", "advcli", *args, "-o", str(tmp_path / "one.yaml")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            # as many threads as each rank has: bit-identity needs the same kernels
                            env=dict(os.environ, OMP_NUM_THREADS="1", ADVCLI_NO_PROGRESS="1"))
    assert single.returncode == 0, single.stderr[-2000:]
    r = _torchrun([*args, "-o", str(tmp_path / "two.yaml")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = load_results(tmp_path / "one.yaml"), load_results(tmp_path / "two.yaml")
    assert [e.attack for e in one.entries] == [e.attack for e in two.entries]
    for a, b in zip(one.entries, two.entries, strict=True):
        assert a.accuracy == b.accuracy and (a.flags == b.flags).all(), a.attack
    assert any(0 < e.accuracy < 1 for e in one.entries if e.attack == "pgd")  # a non-trivial case


@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0)])
def test_only_rank_0_prints_the_error_line_every_rank_exits_with_its_code(tmp_path, rank, lines) -> None:
    from typer.testing import CliRunner

    from advcli.cli.app import app

    # A usage error found before any process group is joined: every rank meets it.
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2"}
    r = CliRunner().invoke(app, ["attack", str(tmp_path / "m.safetensors"), "--attack", "deepfool"], env=env)
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == lines, r.stderr
    assert lines == 0 or "unknown attack 'deepfool'" in r.stderr


@pytest.mark.slow
def test_trades_with_awp_under_torchrun(tmp_path):
    """TRADES' two outer forward passes through DDP and AWP's rank-summed ascent gradient run under
    torchrun, and the checkpoint records the objective."""
    out = tmp_path / "trades.safetensors"
    r = _torchrun(["adv-train", "--objective", "trades", "--awp", "0.01", "--awp-warmup", "0", "--eps", "8/255",
                   "--steps", "1", "--epochs", "1", "--n-train", "256", "--batch-size", "64", "--device", "cpu",
                   "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = read_metadata(out)
    assert meta["distributed"]["world_size"] == 2
    assert (meta["threat_model"]["objective"], meta["threat_model"]["awp_gamma"]) == ("trades", 0.01)
    assert meta["history"][0]["train_kl"] > 0


def test_two_ranks_stream_the_single_process_epoch_and_resume_it(tmp_path):
    """A streamed folder under torchrun (2 ranks, gloo) against one process: each rank yields its
    strided share of the one epoch order (the DistributedSampler rule), pixel for pixel the
    single process's items, the remainder dropped; a mid-epoch resume yields the rest of it."""
    from tests.data.stream_trees import imagenet_tree

    batch, skip = 2, 2
    root = imagenet_tree(tmp_path / "imagenet", n_train=5)  # 15 training images: one left over
    script = tmp_path / "streamed_epoch.py"
    script.write_text(STREAMED_EPOCH.replace("BATCH", str(batch)))
    env = {"ADVCLI_CACHE": str(tmp_path / "cache")}
    single = subprocess.run([sys.executable, str(script), str(root), str(tmp_path / "one"), str(skip)],
                            env=dict(os.environ, OMP_NUM_THREADS="1", **env), capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    r = _torchrun([str(root), str(tmp_path / "two"), str(skip)], tmp_path, target=(str(script),), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    one = json.loads((tmp_path / "one.0.json").read_text())
    ranks = [json.loads((tmp_path / f"two.{k}.json").read_text()) for k in (0, 1)]
    assert one["world_size"] == 1 and [d["world_size"] for d in ranks] == [2, 2]
    order = [tuple(e) for e in one["epoch"]]
    assert sorted(i for i, _ in order) == list(range(15))
    kept = order[: 15 - 15 % 2]
    for rank, d in enumerate(ranks):
        epoch = [tuple(e) for e in d["epoch"]]
        assert epoch == kept[rank::2]  # same items, same order, same pixels
        assert [tuple(e) for e in d["resumed"]] == epoch[skip * batch :]
    assert [tuple(e) for e in one["resumed"]] == order[skip * batch :]
