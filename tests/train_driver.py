"""Train a small EnergyMLP through lcssm.training.loop.train from the command line (for the subprocess tests: SIGKILL
and resume, NaN stop, torchrun). Exits like the lcssm CLI: 2 on bad input, the error's exit_code otherwise
(3 for a non-finite stop)."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--log-every", type=int, default=3)
    p.add_argument("--ema", type=float, default=0.9)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-nonfinite", type=int, default=3)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--objective", choices=("dsm", "exact_sm"), default="dsm")
    p.add_argument("--data", choices=("sampler", "tensor"), default="sampler")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--nan-at-step", type=int, default=0,
                   help="1-based step from which every batch is NaN (0 = never)")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step (rank 0)")
    p.add_argument("--dump-params", action="store_true", help="each rank writes rank{r}_params.pt at the end")
    p.add_argument("--ready-at", type=int, default=0, help="rank 0 creates OUT/ready after this step (0 = never)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    from lcssm.data.toy import get_toy
    from lcssm.device import make_generator
    from lcssm.distributed import env_info
    from lcssm.errors import LcssmError
    from lcssm.models import EnergyMLP
    from lcssm.objectives import dsm, exact_sm
    from lcssm.training.batches import sampler_batches, tensor_batches
    from lcssm.training.config import TrainConfig
    from lcssm.training.loop import PeriodicCallback, train

    torch.manual_seed(1234)  # same initial weights in every run and on every rank
    model = EnergyMLP(dim=2, hidden=args.hidden)
    if args.data == "tensor":
        data = get_toy("checkerboard")(500, make_generator(99))
        batches = tensor_batches(data, args.batch_size, args.seed)
    else:
        batches = sampler_batches(get_toy("checkerboard"), args.batch_size, args.seed)

    def batch_fn(step: int, rank: int, world: int) -> torch.Tensor:
        x = batches(step, rank, world)
        if args.nan_at_step and step + 1 >= args.nan_at_step:
            x = torch.full_like(x, float("nan"))
        return x

    def loss_fn(m, x, g):
        if args.objective == "exact_sm":
            return exact_sm(m, x)
        loss = dsm(m, x, 0.3, generator=g)
        return loss, {"sigma": torch.full_like(loss, 0.3)}

    def pause(step: int, ema) -> None:
        time.sleep(args.sleep)
        if args.ready_at and step == args.ready_at:
            open(f"{args.out}/ready", "w").close()

    callbacks = [PeriodicCallback(1, pause)] if args.sleep or args.ready_at else []
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema,
                      warmup=args.warmup, grad_clip=1.0, ckpt_every=args.ckpt_every, keep_last=args.keep_last,
                      log_every=args.log_every, max_nonfinite=args.max_nonfinite, seed=args.seed, device="cpu")
    try:
        result = train(model, loss_fn, batch_fn, cfg, args.out, resume=args.resume,
                       run_config={"driver": "train_driver", "objective": args.objective}, callbacks=callbacks,
                       progress=False)
    except LcssmError as e:
        print(f"train_driver: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    if args.dump_params:
        rank = env_info().rank
        torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, f"{args.out}/rank{rank}_params.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
