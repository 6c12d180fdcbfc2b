"""The trainer: :func:`~lcssm.training.loop.train` and its parts, one module each.

* :mod:`~lcssm.training.loop` — the training loop (EMA, warmup, clipping, bf16 autocast, NaN guard, DDP);
* :mod:`~lcssm.training.config` — :class:`~lcssm.training.config.TrainConfig`, its settings;
* :mod:`~lcssm.training.batches` — pure batch functions of ``(step, rank, world_size)`` and the step seeds;
* :mod:`~lcssm.training.blocks` — optimiser, EMA and gradient-norm building blocks;
* :mod:`~lcssm.training.resume` — resuming a run, and the check that a resumed run is the same experiment;
* :mod:`~lcssm.training.stop` — signals: finish the step, checkpoint, exit 130/143;
* :mod:`~lcssm.training.logs` — loss.csv, metrics.jsonl, diagnostics, the progress bar;
* :mod:`~lcssm.training.checkpoint` — checkpoint files (atomic, hashed, loaded with ``weights_only=True``).
"""

from lcssm.training.config import TrainConfig
from lcssm.training.loop import train

__all__ = ["TrainConfig", "train"]
