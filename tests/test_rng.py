"""Random streams (advcli.rng): one stream per purpose, and no seed shared by two purposes."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

import advcli.rng as rng
from advcli.config import Norm, parse_eps
from advcli.data import load_dataset
from advcli.rng import Stream, stream_seed
from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
from advcli.train.loop import TrainOptions

CPU = torch.device("cpu")


def _grid(seeds=range(3), epochs=range(4), ranks=range(2)) -> dict[int, tuple[int, int, int, Stream]]:
    return {stream_seed(s, e, r, p): (s, e, r, p) for s in seeds for e in epochs for r in ranks for p in Stream}


def test_every_seed_epoch_rank_and_purpose_has_its_own_seed():
    table = _grid()
    n_keys = 3 * 4 * 2 * len(Stream)
    assert len(table) == n_keys
    # NumPy's legacy seeding takes 32 bits: those must not collide either.
    assert len({v % 2**32 for v in table}) == n_keys
    # `seed + 1` offsets made seed 0's attack stream equal to seed 1's data stream.
    assert stream_seed(0, 0, 0, Stream.train_attack) != stream_seed(1, 0, 0, Stream.shuffle)
    # eval's per-batch PGD starts keep their historical seeds (SeedSequence([seed, batch, 0])).
    legacy = int(np.random.SeedSequence([5, 3, 0]).generate_state(2, np.uint64)[0] >> 1)
    assert stream_seed(5, 3, 0, Stream.eval_attack) == legacy


class _Recorder:
    """Every seed given to torch (global and Generator), NumPy's global state and `random`,
    except the dataset's own selections (data/datasets.py and data/subsets.py: the fixed --n-train
    subset and the validation split are chosen once per dataset, not drawn by the run)."""

    def __init__(self, monkeypatch) -> None:
        self.values: list[int] = []
        values = self.values

        def record(seed) -> None:
            caller = sys._getframe(2).f_code.co_filename
            if not caller.endswith((os.path.join("data", "datasets.py"), os.path.join("data", "subsets.py"))):
                values.append(int(seed))

        class RecordingGenerator(torch.Generator):
            def manual_seed(self, seed):
                record(seed)
                return super().manual_seed(seed)

        for owner, name in ((torch, "manual_seed"), (np.random, "seed"), (random, "seed")):
            real = getattr(owner, name)

            def spy(seed=None, _real=real):
                record(seed)
                return _real(seed)

            monkeypatch.setattr(owner, name, spy)
        monkeypatch.setattr(torch, "Generator", RecordingGenerator)


def test_an_adversarial_training_run_seeds_every_purpose_from_its_own_stream(tmp_path, monkeypatch):
    data = load_dataset("synthetic", seed=0, val_split=100)
    rec = _Recorder(monkeypatch)
    opts = TrainOptions(arch="tiny-cnn", epochs=2, batch_size=64, lr=0.05, augment="device", n_train=128,
                        seed=0, out=str(tmp_path / "m.safetensors"))
    threat = ThreatModel(norm=Norm.linf, eps=parse_eps("8/255"), attack="fgsm-rs")
    # fgsm-rs: random starts in training and the overfitting check on; --val-every 1: the validation PGD.
    adv_fit(opts, AdvOptions(threat=threat, val_every=1, val_n=50), data, CPU)

    table = _grid(seeds=[0], epochs=range(2), ranks=[0])
    table.update({v % 2**32: k for v, k in list(table.items())})
    strays = [v for v in rec.values if v not in table]
    assert not strays, f"seeds that no advcli.rng stream made: {strays}"
    per_epoch = {Stream.shuffle, Stream.augment, Stream.train_attack}
    once = {Stream.init, Stream.numpy_global, Stream.python_global, Stream.val_attack, Stream.overfit_attack}
    expected = {(0, e, 0, p) for e in range(2) for p in per_epoch} | {(0, 0, 0, p) for p in once}
    # Each purpose got its own key, so its own seed: 11 streams, 11 distinct seeds.
    assert {table[v] for v in rec.values} == expected
    assert len(set(rec.values)) == len(expected)


def test_stream_generator_is_the_stream_seed():
    a = rng.stream_generator(7, 2, 1, Stream.augment)
    b = torch.Generator().manual_seed(stream_seed(7, 2, 1, Stream.augment))
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))


def test_the_dataset_selections_draw_from_their_own_streams():
    from advcli.data import stratified_order
    from advcli.data.subsets import train_subset

    full = load_dataset("synthetic", seed=3)
    held = load_dataset("synthetic", seed=3, val_split=100)
    val = stratified_order(full.train_y, stream_seed(3, 0, 0, Stream.val_split))[:100]
    assert torch.equal(held.val_x, full.train_x[val])
    assert not torch.equal(val, stratified_order(full.train_y, 3 + 7919)[:100])  # the old raw seed
    keep = train_subset(full.train_y, 128)
    assert torch.equal(keep, stratified_order(full.train_y, stream_seed(0, 0, 0, Stream.train_subset))[:128].sort().values)
    # The raw seed 0 was the stratified test subset's order too.
    assert not torch.equal(keep, stratified_order(full.train_y, 0)[:128].sort().values)


def test_advcli_attack_draws_its_random_starts_from_the_attack_stream(monkeypatch):
    import advcli.attacks.run as stage
    from advcli.attacks import AttackSpec, build_attack
    from advcli.models import build_model

    data = load_dataset("synthetic", seed=0)
    model = build_model("tiny-cnn", data.num_classes, data.mean, data.std).eval()
    seen: list[torch.Tensor] = []

    def spied(spec):
        attack = build_attack(spec)
        run = attack.run

        def recording(model, x, y, generator=None):
            seen.append(generator.get_state())
            return run(model, x, y, generator)

        attack.run = recording
        return attack

    monkeypatch.setattr(stage, "build_attack", spied)
    spec = AttackSpec(name="fgsm-rs", norm=Norm.linf, eps=parse_eps("8/255"))
    stage.run_attack(model, data.test_x[:4], data.test_y[:4], spec, seed=5, batch_size=4)
    assert torch.equal(seen[0], rng.stream_generator(5, 0, 0, Stream.attack).get_state())
    assert not torch.equal(seen[0], torch.Generator().manual_seed(5).get_state())
