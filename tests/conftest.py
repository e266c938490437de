import pytest
import torch

import clear_native

HAS_CUDA = torch.cuda.is_available() and clear_native.build_info()["cuda"]
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of clear_native")

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
