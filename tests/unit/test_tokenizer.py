"""The coordinator's tokenizer wrapper: transformers' ids and text, never a stray BOS."""

from __future__ import annotations

import pickle
import random

import pytest

from orchestrator.engines.tokenizer import TextTokenizer, load_tokenizer
from orchestrator.models import resolve_model

TEXTS = [
    "",
    "plain words, numbers 3b + 4 = 5b + 2 and \\boxed{70}.",
    "  leading spaces\n\n\nand tabs\t\there ",
    "unicode: é, 日本語, emoji 🎲, math ∑ x²",
    "<summarize> so far b = 21 </summarize>",
    "special tokens inline: <|im_start|>user\nhi<|im_end|>",
]


def _random_texts(n=40, seed=0):
    rng = random.Random(seed)
    alphabet = "abc xyz 0123 \n\t.,;:!?-+=()[]{}\\/<>|'\"é日🎲"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(resolve_model("builtin:tiny"))


def test_encode_and_decode_match_transformers(tiny):
    assert isinstance(tiny, TextTokenizer) and tiny._encoder is not None and tiny._decoder is not None
    hf = tiny.hf
    for text in TEXTS + _random_texts():
        ids = tiny.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        for skip in (False, True):
            assert tiny.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    # arrays and tuples decode like lists (the core keeps ids in arrays)
    from array import array

    ids = tiny.encode(TEXTS[3])
    assert tiny.decode(array("i", ids)) == tiny.decode(tuple(ids)) == hf.decode(ids)


def test_no_bos_in_mid_sequence_pieces():
    """A tokenizer that adds a BOS (as the DeepSeek-R1 distills' do) must not add one to the
    pieces the coordinator injects; asked explicitly, it still does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "[UNK]": 2, "a": 3, "b": 4, "Ġ": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    assert hf.encode("ab")[0] == 0  # transformers' default adds it
    tok = TextTokenizer(hf)
    assert tok.encode("ab") == [3, 4]
    assert tok.encode("ab", add_special_tokens=True) == [0, 3, 4]
    assert tok.eos_token_id == 1


def test_falls_back_to_transformers_when_backend_would_differ(tiny):
    """Truncation set on the backend changes what it returns: the wrapper then asks transformers."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny"))
    hf.backend_tokenizer.enable_truncation(max_length=3)
    tok = TextTokenizer(hf)
    assert tok._encoder is None
    text = TEXTS[1]
    assert tok.encode(text) == tiny.encode(text)  # transformers' encode does not truncate unasked


def test_wrapper_passes_through_and_pickles(tiny):
    assert tiny.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert len(tiny) == len(tiny.hf) and tiny.pad_token_id == tiny.hf.pad_token_id
    back = pickle.loads(pickle.dumps(tiny))
    assert back.encode(TEXTS[1]) == tiny.encode(TEXTS[1])
