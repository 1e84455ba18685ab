"""The built-in tiny model, so `hpcinfer run` works on a fresh machine with nothing downloaded.

A 2-layer Llama with random weights and a BPE tokenizer trained on a corpus shipped in the
package. Both come from fixed seeds, so every machine builds byte-identical files; the model
is built once and cached. Its output is random text: it exercises the whole path (tokenizer,
engine, batching, outputs), not language ability.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from hpcinfer.errors import ModelBuildError

TINY_MODEL_NAME = "hpcinfer-tiny-llama"
TINY_MODEL_VERSION = "v1"
_SEED = 1234
_VOCAB_SIZE = 1000
_DONE_MARKER = "HPCINFER_BUILD_OK"
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def cache_root() -> Path:
    """Where hpcinfer caches what it builds: $HPCINFER_CACHE, else $XDG_CACHE_HOME/hpcinfer."""
    explicit = os.environ.get("HPCINFER_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hpcinfer"


def tiny_model_dir() -> Path:
    return cache_root() / f"{TINY_MODEL_NAME}-{TINY_MODEL_VERSION}"


def ensure_tiny_model() -> Path:
    """Return the tiny model's directory, building it first if it is not cached yet.

    Safe when several workers call it at once: each builds in its own temporary directory and
    the first rename wins; the others discard their copy.
    """
    target = tiny_model_dir()
    if (target / _DONE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build_tiny_model(scratch)
        (scratch / _DONE_MARKER).write_text(directory_digest(scratch) + "\n")
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / _DONE_MARKER).exists():
                raise
    except ImportError as exc:
        raise ModelBuildError(
            f"building the tiny model needs transformers, tokenizers and torch ({exc}); "
            "install them with: pip install 'hpcinfer[cpu]', or pass --model PATH"
        ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _corpus_lines() -> list[str]:
    text = resources.files("hpcinfer.data").joinpath("tiny_corpus.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_tiny_model(out_dir: Path) -> None:
    """Write the tokenizer and model files into `out_dir` (deterministic, about 3 MB)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))

    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
        pad_token_id=tokenizer.token_to_id("<pad>"),
        tie_word_embeddings=False,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(_SEED)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(mean=0.0, std=0.02)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # vLLM reads default sampling settings from generation_config.json; hpcinfer always passes
    # its own, so the file is dropped to keep the build free of version-dependent fields.
    (out_dir / "generation_config.json").unlink(missing_ok=True)


def directory_digest(path: Path) -> str:
    """SHA-256 over every file's name and bytes: the same tree gives the same digest."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != _DONE_MARKER):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()
