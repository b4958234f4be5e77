"""GPU tests (`pytest -m gpu`): opt-in, and skipped, with the reason, where CUDA is not available.

The model: `LEAP_GPU_MODEL=DIR` (a prepared checkpoint, e.g. from `python -m orchestrator.models
random:qwen2.5-1.5b --out DIR`, or any spec `model.path` takes, e.g. `random:qwen2.5-1.5b`), else
`random:tiny` (random weights, the tiny tokenizer), built once into the model cache. Each engine takes at most `GPU_MEMORY` of the GPU's memory, so that
one left behind by an earlier test does not keep the next from starting.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from orchestrator.models import resolve_model

GPU_MEMORY = 0.5  # engine.gpu_memory_utilization of every engine these tests start


def why_no_cuda() -> str | None:
    """None when torch sees a CUDA device and vLLM's platform is CUDA, else why not."""
    # torch and vLLM are heavy, optional imports: only when a GPU test is selected
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"CUDA is not available (torch {torch.__version__}: torch.cuda.is_available() is False)"
    try:
        from vllm.platforms import current_platform
    except ImportError as exc:
        return f"vLLM does not import: {exc}"
    if not current_platform.is_cuda():
        return f"vLLM's platform is {type(current_platform).__name__}, not CUDA"
    return None


@pytest.fixture(scope="session", autouse=True)
def cuda() -> None:
    why = why_no_cuda()
    if why:
        pytest.skip(f"needs a CUDA GPU: {why}")
    if importlib.util.find_spec("flashinfer") is None:
        # vLLM's sampler imports flashinfer on CUDA unless told not to (seen with vLLM 0.24);
        # the CLI runs and their Ray workers inherit this
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")


@pytest.fixture(scope="module")
def model_dir() -> str:
    return resolve_model(os.environ.get("LEAP_GPU_MODEL") or "random:tiny")
