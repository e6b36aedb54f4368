"""How strong is each objective's training attack, counted in misclassified examples? Not a speed
benchmark: a measurement the README's objectives section cites (why TRADES trails PGD-AT on the
quick recipe's small models).

For each checkpoint, on the first N training images in advcli's stratified order (eval mode,
fp32, L-inf eps), the share of examples correct clean and still correct under:
- TRADES' KL attack with the recipe's 3 steps of 2.5 * eps / 3 (`kl-3`), and with the reference
  script's 10 steps of 2/255 (`kl-10`);
- PGD on the cross-entropy with 3 steps (PGD-AT's training attack) and 10 steps.

    python benchmarks/inner_attack_strength.py CKPT.safetensors [...] --dataset folder:../shared/data/cifar10-jpeg.zip

Each attack draws its random start from its own generator seeded 0, so a run repeats exactly on
one machine.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    from advcli.attacks.pgd import PGD
    from advcli.attacks.trades import TradesKL
    from advcli.config import parse_eps
    from advcli.data import to_float
    from advcli.data.subsets import Subset
    from advcli.models.user import load_target

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints to measure")
    p.add_argument("--dataset", help="dataset (default: the checkpoint's)")
    p.add_argument("--n", type=int, default=1000, help="first N training images in advcli's stratified order")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    eps = parse_eps(args.eps).value
    attacks = {"kl-3": TradesKL("linf", eps, 3), "kl-10": TradesKL("linf", eps, 10, 2 / 255),
               "pgd-3": PGD("linf", eps, 3), "pgd-10": PGD("linf", eps, 10)}
    print("| model | n | clean % | " + " | ".join(f"{name} %" for name in attacks) + " |")
    print("|---" * (3 + len(attacks)) + "|")
    for ckpt in args.checkpoints:
        target = load_target(ckpt, model=None, wrap=None, device=device)
        data, idx, _ = target.examples(dataset=args.dataset, data_dir=None, split="train", n=args.n, seed=0,
                                       subset=Subset.stratified, device=device)
        xs, ys = data.split("train")
        x, y = to_float(xs[idx]), ys[idx].long()
        model = target.model.eval()
        batches = range(0, len(y), args.batch_size)
        with torch.no_grad():
            clean = torch.cat([model(x[i:i + args.batch_size]).argmax(1) == y[i:i + args.batch_size] for i in batches])
        cells = [f"{100 * clean.float().mean():.1f}"]
        for attack in attacks.values():
            gen = torch.Generator().manual_seed(0)
            fooled = torch.cat([attack.run(model, x[i:i + args.batch_size], y[i:i + args.batch_size], gen).fooled
                                for i in batches])
            cells.append(f"{100 * (clean & ~fooled).float().mean():.1f}")
        print(f"| {target.label(None)} | {len(y)} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
