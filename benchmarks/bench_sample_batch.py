#!/usr/bin/env python
"""Milliseconds per image of one network evaluation at sampling time (no autograd) for several batch sizes, so that a
sampling batch size can be chosen on this machine. Every candidate evaluates the same images (``--images`` of them,
in chunks of its batch size); candidates are interleaved round-robin in one process and each ratio is the median
of per-round ratios against the largest batch.

    python benchmarks/bench_sample_batch.py [--preset mnist] [--batches 25,50,100,250,500] [--images 500]
        [--repeats 5] [--device auto] [--threads 1]

The network is the preset's, at its full width and resolution, with its initial weights (the cost of a
convolution does not depend on the weight values). On a CPU, large batches can be slower per image: the
activations of one evaluation no longer fit the caches, and buffers of hundreds of MB are returned to the system
and faulted in again on every call (system time, printed beside the wall time).
"""

from __future__ import annotations

import argparse
import resource

import torch

from lcssm.bench.timing import paired_ratio, time_round_robin
from lcssm.device import resolve_device
from lcssm.models import build_model, resolve_model_config


def _evaluate(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, batch: int):
    @torch.no_grad()
    def run() -> None:
        for xb, tb in zip(x.split(batch), t.split(batch)):
            net(xb, tb, 0.01 + tb)

    return run


def _system_seconds(run, calls: int) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(calls):
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist", help="model preset (default: mnist)")
    p.add_argument("--batches", default="25,50,100,250,500", help="comma-separated batch sizes")
    p.add_argument("--images", type=int, default=500, help="images per timed call (default: 500)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per batch size (default: 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batches = sorted({int(b) for b in args.batches.split(",")})
    cfg = resolve_model_config(args.preset)
    net = build_model(cfg).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    t = torch.rand(args.images, generator=g).to(device)
    runs = {str(b): _evaluate(net, x, t, b) for b in batches}
    times = time_round_robin(runs, repeats=args.repeats, warmup=1, device=device)
    ref = str(batches[-1])
    print(f"{args.preset}: {sum(p.numel() for p in net.parameters()):,} parameters, {cfg.image_size}² images; "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.images} images "
          f"per call, {args.repeats} rounds")
    print(f"| batch | ms / image | system ms / image | time per image / batch {ref}'s [quartiles] |")
    print("|---|---|---|---|")
    for b in batches:
        k = str(b)
        ms = 1000 * times[k].median / args.images
        sys_ms = 1000 * _system_seconds(runs[k], 1) / args.images if device.type == "cpu" else float("nan")
        print(f"| {b} | {ms:.2f} | {sys_ms:.2f} | {paired_ratio(times[k], times[ref]).fmt()} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
