"""The driver room: everything that runs in the driver process (`python -m orchestrator`).

`runner.run(cfg)` is the entry: it checks the config and data, takes the output directory
(`lock.py`, `fingerprint.py`), runs the groups (`loop.py`) on the run's share of the Ray cluster
(`cluster.py`, with `ray_init.py`, `placement.py`, `replicas.py`, `launch.py`, `actors.py`,
`replacement.py`), grades them (`grader.py`), writes results and checkpoints (`results.py`,
`checkpoint.py`) and shows the run (`console.py`). `planner.predict` plans a run before it starts
(`python -m orchestrator.plan`): the real coordinator over simulated replicas, in this process, on
a virtual clock (`simulation.py`).

The driver may import every other room (core, engines, config, coordinator, report); nothing
imports the driver but the CLI entries (`orchestrator/__main__.py`, `orchestrator/plan.py`) and
the benchmarks and tests.
"""
