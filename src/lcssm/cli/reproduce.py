"""``lcssm reproduce NAME --out DIR``: regenerate one of the paper's tables/figures as a Markdown report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from lcssm.reproduce import TARGETS

    targets = "\n".join(f"  {t.name:<12} {t.description}" for t in TARGETS.values())
    p = sub.add_parser(
        "reproduce",
        help=f"reproduce a table or figure of the paper ({', '.join(TARGETS)}, all)",
        description="Run a reproduction target and write DIR/REPORT.md (tables, PNG figures, the machine, the "
        "seed and this command) and DIR/results.json. 'all' runs every target into DIR/NAME and writes "
        f"DIR/README.md with the time each took.\n\ntargets:\n{targets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=[*TARGETS, "all"], metavar="NAME", help="target: %(choices)s")
    p.add_argument("--out", required=True, help="output directory")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick",
                      help="a few minutes per target on 2 CPU cores (default: the fuller setting)")
    size.add_argument("--smoke", dest="size", action="store_const", const="smoke",
                      help="seconds per target; checks the pipeline, the numbers mean nothing")
    p.set_defaults(size="full")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice; reported)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help="progress bars of training and sampling (default: off, the reports are the output)")
    p.set_defaults(func=run)


def canonical_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, every setting spelled out (what the report prints)."""
    import shlex

    parts = ["lcssm", "reproduce", args.name, "--out", shlex.quote(str(args.out))]
    if args.size != "full":
        parts.append(f"--{args.size}")
    parts += ["--seed", str(args.seed)]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.device != "auto":
        parts += ["--device", shlex.quote(args.device)]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from lcssm.errors import ConfigError
    from lcssm.reproduce import run_all, run_target

    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    command = canonical_command(args)
    if args.name == "all":
        status = run_all(args.out, size=args.size, seed=args.seed, device=args.device, command=command,
                         progress=args.progress)
        print(f"wrote {args.out}/README.md")
        return 0 if all(s["status"] == "ok" or s["status"].startswith("unavailable") for s in status.values()) else 1
    report = run_target(args.name, args.out, size=args.size, seed=args.seed, device=args.device, command=command,
                        progress=args.progress)
    print(f"wrote {report.out_dir / 'REPORT.md'}")
    return 0
