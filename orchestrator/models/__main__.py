"""`python -m orchestrator.models builtin:tiny builtin:smollm2`: prepare built-in models once."""

import logging
import sys

from . import resolve_model

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for spec in sys.argv[1:] or ["builtin:tiny", "builtin:smollm2"]:
        print(f"{spec}: {resolve_model(spec)}")
