"""Train the digits feature network shipped as ``src/lcssm/assets/digits_classifier.pt``.

Reproducible: fixed seed, CPU, one thread, explicit generators. Trains on lcssm's fixed digits train
split (1437 images) with random 1-pixel shifts, reports accuracy on the fixed test split (360) and
writes the float32 state dict. Takes well under a minute on one core.

    python scripts/train_digits_classifier.py [--epochs 60] [--seed 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lcssm.data.digits import load_digits
from lcssm.device import make_generator
from lcssm.metrics.features import DigitsClassifier

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "lcssm" / "assets" / "digits_classifier.pt"


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in each axis, filling with background (-1)."""
    n, _, h, w = x.shape
    k = 2 * max_shift + 1
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, k, (n,), generator=generator)
    dx = torch.randint(0, k, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    _, logits = model(x)
    return float((logits.argmax(1) == y).float().mean())


def train(epochs: int, seed: int, batch_size: int = 64, lr: float = 2e-3) -> DigitsClassifier:
    torch.manual_seed(seed)  # parameter init
    g = make_generator(seed)
    x, y = load_digits("train", return_labels=True)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            _, logits = model(random_shift(x[idx], g))
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  train acc {accuracy(model, x, y):.4f}")
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)  # bitwise reproducible reductions
    t0 = time.perf_counter()
    model = train(args.epochs, args.seed)
    x_test, y_test = load_digits("test", return_labels=True)
    acc = accuracy(model, x_test, y_test)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(f"test accuracy {acc:.4f} ({round(acc * len(y_test))}/{len(y_test)})")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
