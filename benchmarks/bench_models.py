#!/usr/bin/env python
"""Forward + backward time per step and autograd memory of every image preset's network at a reduced width, with
and without FIR resampling (score_sde's [1, 3, 3, 1] kernel, ``UNetConfig.fir``), so that the cost of FIR is known.
Steps of the two variants are interleaved round-robin in one process; the ratio is the median of per-round ratios.

    python benchmarks/bench_models.py [--nf 16] [--batch 8] [--repeats 10] [--device auto] [--threads 1]

Prints one Markdown table: preset, parameters at full size, FIR in the preset, the width and resolution measured,
ms per step with FIR off / on, the FIR / no-FIR ratio [quartiles], and the autograd graph's MiB for each. On CUDA
it also reports peak allocated memory.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from lcssm.bench.timing import cuda_peak_memory, graph_memory, paired_ratio, time_round_robin
from lcssm.device import resolve_device
from lcssm.models import MODEL_PRESETS, UNetConfig, build_model, count_preset_parameters, resolve_model_config


def _step(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor):
    def run() -> None:
        net.zero_grad(set_to_none=True)
        sigma = 0.01 + t  # a positive noise level for the networks that take one
        net(x, t, sigma).square().mean().backward()

    return run


def measure(name: str, nf: int, batch: int, repeats: int, device: torch.device) -> dict:
    """The row of preset ``name``: its network at width ``nf`` (and at most 64² pixels), FIR off and on."""
    preset = MODEL_PRESETS[name]
    size = min(preset.model.image_size, 64)
    base = resolve_model_config(name, nf=nf, image_size=size)
    variants = {"off": base, "on": base}
    if isinstance(base, UNetConfig):
        variants = {"off": dataclasses.replace(base, fir=False), "on": dataclasses.replace(base, fir=True)}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, base.in_channels, size, size, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    nets = {k: build_model(cfg).to(device) for k, cfg in variants.items()}
    steps = {k: _step(net, x, t) for k, net in nets.items()}
    times = time_round_robin(steps, repeats=repeats, device=device)
    memory = {k: graph_memory(lambda net=net: net(x, t, 0.01 + t).square().mean()) for k, net in nets.items()}
    row = {"preset": name, "parameters": count_preset_parameters(name),
           "fir_in_preset": bool(getattr(preset.model, "fir", False)), "nf": nf, "resolution": size,
           "off": times["off"], "on": times["on"], "ratio": paired_ratio(times["on"], times["off"]),
           "mib_off": memory["off"] / 2**20, "mib_on": memory["on"] / 2**20}
    if device.type == "cuda":
        row["cuda_peak_mib"] = {k: (cuda_peak_memory(s, device) or 0) / 2**20 for k, s in steps.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nf", type=int, default=16, help="base width of every network (default: 16)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per variant (default: 10)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--presets", default=",".join(MODEL_PRESETS), help="comma-separated presets (default: all)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}")
    print("| preset | parameters (full size) | FIR in preset | nf, resolution | ms/step FIR off | ms/step FIR on | "
          "FIR on / off | graph MiB off / on |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.presets.split(","):
        r = measure(name, args.nf, args.batch, args.repeats, device)
        print(f"| {name} | {r['parameters']:,} | {'yes' if r['fir_in_preset'] else 'no'} | {r['nf']}, "
              f"{r['resolution']}² | {r['off'].ms()} | {r['on'].ms()} | {r['ratio'].fmt()} | "
              f"{r['mib_off']:.1f} / {r['mib_on']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
