"""The LeaP algorithm as pure code: types, round state machine, routing, prompts, grading, metrics.

Nothing in this package imports ray, vllm or torch; every function is unit-testable in
milliseconds with hand-built engine outputs.
"""
