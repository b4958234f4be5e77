"""Prepare models once, before a run needs them.

    python -m orchestrator.models                                  # builtin:tiny and builtin:smollm2
    python -m orchestrator.models builtin:tiny random:qwen2.5-1.5b # into the cache (LEAP_CACHE_DIR)
    python -m orchestrator.models random:qwen2.5-7b --out DIR      # into DIR (then model.path=DIR)

Each line printed is `SPEC: DIRECTORY`. Shapes for `random:`: see orchestrator/models/shapes.py.
"""

import argparse
import logging
import sys
from pathlib import Path

from . import build_model, check_spec, is_built, resolve_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.models",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*", default=["builtin:tiny", "builtin:smollm2"],
                    help="builtin:tiny, builtin:smollm2 or random:SHAPE (default: the two builtins)")
    ap.add_argument("--out", help="build the one SPEC into this new (or empty) directory instead "
                                  "of the cache")
    ap.add_argument("--cache-dir", help="the cache (default: $LEAP_CACHE_DIR, else "
                                        "~/.cache/leap-orchestrator)")
    args = ap.parse_args(argv)
    try:
        for spec in args.specs:
            check_spec(spec)
    except ValueError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.out:
        out = Path(args.out).expanduser()
        if len(args.specs) != 1 or not is_built(args.specs[0]):
            ap.error("--out takes exactly one SPEC, builtin:NAME or random:SHAPE")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            ap.error(f"--out {out}: exists and is not an empty directory")
        print(f"{args.specs[0]}: {build_model(args.specs[0], str(out.resolve()))}")
        return 0
    for spec in args.specs:
        print(f"{spec}: {resolve_model(spec, args.cache_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
