"""LeaP orchestrator: Learning-from-Peers inference for reasoning models on Ray and vLLM.

`orchestrator.core` is the pure algorithm (no ray, vllm or torch); `orchestrator.engines` holds
the engine seam; the rest wires them together on a Ray cluster. See README.md.
"""

__version__ = "0.1.0"
