"""Suite-wide settings: one torch thread per xdist worker (two workers on two cores do not oversubscribe)."""

import torch

torch.set_num_threads(1)
