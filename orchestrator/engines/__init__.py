"""The engine seam: replicas implementing `orchestrator.core.types.Replica`.

`vllm_replica.VLLMReplica` hosts a real vLLM engine; `fake.FakeReplica` is a deterministic stand-in
with an optional latency model. Both run as async Ray actors; vLLM is imported lazily.
"""
