"""The LeaP algorithm as pure code: types, round state machine, routing, prompts, grading, metrics.

Pure: it runs inside whichever process calls it (the coordinator runs the groups, the driver's
grading pool grades, the report computes metrics) and needs no Ray, vLLM or torch; every function
is unit-testable in milliseconds with hand-built engine outputs.

May import: nothing of the project outside `orchestrator.core` (third-party: numpy, rapidfuzz,
math-verify, PyYAML).
"""
