"""A tiny Qwen2-architecture checkpoint with random weights, for tests and the CPU demo.

It builds in seconds with no network: a byte-level BPE tokenizer is trained with the `tokenizers`
library on a small built-in corpus (`tiny_corpus.txt`: arithmetic reasoning, LaTeX and the LeaP
tags), and a 2-layer Qwen2 model with seeded random weights is saved as safetensors. vLLM loads it
like any Qwen2 checkpoint. Its output is random text; it exists to exercise the machinery
(prefix caching, stop strings, EOS, context limits), not to reason.

Use `orchestrator.models.resolve_model("builtin:tiny")`, which caches the build; `build_tiny`
writes into a directory you give it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Bump when the recipe changes so cached builds are not reused across recipes.
TINY_VERSION = "v1"

CORPUS_PATH = Path(__file__).with_name("tiny_corpus.txt")

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a turn: the EOS token
ENDOFTEXT = "<|endoftext|>"  # padding
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
# LeaP tags: single tokens (like Qwen's <think>), not special, so they survive decoding.
LEAP_TAGS = ["<think>", "</think>", "<summarize>", "</summarize>", "<comment>", "</comment>"]

# Qwen-style chat template: <|im_start|>role\ncontent<|im_end|>\n, generation prompt
# <|im_start|>assistant\n.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Qwen2's pre-tokenizer split: digits one at a time, words with their leading space.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_VOCAB_SIZE = 1024
MAX_POSITIONS = 4096


def train_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train the byte-level BPE on the built-in corpus; returns a `tokenizers.Tokenizer`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = CORPUS_PATH.read_text(encoding="utf-8")
    # One string: keeps paragraph breaks ("\n\n") so they merge into a single token.
    tok.train_from_iterator([text], trainer=trainer, length=1)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in LEAP_TAGS])
    return tok


def tiny_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, max_positions: int = MAX_POSITIONS):
    """The tiny tokenizer as a transformers fast tokenizer, with its chat template; also the
    tokenizer of the `random:` models (`orchestrator.models.shapes`)."""
    from transformers import PreTrainedTokenizerFast  # heavy and optional: only when building

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(vocab_size),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def qwen2_config(tok, vocab_size: int, max_positions: int, **shape):
    """A Qwen2 config for the tiny tokenizer `tok` (its EOS and padding ids, no BOS), no sliding
    window; `shape` holds the sizes (hidden_size, num_hidden_layers, ...) and any other field."""
    from transformers import Qwen2Config  # heavy and optional: only when building

    config = Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        max_window_layers=shape["num_hidden_layers"],
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
        pad_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
        use_sliding_window=False,
        **shape,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    return config


def save_checkpoint(model, tok, out: Path) -> None:
    """Save `model` in bf16 as safetensors, with a sampling generation config and the tokenizer."""
    # heavy and optional: only when building
    import torch
    from transformers import GenerationConfig

    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.generation_config = GenerationConfig(
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id,
        bos_token_id=None, do_sample=True,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _portable_tokenizer_config(out)


def build_tiny(out_dir: str | os.PathLike, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE) -> str:
    """Write the tiny checkpoint (config, bf16 safetensors, tokenizer, generation config) to
    `out_dir` (created if needed) and return it as a string."""
    import torch
    from transformers import Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_tok = tiny_tokenizer(vocab_size)
    n_vocab = len(hf_tok)
    config = qwen2_config(
        hf_tok,
        vocab_size=n_vocab,  # exactly the tokenizer's size: every sampled id decodes
        max_positions=MAX_POSITIONS,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,  # vLLM's CPU attention rejects head dim 16
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # Wider than the default init (std 0.02) so the random model has some preferences
    # instead of near-uniform logits; still deterministic from the seed.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.08)
    save_checkpoint(model, hf_tok, out)
    log.info("built tiny model (vocab %d, seed %d) in %s", n_vocab, seed, out)
    return str(out)


def _portable_tokenizer_config(out: Path) -> None:
    """Name the tokenizer class so that transformers 4.x (GPU clusters) loads it too, and keep
    the chat template inside tokenizer_config.json as well as in chat_template.jinja."""
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
