"""Shared test settings.

The oracle comparisons run thousands of tiny torch ops; one thread is faster for those than
torch's default pool (which also fights pytest-xdist-style parallel jobs for the 2 cores).
"""

import torch

torch.set_num_threads(1)
