"""Random-weight Qwen2 checkpoints of a real model's shape, with the tiny model's tokenizer.

For measuring the engine and the orchestration on a GPU without downloading a model: a
checkpoint with the layer sizes of, say, Qwen2.5-1.5B costs the GPU what the real model costs
(same weights, same KV cache per token), while its text is noise. The tokenizer, chat template
and special tokens are the tiny model's (`orchestrator.models.tiny`), so prompts render the
same way as in the CPU tests. The vocabulary is the tokenizer's size rounded up to a multiple
of 128 (as real checkpoints pad theirs): ids above the tokenizer's never occur in a prompt and
decode to "" when sampled.

    model.path=random:qwen2.5-1.5b                            # built once, cached like builtin:tiny
    python -m orchestrator.models random:qwen2.5-7b --out DIR # into a directory of your choice

Weights use transformers' own initialisation (normal, std 0.02; norms 1), seeded, in bf16,
built on the GPU when torch sees one (a 7B shape is 15 GB in bf16) and on the CPU otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .tiny import TINY_VERSION, qwen2_config, save_checkpoint, tiny_tokenizer

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"
# Bump when the recipe changes so cached builds are not reused across recipes.
RANDOM_VERSION = "v1"
VOCAB_MULTIPLE = 128


@dataclass(frozen=True)
class Shape:
    """The sizes of a Qwen2 model, named as in its config.json."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0


SHAPES = {
    # Qwen/Qwen2.5-1.5B(-Instruct)'s config.json
    "qwen2.5-1.5b": Shape(1536, 8960, 28, 12, 2, tie_word_embeddings=True),
    # Qwen/Qwen2.5-7B(-Instruct)'s config.json (also DeepSeek-R1-Distill-Qwen-7B's layer sizes)
    "qwen2.5-7b": Shape(3584, 18944, 28, 28, 4, tie_word_embeddings=False),
    # for tests: the tiny model's sizes (head dim 64, which vLLM's CPU attention accepts)
    "tiny": Shape(128, 256, 2, 2, 2, tie_word_embeddings=True, max_position_embeddings=4096),
}


def shape_of(name: str) -> Shape:
    """The shape called `name`; ValueError naming the known ones otherwise."""
    if name not in SHAPES:
        known = ", ".join(f"{RANDOM_PREFIX}{n}" for n in SHAPES)
        raise ValueError(f"unknown model shape {RANDOM_PREFIX}{name}: choose one of {known}")
    return SHAPES[name]


def random_dirname(name: str, seed: int = 0) -> str:
    """The cache directory's name for a shape: recipe and tokenizer versions in it."""
    return f"random-{name}-{RANDOM_VERSION}-tiny{TINY_VERSION}-seed{seed}"


def build_random(out_dir: str | os.PathLike, name: str, seed: int = 0,
                 device: str | None = None) -> str:
    """Write a random-weight checkpoint of shape `name` (config, bf16 safetensors, the tiny
    tokenizer, a generation config) to `out_dir` (created if needed); returns it as a string.
    `device`: where the weights are initialised; None: "cuda" when torch sees a GPU, else "cpu"."""
    # torch and transformers are optional, heavy dependencies: imported only when a model is built
    import torch
    from transformers import Qwen2ForCausalLM

    shape = shape_of(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = tiny_tokenizer(max_positions=shape.max_position_embeddings)
    vocab = -(-len(tok) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    sizes = asdict(shape)
    config = qwen2_config(tok, vocab_size=vocab, max_positions=sizes.pop("max_position_embeddings"),
                          rms_norm_eps=1e-6, hidden_act="silu", initializer_range=0.02, **sizes)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: a float32 copy of 7B would be 30 GB
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)  # transformers' init: normal(0, 0.02), norms 1
    finally:
        torch.set_default_dtype(default_dtype)
    save_checkpoint(model, tok, out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    info = {"spec": f"{RANDOM_PREFIX}{name}", "shape": asdict(shape), "seed": seed,
            "vocab_size": vocab, "tokenizer_size": len(tok), "params": params, "device": device}
    (out / "leap_model.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    log.info("built %s%s (%.2fB parameters, seed %d, on %s) in %s", RANDOM_PREFIX, name,
             params / 1e9, seed, device, out)
    return str(out)
