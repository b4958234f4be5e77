"""Engines: the replica actors, each in its own Ray worker process (on its GPUs, or CPUs).

`protocol.Replica` is the seam the coordinator calls; `vllm_replica.VLLMReplica` hosts a real
vLLM engine (vLLM and torch are imported inside the replica's process when it starts) and
`vllm_args` checks and builds its engine arguments; `fake.FakeReplica` is a deterministic
stand-in that can take an engine's time (`batching`: continuous batching over a KV cache, from a
`profile.Profile`; `counted`: token counts without text, for plans); `tokenizer` loads the
model's tokenizer and renders prompts (used by the coordinator and the driver too); `local` runs
replicas in-process for simulations; `profile` reads, scales and finds engine profiles; `busy`
splits a replica's busy time among sweep points; `logprobs` reduces vLLM's top-k logprobs to one
confidence a token inside the replica.

May import: `orchestrator.core`, `orchestrator.errors`, `orchestrator.telemetry`.
"""

import socket
import sys


def node_id() -> str:
    """The Ray node id when running inside Ray, else the host name (never imports ray itself)."""
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                return str(ray.get_runtime_context().get_node_id())
        except Exception:  # not in a worker, or an older API: fall back to the host name
            pass
    return socket.gethostname()
