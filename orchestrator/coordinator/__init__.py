"""The coordinator: one async Ray actor per run, in its own process on a CPU of the cluster.

`actor.Coordinator` runs every group's round state machine (`orchestrator.core.group`), admits
groups so the replicas' batches stay full, sends each path's requests to its replica and hands
finished groups and checkpoints to the driver when it polls; `assign.ReplicaPool` keeps paths on
their replica and moves them when one dies; `embedding` loads the sentence-embedding model of
`similarity=embedding` routing. It also runs in-process over `engines.local` handles for the
simulation benchmark.

May import: `orchestrator.core`, `orchestrator.errors`, `orchestrator.telemetry`,
`orchestrator.engines` (the replica seam and the tokenizer).
"""
