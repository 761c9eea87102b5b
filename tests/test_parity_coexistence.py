"""torch and TensorFlow in one process: the triton-before-TensorFlow workaround holds."""

from __future__ import annotations

import subprocess
import sys


def test_torch_optimizer_after_keras_adapter_import_does_not_crash() -> None:
    """Regression: the first torch optimizer imports triton; after TensorFlow that segfaulted."""
    code = (
        "import os; os.environ['KERAS_BACKEND'] = 'tensorflow'\n"
        "import pdmp.backends.keras, torch\n"
        "torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
