"""The engine seam: replicas implementing `orchestrator.core.types.Replica`.

`vllm_replica.VLLMReplica` hosts a real vLLM engine; `fake.FakeReplica` is a deterministic stand-in
with an optional latency model. Both run as async Ray actors; vLLM is imported lazily.
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
