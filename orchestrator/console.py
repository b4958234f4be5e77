"""What the user sees: the progress bar and its status line."""

from __future__ import annotations

import logging

log = logging.getLogger("orchestrator.runner")


def progress_bar(cfg, total: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="groups", unit="group", dynamic_ncols=True)


def show(bar, progress: dict, finished: int) -> None:
    """Groups done (the bar), groups per current round, active paths, tokens/s, cache hit rate."""
    per_round: dict[int, int] = {}
    for r in progress["rounds"].values():
        per_round[r] = per_round.get(r, 0) + 1
    parts = [" ".join(f"r{r}:{n}" for r, n in sorted(per_round.items())) or "r-",
             f"paths {progress['active_paths']}", f"{progress['tokens_per_s']:.0f} tok/s"]
    if progress["cache_hit_rate"] is not None:
        parts.append(f"cache {progress['cache_hit_rate']:.0%}")
    if progress["failovers"]:
        parts.append(f"failovers {progress['failovers']}")
    text = " | ".join(parts)
    if bar is None:
        log.debug("progress: %s", text)
        return
    bar.update(finished)
    bar.set_postfix_str(text, refresh=True)
