"""The built-in models: the tiny checkpoint builds, its tokenizer and chat template behave,
resolve_model caches builds (also when two builders race), and `random:SHAPE` builds a Qwen2 of
that shape with the tiny tokenizer (here the tiny shape, on the CPU)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from orchestrator.models import SHAPES, _cached_build, resolve_model  # noqa: E402
from orchestrator.models.__main__ import main as models_main  # noqa: E402
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


# ---------------------------------------------------------------- random:SHAPE


@pytest.fixture(scope="module")
def random_tiny(cache) -> str:
    return resolve_model("random:tiny", str(cache))


def test_random_shape_is_a_qwen2_checkpoint_of_that_shape(random_tiny, tok):
    cfg = json.loads((Path(random_tiny) / "config.json").read_text())
    shape = SHAPES["tiny"]
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "tie_word_embeddings", "max_position_embeddings"):
        assert cfg[key] == getattr(shape, key), key
    assert cfg["vocab_size"] % 128 == 0 and len(tok) <= cfg["vocab_size"] < len(tok) + 128
    assert cfg["eos_token_id"] == tok.eos_token_id and cfg["dtype"] == "bfloat16"
    info = json.loads((Path(random_tiny) / "leap_model.json").read_text())
    import torch

    assert info["spec"] == "random:tiny"
    assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_random_shape_uses_the_tiny_tokenizer(random_tiny, tok):
    from transformers import AutoTokenizer

    rtok = AutoTokenizer.from_pretrained(random_tiny)
    assert rtok.get_vocab() == tok.get_vocab()
    assert rtok.chat_template == tok.chat_template
    assert rtok.encode(TAGS_TEXT, add_special_tokens=False) == tok.encode(TAGS_TEXT, add_special_tokens=False)


def test_random_shape_loads_and_generates(random_tiny, tok):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(random_tiny)
    ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 1)
    assert 0 <= int(out[0, -1]) < model.config.vocab_size


def test_random_spec_is_cached_and_unknown_shapes_are_named(cache, random_tiny, tmp_path):
    assert resolve_model("random:tiny", str(cache)) == random_tiny
    with pytest.raises(ValueError) as err:
        resolve_model("random:qwen9-1t", str(tmp_path))
    assert all(f"random:{name}" in str(err.value) for name in ("qwen2.5-1.5b", "qwen2.5-7b", "tiny"))
    assert list(tmp_path.iterdir()) == []


def test_cli_builds_into_a_directory(random_tiny, tmp_path, capsys):
    out = tmp_path / "m"
    assert models_main(["random:tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"random:tiny: {out.resolve()}"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).read_bytes() == (Path(random_tiny) / name).read_bytes(), name
    with pytest.raises(SystemExit):  # not empty now
        models_main(["random:tiny", "--out", str(out)])
    with pytest.raises(SystemExit):
        models_main(["random:nope", "--out", str(tmp_path / "n")])
    assert "random:qwen2.5-1.5b" in capsys.readouterr().err
