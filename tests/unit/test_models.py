"""The built-in models: the tiny checkpoint builds, its tokenizer and chat template behave, and
resolve_model caches builds (also when two builders race)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from orchestrator.models import _cached_build, resolve_model  # noqa: E402
from orchestrator.models.tiny import LEAP_TAGS  # noqa: E402

TAGS_TEXT = (
    "<think>\nFirst, 12 + 35 = 47.\n\n<summarize> So far the sum is \\boxed{47}. </summarize>"
    ' <comment> Peer 1: "I got 47." </comment>\n\n</think>'
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("leap-cache")


@pytest.fixture(scope="module")
def tiny(cache) -> str:
    return resolve_model("builtin:tiny", str(cache))


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def test_tiny_builds_a_qwen2_checkpoint(tiny):
    d = Path(tiny)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (d / name).is_file(), name
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (128, 2, 2)
    assert cfg["head_dim"] == 64
    assert cfg["max_position_embeddings"] == 4096
    assert 1000 <= cfg["vocab_size"] <= 2000
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"]


def test_tiny_tokenizer_specials_and_vocab(tiny, tok):
    cfg = json.loads((Path(tiny) / "config.json").read_text())
    assert len(tok) == cfg["vocab_size"]
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id == cfg["eos_token_id"]
    assert tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id


def test_tiny_tokenizer_round_trips_leap_tags(tok):
    for tag in LEAP_TAGS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
    ids = tok.encode(TAGS_TEXT, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False) == TAGS_TEXT
    # BPE learned the corpus: far fewer tokens than bytes
    assert len(ids) < len(TAGS_TEXT.encode()) / 2
    # appending token lists equals tokenizing the concatenation at a paragraph seam
    a, b = "Let me check.\n\n", "The answer is \\boxed{5}."
    joined = tok.encode(a, add_special_tokens=False) + tok.encode(b, add_special_tokens=False)
    assert tok.decode(joined) == a + b


def test_tiny_chat_template_renders(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_gen = tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=False)
    assert no_gen == "<|im_start|>user\n2+2?<|im_end|>\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.eos_token_id) == 2


def test_building_twice_reuses_the_cache(cache, tiny):
    before = os.stat(Path(tiny) / "model.safetensors").st_mtime_ns
    t0 = time.perf_counter()
    again = resolve_model("builtin:tiny", str(cache))
    assert again == tiny
    assert time.perf_counter() - t0 < 1.0
    assert os.stat(Path(tiny) / "model.safetensors").st_mtime_ns == before
    leftovers = [p.name for p in cache.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_cache_dir_defaults_to_env(monkeypatch, cache, tiny):
    monkeypatch.setenv("LEAP_CACHE_DIR", str(cache))
    assert resolve_model("builtin:tiny") == tiny


def test_racing_builder_uses_the_winners_directory(tmp_path):
    """Another process renamed its build into place while ours ran: ours is discarded."""
    target = tmp_path / "model-x"

    def build(out: str) -> None:
        Path(out, "config.json").write_text('{"who": "loser"}')
        target.mkdir()  # the other process wins the rename
        (target / "config.json").write_text('{"who": "winner"}')

    got = _cached_build(tmp_path, "model-x", build)
    assert got == str(target)
    assert json.loads((target / "config.json").read_text()) == {"who": "winner"}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_failed_build_leaves_nothing(tmp_path):
    def build(out: str) -> None:
        Path(out, "partial.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _cached_build(tmp_path, "model-y", build)
    assert not (tmp_path / "model-y").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_plain_specs_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model("Qwen/QwQ-32B") == "Qwen/QwQ-32B"
    with pytest.raises(ValueError, match="unknown builtin"):
        resolve_model("builtin:nope", str(tmp_path))
