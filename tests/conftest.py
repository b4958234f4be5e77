"""Shared fixtures: where the reference evaluation sets live, config composition, and an event
loop and tokenizer for the tests that drive a real engine (tests/e2e, tests/gpu)."""

import asyncio
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Local test clusters opt out of Ray's default token authentication, which would otherwise leave
# ~/.ray/auth_token behind and switch on authentication for every later cluster on the machine.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The tests neither read nor write the developer's engine profiles and run history (the profile
# cache): a run in a test plans only with a profile it names, as it does on a clean CI machine.
os.environ["LEAP_PROFILE_DIR"] = tempfile.mkdtemp(prefix="leap-test-profiles-")
atexit.register(shutil.rmtree, os.environ["LEAP_PROFILE_DIR"], True)

REPO = Path(__file__).resolve().parents[1]
LEAP_EVAL = (REPO / ".." / "shared" / "data" / "leap_eval").resolve()


@pytest.fixture
def leap_eval() -> Path:
    if not LEAP_EVAL.is_dir():
        pytest.skip(f"reference evaluation sets not found at {LEAP_EVAL}")
    return LEAP_EVAL


@pytest.fixture(scope="module")
def runner():
    """One event loop for a module's engine: AsyncLLM binds its output handler to the loop it
    first runs on, so every test of the module runs its coroutines with `runner.run`."""
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def tok(model_dir):
    """The transformers tokenizer of the checkpoint the module's `model_dir` fixture names."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def compose(overrides: list[str]):
    """Compose the real Hydra config (conf/) with overrides, as the command line would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from orchestrator.config import register, to_config

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_config(hydra_compose(config_name="config", overrides=overrides))


def run_in_thread(cfg):
    """Start `orchestrator.driver.runner.run(cfg)` in a daemon thread, as a user's driver would run it
    while a test disturbs the cluster; returns (thread, result: {"summary"} or {"error"})."""
    import threading

    from orchestrator.driver.runner import run

    result: dict = {}

    def go():
        try:
            result["summary"] = run(cfg)
        except BaseException as exc:  # the test reports it
            result["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result
