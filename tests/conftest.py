"""Shared test settings.

The oracle comparisons run thousands of tiny torch ops; one thread is faster for those than
torch's default pool (which also fights pytest-xdist-style parallel jobs for the 2 cores).
"""

import torch

torch.set_num_threads(1)

# timm imports torchvision at import time (FrozenBatchNorm2d, InterpolationMode); where no
# torchvision is installed (its wheels here are CUDA-linked), tests/_stubs provides those names.
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

if importlib.util.find_spec("torchvision") is None:
    sys.path.insert(0, str(pathlib.Path(__file__).parent / "_stubs"))
