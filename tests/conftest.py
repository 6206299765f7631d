"""Shared test set-up.

`make unit` runs two pytest workers on a 2-core machine: one torch thread per worker avoids the
oversubscription that makes small tensor ops stall waiting for a busy core.
"""

import torch

torch.set_num_threads(1)
