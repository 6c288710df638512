import os
import sys
from pathlib import Path

import torch

# Without a GPU, Triton kernels run through Triton's CPU interpreter. This must be set
# before any kernel module is imported, so it lives here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))
