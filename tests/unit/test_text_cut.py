"""paragraph_cut looks in tail windows first; it must find the same boundary as a whole decode."""

import random

from orchestrator.core.text import PARAGRAPH, tokens_covering
from orchestrator.core.text import paragraph_cut
from orchestrator.engines.tokenizer import FakeTokenizer

TOK = FakeTokenizer()


def whole_decode_cut(tok, segment) -> int:
    text = tok.decode(segment)
    pos = text.rfind(PARAGRAPH)
    return len(segment) if pos < 0 else tokens_covering(tok, segment, pos + len(PARAGRAPH))


def test_tail_windows_agree_with_a_whole_decode():
    rng = random.Random(7)
    pieces = ["word ", "é", "日本", "\n", "\n\n", "x" * 40, " — ", "\n\n\n"]
    for _ in range(300):
        n = rng.choice([3, 50, 300, 1200, 5000])
        text = "".join(rng.choice(pieces) for _ in range(n))
        if rng.random() < 0.3:  # long stretches without a break force wider windows
            text = text.replace("\n", " ")
            if rng.random() < 0.5:
                at = rng.randrange(len(text) + 1)
                text = text[:at] + "\n\n" + text[at:]
        ids = TOK.encode(text)
        assert paragraph_cut(TOK, ids) == whole_decode_cut(TOK, ids)


def test_no_break_keeps_everything_and_break_at_the_end_keeps_all():
    ids = TOK.encode("a" * 3000)
    assert paragraph_cut(TOK, ids) == len(ids)
    ids = TOK.encode("a" * 3000 + "\n\n")
    assert paragraph_cut(TOK, ids) == len(ids)
    ids = TOK.encode("a" * 3000 + "\n\nbb")
    assert paragraph_cut(TOK, ids) == len(ids) - 2
