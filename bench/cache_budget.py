"""Does a decode step's cost follow the filled cache or the token budget? The same sampling call at several
`max_new_tokens`, real weights, real EOS.

    python bench/cache_budget.py --model DIR [--budgets 512 2048] [--samples 16] [--seed 0] [--iters 3]

One GSM8K question in the model's chat template, `--samples` completions at T = 0.5 that stop at the model's own
EOS. The sampler's randomness depends only on the seed and the step, so every budget draws the same completions
(checked) and runs the same number of decode steps (the longest row); only the cache it allocates differs. Reports
seconds per decode step for each budget and its ratio to the first; a row that reaches the smallest budget makes
the comparison unfair, and is flagged.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.common import (check_quiet, environment, load_note, machine_load, markdown_table, spread,  # noqa: E402
                          time_calls, weights_label, write_json)
from bench.sampling import QUESTION  # noqa: E402
from rlsc_jax import hf  # noqa: E402
from rlsc_jax.sampling import sample  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a Hugging Face checkpoint directory (real weights)")
    p.add_argument("--budgets", type=int, nargs="+", default=[512, 2048], help="max_new_tokens, one call each")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=3, help="timed calls per budget, interleaved")
    p.add_argument("--max-load", type=float, default=0.25, help="refuse above this 1-minute load per core")
    p.add_argument("--allow-busy", action="store_true", help="measure on a busy machine anyway, marked BUSY")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    load_before = check_quiet(args)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    eos = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                  tokenizer.convert_tokens_to_ids("<|endoftext|>")} - {None})
    model = hf.load(args.model)
    out = {}

    def call(budget):
        def run():
            s = sample(model, [prompt], num_samples=args.samples, max_new_tokens=budget, temperature=0.5,
                       eos_ids=eos, seed=args.seed)
            out[budget] = (np.asarray(s.tokens), np.asarray(s.lengths))
        return run

    timings = time_calls({b: call(b) for b in args.budgets}, iters=args.iters, warmup=1)
    first = args.budgets[0]
    tokens, lengths = out[first]
    steps = int(lengths.max())
    same = all(np.array_equal(out[b][0][:, :steps], tokens[:, :steps]) and np.array_equal(out[b][1], lengths)
               for b in args.budgets)
    rows, results = [], {}
    for b in args.budgets:
        per_step = timings[b].median / steps
        results[b] = dict(seconds=timings[b].times, per_step=per_step)
        rows.append([b, steps, spread(timings[b]), per_step * 1e3, per_step / (timings[first].median / steps)])
    print(f"\ndecode cost against the budget, {weights_label(argparse.Namespace(model=args.model))}, "
          f"{args.samples} samples, T=0.5, seed {args.seed}; longest row {steps} tokens (all rows stop below "
          f"{first}: {steps < first}); same samples at every budget: {same}; "
          f"{load_note(load_before, machine_load(), args)}\n")
    print(markdown_table(["max_new_tokens", "decode steps", "s/call (range)", "ms per step", "vs first"], rows))
    if args.json:
        write_json(args.json, dict(args={k: str(v) for k, v in vars(args).items()}, steps=steps, same_samples=same,
                                   results=results, lengths=lengths.tolist(), environment=environment()))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
