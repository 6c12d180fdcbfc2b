"""Digests of a tree of lcssm runs, one line each: every checkpoint's tensors (weights, EMA, optimizer state, in a
fixed key order) and every loss log and sample array; used by scripts/bit_identity.sh.

    python scripts/run_digests.py DIR
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import torch

_STATE_KEYS = ("model", "ema", "optimizer", "state_dict", "ema_state")


def _feed(h: Any, obj: object, key: str = "") -> None:
    """Hash every tensor in a nested checkpoint structure with its key path."""
    if isinstance(obj, torch.Tensor):
        h.update(key.encode())
        h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _feed(h, obj[k], f"{key}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _feed(h, v, f"{key}[{i}]")


def digest(path: Path) -> str | None:
    """The digest of a checkpoint's tensors or of a log / sample file's bytes; None for any other file."""
    if path.suffix == ".pt" and "checkpoints" in path.parts:
        state = torch.load(path, weights_only=True, map_location="cpu")
        h = hashlib.sha256()
        _feed(h, {k: v for k, v in state.items() if k in _STATE_KEYS} or state)
        return h.hexdigest()[:16]
    if path.suffix in (".npy", ".npz") or path.name == "loss.csv":
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return None


def main(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        d = digest(path)
        if d is not None:
            print(path.relative_to(root), d)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
