"""Tokenizer and chat-template helpers over Hugging Face `AutoTokenizer` (local files only)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Loads the tokenizer saved beside a model; never touches the network."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory not found")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat (optional system message) ending with the assistant header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None = None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS, the chat end-of-turn, and the model's own list."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    if generation_eos is not None:
        ids.update([generation_eos] if isinstance(generation_eos, int) else generation_eos)
    return sorted(ids)


def generation_eos(model_dir: str | Path | None) -> int | list[int] | None:
    """The `eos_token_id` of the model's `generation_config.json`, if it has one."""
    path = Path(model_dir) / "generation_config.json" if model_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object ({e})") from None
