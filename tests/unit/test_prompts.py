"""Prompt files and prompt rendering per mode."""

import pytest
import yaml

from orchestrator.config import prompt_file
from orchestrator.engines.tokenizer import render_prompt
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import PromptError, load_prompts
from orchestrator.core.types import Problem
from orchestrator.engines.tokenizer import FakeTokenizer
from orchestrator.errors import exit_code

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


def write_prompts(tmp_path, **changes):
    raw = yaml.safe_load(prompt_file("default").read_text())
    for key, value in changes.items():
        if "." in key:  # instruction.math
            top, sub = key.split(".")
            raw[top] = {**raw[top], sub: value}
        else:
            raw[key] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("key, value, expected", [
    # the common mistake: single braces around a LaTeX argument
    ("instruction.math", "{question}\n\nPut the result in \\boxed{}.", ["'{}'", "line 3", "positional", "{{"]),
    ("instruction.gpqa", "{question} {unknown_field}", ["unknown placeholder '{unknown_field}'", "{question}"]),
    ("instruction.math", "{question} {0}", ["'{0}'", "positional"]),
    ("instruction.math", "{question} and a stray }", ["unbalanced '}'", "column 24", "{{ or }}"]),
    ("instruction.math", "{question} and a stray {", ["unbalanced '{'", "column 24"]),
    ("instruction.math", "{question.upper}", ["{question.upper}", "without attributes"]),
    ("instruction.math", "{question:d}", ["cannot be rendered", "format code 'd'"]),
    ("comment_block", " <comment> {peers} {count} </comment>", ["comment_block", "'{count}'", "{peers}"]),
    ("peer_line", "Peer {index}: {summary} {rank}", ["peer_line", "'{rank}'", "{index}, {summary}"]),
    # a doubled placeholder is literal text, so the question would never reach the model
    ("instruction.math", "{{question}}", ["instruction.math must contain the {question} placeholder"]),
])
def test_templates_are_rendered_at_load_and_errors_name_file_key_and_problem(tmp_path, key, value, expected):
    path = write_prompts(tmp_path, **{key: value})
    with pytest.raises(PromptError) as err:
        load_prompts(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}"), message
    for part in expected:
        assert part in message, message
    assert exit_code(err.value) == 2  # a user error, refused before anything starts


def test_valid_templates_with_literal_braces_and_format_specs_load(tmp_path):
    path = write_prompts(tmp_path, **{
        "instruction.math": "{question}\n\nAnswer in \\boxed{{}}; sets look like {{1, 2}}.",
        "peer_line": 'Peer {index:>2}: "{summary!s}"',
    })
    prompts = load_prompts(path)
    problem = Problem(id="q", benchmark="unit", question="What is {x}?", gold="1")
    assert prompts.user_turn(problem, with_leap_note=False) == \
        "What is {x}?\n\nAnswer in \\boxed{}; sets look like {1, 2}."
    assert 'Peer  1: "s"' in prompts.peer_block(["s"])


def test_literal_keys_keep_their_braces():
    # answer_forcing is used as written: its single brace is the start of \boxed{...}
    assert PROMPTS.forcing("math").endswith("\\boxed{")


def test_every_shipped_prompt_file_loads():
    files = sorted((prompt_file("default").parent).glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        prompts = load_prompts(path)
        assert "{question}" in prompts.instruction["math"]


def test_a_prompt_file_that_is_not_utf8_names_offset_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    text = prompt_file("default").read_text().replace("Work through", "Travaillez à travers", 1)
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe0")
    with pytest.raises(PromptError) as err:
        load_prompts(path)
    message = str(err.value)
    assert str(path) in message and f"offset {offset}" in message and "0xe0" in message
    line = text.encode("latin-1")[:offset].count(b"\n") + 1
    assert f"line {line}," in message and "Re-encode the file as UTF-8" in message


def test_a_prompt_file_that_is_not_yaml_or_not_a_mapping(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("instruction: [unclosed\n")
    with pytest.raises(PromptError, match="broken.yaml: not valid YAML"):
        load_prompts(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(PromptError, match="list.yaml: expected a mapping"):
        load_prompts(listed)
