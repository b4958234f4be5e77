"""Prompt files and prompt rendering per mode."""

import pytest
import yaml

from orchestrator.config import prompt_file
from orchestrator.engines.tokenizer import render_prompt
from orchestrator.core.group import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem
from orchestrator.engines.tokenizer import FakeTokenizer

TOK = FakeTokenizer()
PROMPTS = load_prompts(prompt_file("default"))
PROBLEM = Problem(id="q", benchmark="unit", question="What is 6 * 7?", gold="42")


def rendered(mode: str) -> str:
    return TOK.decode(render_prompt(TOK, PROMPTS, PROBLEM, LeapParams(mode=mode)))


def test_leap_mode_explains_the_tags_and_prefills_the_assistant_turn():
    text = rendered("leap")
    user, assistant = text.split("<|im_start|>assistant\n", 1)
    assert "What is 6 * 7?" in user and "<summarize>" in user and "<comment>" in user
    assert assistant.endswith(PROMPTS.leap_prefill["math"])


@pytest.mark.parametrize("mode", ["leap_t", "independent", "compute_matched"])
def test_other_modes_get_the_plain_step_by_step_prompt(mode):
    text = rendered(mode)
    assert "What is 6 * 7?" in text and "\\boxed{}" in text
    assert "<summarize>" not in text and "<comment>" not in text


def test_peer_block_and_forcing():
    block = PROMPTS.peer_block(["a is 1", "b is 2"])
    assert block.startswith(' <comment> Peer 1: "a is 1"\nPeer 2: "b is 2" </comment>\n\n')
    assert block.endswith(PROMPTS.reflection)
    assert PROMPTS.peer_block([]) == PROMPTS.no_comments
    assert PROMPTS.forcing("math").endswith("\\boxed{")
    assert "ANSWER:" in PROMPTS.forcing("gpqa") and "</think>" in PROMPTS.forcing("gpqa")


@pytest.mark.parametrize("key, value, message", [
    ("openers", ["no tag here"], "openers"),
    ("triggers", [], "triggers"),
    ("comment_block", " {peers} ", "comment_block"),
    ("instruction", {"math": "no placeholder", "gpqa": "{question}"}, "instruction.math"),
])
def test_bad_prompt_files_name_the_key(tmp_path, key, value, message):
    raw = yaml.safe_load(prompt_file("default").read_text())
    raw[key] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message) as err:
        load_prompts(path)
    assert str(path) in str(err.value)
