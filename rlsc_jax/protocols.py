"""Named evaluation protocols: the prompt, decoding and budget that decide which published numbers a score may
be set beside (docs/evaluation.md, "Which published numbers a protocol's output may be set beside").

`qwen-math` is the Qwen2.5-Math evaluation (QwenLM/Qwen2.5-Math, evaluation/: prompt type `qwen25-math-cot`,
sh/eval.sh `--temperature 0 --n_sampling 1 --top_p 1`, math_eval.py `--max_tokens_per_call 2048`).
`paper` is the suite the RLSC paper names for its Table 2, Evalchemy (mlfoundations/evalchemy,
eval/chat_benchmarks/{AIME24,AMC23}/eval_instruct.py as of June 2025): the prompt "Problem: ...\\nMark your
solution with \\boxed\\nAnswer:" as the only user message, temperature 0.7, 10 repeats, max_tokens 32768.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rlsc_jax.config import SamplingConfig


@dataclass(frozen=True)
class Protocol:
    """The settings a protocol fixes: its prompt template and its decoding (the sampling settings training uses
    too); eval.py's `key=value` overrides replace single ones."""

    template: str
    sampling: SamplingConfig


PROTOCOLS: dict[str, Protocol] = {
    "qwen-math": Protocol("qwen-math", SamplingConfig(num_samples=1, temperature=0.0, top_p=1.0, top_k=0,
                                                      max_new_tokens=2048)),
    # top_k 0 / top_p 1: lm-evaluation-harness's vLLM backend passes only the temperature to SamplingParams.
    "paper": Protocol("rlsc-paper", SamplingConfig(num_samples=10, temperature=0.7, top_p=1.0, top_k=0,
                                                   max_new_tokens=32768)),
}
DEFAULT_PROTOCOL = "qwen-math"
SAMPLING_KEYS = tuple(f.name for f in fields(SamplingConfig))
SETTINGS = ("template", *SAMPLING_KEYS)  # a protocol's settings, flat, as eval.py's overrides and records name them


def get_protocol(name: str) -> Protocol:
    """The named protocol; an unknown name is a one-line error listing the known ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{name}'; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
