"""Check this project's numerics against PyTorch `transformers` on a checkpoint, before trusting a long run.

    python -m rlsc_jax.compare --model DIR [--prompt TEXT | --benchmark NAME [--data-dir DIR]] [--tokens N]
                               [--dtype float32|bfloat16|float16] [--compute-dtype ...] [--step] [--layers K]
                               [--json FILE]

On the chat-templated prompt it compares the forward layer by layer (hidden states, logits, argmax), then
N greedy tokens from this project's sampler against `generate(do_sample=False)`, and with --step one
L2 step on 4 sampled completions against a PyTorch autograd Algorithm 1 (`rlsc_jax.parity`). It prints
every figure and a verdict against the tolerances of `TOLERANCES`; exit 0 when within them, 1 when not,
2 on bad input (one line on stderr, nothing written). transformers runs with parameters of --dtype (it
computes in its parameters' dtype); this project with --dtype masters and --compute-dtype matmuls.
PyTorch is needed (the `dev` extra: pip install -e ".[dev]"); --layers K compares the first K layers of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rlsc_jax import torch_reference
from rlsc_jax.benchmarks import BENCHMARK_DIR, build_messages, load_benchmark
from rlsc_jax.cli import exit_process, prog, run_command
from rlsc_jax.dtypes import DTYPES
from rlsc_jax.files import atomic_write_json, check_writable

if TYPE_CHECKING:  # imported where used: JAX loads only past the command line
    from rlsc_jax.models import ModelConfig

DEFAULT_QUESTION = "A farmer has 17 sheep and buys 5 more, then sells 8. How many sheep does the farmer have now?"


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What counts as agreement at one precision (measured figures in docs/numerics.md).

    Hidden states: max |Δ| / max |reference| (scale free: real checkpoints carry activations in the thousands).
    Logits: max |Δ| <= absolute + relative x max |reference logits|, also the margin under which a greedy
    divergence is a tie. Step: the loss's and the gradient norm's relative errors, and the largest
    |Δ log p_i| per answer token (log p_i sums that many tokens' errors).
    """

    hidden_relative: float
    logits_absolute: float
    logits_relative: float
    logp_per_token: float
    loss_relative: float
    grad_norm_relative: float

    def logits(self, reference_max: float) -> float:
        """The logits' allowed max |Δ| for logits whose largest magnitude is `reference_max`."""
        return self.logits_absolute + self.logits_relative * reference_max


TOLERANCES = {
    "float32": Tolerance(hidden_relative=1e-4, logits_absolute=2e-3, logits_relative=0.0, logp_per_token=1e-3,
                         loss_relative=1e-3, grad_norm_relative=1e-3),
    "bfloat16": Tolerance(hidden_relative=5e-2, logits_absolute=0.0, logits_relative=5e-2, logp_per_token=5e-2,
                          loss_relative=1e-1, grad_norm_relative=5e-2),
}


def precision(dtype: str, compute_dtype: str) -> str:
    """The tolerance class: half precision's (named bfloat16) as soon as either side computes or stores in
    bfloat16 or float16 (float16 keeps 3 more mantissa bits than bfloat16, so its class is loose for it)."""
    return "bfloat16" if {dtype, compute_dtype} & {"bfloat16", "float16"} else "float32"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog=prog("compare"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory (config, safetensors, tokenizer)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="the user message (default: a short arithmetic question)")
    source.add_argument("--benchmark", help="use the first question of this benchmark")
    p.add_argument("--data-dir", help="directory holding the benchmark JSONL files (default: those shipped)")
    p.add_argument("--template", default="qwen-math", help="prompt template: qwen-math, rlsc-paper or plain")
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens to compare (and new tokens per step sample)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="parameters (both sides)")
    p.add_argument("--compute-dtype", choices=DTYPES, help="this project's matmuls (default: --dtype)")
    p.add_argument("--step", action="store_true", help="also compare one RLSC (L2) training step")
    p.add_argument("--layers", type=int, help="compare only the first K decoder layers (less memory)")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    return p.parse_args(argv)


def prompt_text(args: argparse.Namespace) -> str:
    """The user message: --prompt, the first question of --benchmark, or the default question."""
    if args.benchmark is None:
        if args.data_dir is not None:
            raise ValueError("--data-dir is for --benchmark; give --benchmark NAME too")
        return DEFAULT_QUESTION if args.prompt is None else args.prompt
    return load_benchmark(args.benchmark, args.data_dir or BENCHMARK_DIR, limit=1)[0].question


def check_inputs(args: argparse.Namespace) -> tuple[ModelConfig, str, list[int], list[int]]:
    """Everything checkable before weights are loaded: PyTorch, the model directory and config, the prompt
    (it must leave room for --tokens within the model's positions); returns (config, text, ids, EOS ids).

    The modules that import transformers are imported after the PyTorch check: without PyTorch, importing
    transformers prints a warning of its own, and the error must stay one line. (JAX too is imported only past
    the command line, so that `--help` answers at once.)
    """
    torch_reference.require_torch()
    from rlsc_jax.models import ModelConfig
    from rlsc_jax.tokenizer import chat_prompt_ids, eos_ids, generation_eos, load_tokenizer

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model directory not found")
    cfg = ModelConfig.from_file(model_dir)
    if args.tokens < 1:
        raise ValueError(f"--tokens {args.tokens}: must be >= 1")
    if args.layers is not None and not 1 <= args.layers <= cfg.num_layers:
        raise ValueError(f"--layers {args.layers}: the model has {cfg.num_layers} layers")
    text = prompt_text(args)
    tokenizer = load_tokenizer(model_dir)
    system, user = build_messages(args.template, text)
    ids = chat_prompt_ids(tokenizer, user, system)
    if len(ids) + args.tokens > cfg.max_position_embeddings:
        raise ValueError(f"the prompt's {len(ids)} tokens + --tokens {args.tokens} exceed the model's "
                         f"{cfg.max_position_embeddings} positions (max_position_embeddings)")
    eos = eos_ids(tokenizer, generation_eos(model_dir))
    if not eos:
        raise ValueError(f"{model_dir}: the tokenizer names no end-of-sequence token")
    return cfg, text, ids, eos


def measure(args: argparse.Namespace, cfg: ModelConfig, text: str, prompt_ids: list[int], eos: list[int]) -> dict:
    """Loads both models (the first --layers layers) and runs the comparisons; every figure in one dict."""
    import jax
    import torch
    import transformers

    from rlsc_jax import hf, parity

    compute_dtype = args.compute_dtype or args.dtype
    tol = TOLERANCES[precision(args.dtype, compute_dtype)]
    start = time.perf_counter()
    model = hf.load(args.model, dtype=args.dtype, compute_dtype=compute_dtype, num_layers=args.layers)
    torch_model = torch_reference.load_model(args.model, args.dtype, args.layers)
    report = {"model": str(args.model), "layers": model.cfg.num_layers, "model_layers": cfg.num_layers,
              "dtype": args.dtype, "compute_dtype": compute_dtype, "transformers_dtype": args.dtype,
              "precision": precision(args.dtype, compute_dtype), "tolerances": dataclasses.asdict(tol),
              "versions": {"jax": jax.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__},
              "prompt": text, "template": args.template}
    report["forward"] = parity.forward(model, torch_model, prompt_ids, tol.hidden_relative)
    report["logits_allowed"] = tol.logits(report["forward"]["logits"]["reference_max"])
    report["greedy"] = parity.greedy(model, torch_model, prompt_ids, args.tokens, eos, report["logits_allowed"])
    if args.step:
        report["step"] = parity.step(model, torch_model, prompt_ids, args.tokens, eos)
    report["seconds"] = time.perf_counter() - start
    report["failures"] = failures(report, tol)
    return report


def failures(report: dict, tol: Tolerance) -> list[str]:
    """Each figure outside its tolerance, in words (empty: the implementations agree)."""
    out = []
    fwd = report["forward"]
    if fwd["first_diverging"] is not None:
        layer = fwd["hidden_states"][fwd["first_diverging_index"]]
        out.append(f"hidden states diverge at {fwd['first_diverging']} (relative {layer['relative']:.2e} > "
                   f"{tol.hidden_relative:.0e})")
    if fwd["logits"]["max_abs"] > report["logits_allowed"]:
        out.append(f"logits max |diff| {fwd['logits']['max_abs']:.3g} > {report['logits_allowed']:.3g}")
    div = report["greedy"]["divergence"]
    if div is not None and not div["tie"]:
        out.append(f"greedy tokens diverge at token {div['position']} and it is not a tie")
    step = report.get("step")
    if step is not None:
        for what, value, limit in (("loss relative error", step["loss"]["relative"], tol.loss_relative),
                                   ("log p error per token", step["logp"]["per_token"], tol.logp_per_token),
                                   ("gradient norm relative error", step["grad_norm"]["relative"],
                                    tol.grad_norm_relative)):
            if value > limit:
                out.append(f"step {what} {value:.2e} > {limit:.0e}")
        worst = step["updated_params"]["worst"]
        if worst["ratio"] > 1:
            out.append(f"updated {worst['tensor']} differs by {worst['max_abs']:.3g} > {worst['allowed']:.3g}")
    return out


def _forward_lines(fwd: dict, tol: Tolerance, allowed: float) -> list[str]:
    """The forward's table: each hidden state's max |Δ| and relative difference, then the logits."""
    lines = [f"forward, {fwd['tokens']}-token prompt    max |diff|  relative (threshold {tol.hidden_relative:.0e})"]
    lines += [f"  {h['name']:<28} {h['max_abs']:9.2e}  {h['relative']:9.2e}" for h in fwd["hidden_states"]]
    lg = fwd["logits"]
    lines.append(f"  {'logits':<28} {lg['max_abs']:9.2e}  {lg['relative']:9.2e}   (tolerance {allowed:.3g}); "
                 f"argmax agrees at {fwd['argmax_agree']}/{fwd['argmax_positions']} positions")
    lines.append(f"  first hidden state over the threshold: {fwd['first_diverging'] or 'none'}")
    return lines


def _greedy_line(greedy: dict) -> str:
    """How many greedy tokens agree; at a divergence, both tokens and margins, and whether it is a tie."""
    div = greedy["divergence"]
    head = f"greedy: {greedy['identical_leading']} identical leading tokens"
    if div is None:
        return f"{head}, the whole sequence ({len(greedy['rlsc_jax_tokens'])} of {greedy['requested']} requested)"
    if "rlsc_jax_margin" not in div:
        return f"{head}, then rlsc_jax {div['rlsc_jax_token']} vs transformers {div['transformers_token']}"
    kind = "a tie (both margins within the logits tolerance)" if div["tie"] else "NOT a tie"
    return (f"{head}, then rlsc_jax {div['rlsc_jax_token']} (margin {div['rlsc_jax_margin']:.3g}) vs transformers "
            f"{div['transformers_token']} (margin {div['transformers_margin']:.3g}): {kind}")


def _numbers(xs: list[float]) -> str:
    """A short list of log p values."""
    return "[" + ", ".join(f"{x:.4f}" for x in xs) + "]"


def _step_lines(step: dict) -> list[str]:
    """The step's figures, ours vs transformers."""
    loss, logp, norm, params = step["loss"], step["logp"], step["grad_norm"], step["updated_params"]
    return [
        (f"RLSC L2 step on {step['samples']} samples (T={step['temperature']}, lengths {step['completion_lengths']}, "
         f"AdamW lr {step['lr']:g}), rlsc_jax vs transformers:"),
        f"  loss       {loss['rlsc_jax']:.6g} vs {loss['transformers']:.6g} (relative {loss['relative']:.2e})",
        (f"  log p      {_numbers(logp['rlsc_jax'])} vs {_numbers(logp['transformers'])} "
         f"(max |diff| {logp['max_abs']:.2e}, {logp['per_token']:.2e} per token)"),
        f"  grad norm  {norm['rlsc_jax']:.6g} vs {norm['transformers']:.6g} (relative {norm['relative']:.2e})",
        (f"  updated parameters: max |diff| {params['max_abs']:.2e} = {params['in_lr']:.2f} lr "
         "(Adam's first step moves each weight by about lr, so at most 2 lr + rounding)")]


def format_report(report: dict) -> str:
    """The report as printed: setup, forward, greedy, step, verdict."""
    tol = Tolerance(**report["tolerances"])
    v = report["versions"]
    setup = (f"{report['model']}: {report['layers']} of {report['model_layers']} layers; rlsc_jax "
             f"{report['dtype']} params, {report['compute_dtype']} compute vs transformers {v['transformers']} "
             f"(torch {v['torch']}) {report['transformers_dtype']}")
    lines = [setup, *_forward_lines(report["forward"], tol, report["logits_allowed"]), _greedy_line(report["greedy"])]
    if "step" in report:
        lines += _step_lines(report["step"])
    verdict = "; ".join(report["failures"]) or f"every figure within the {report['precision']} tolerances"
    lines.append(f"verdict: {'FAIL' if report['failures'] else 'PASS'}: {verdict} ({report['seconds']:.1f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    """0 when every figure is within tolerance, 1 when not, 2 on bad input (one line on stderr, the --json path
    checked before anything runs), 130 on Ctrl-C."""
    args = parse_args(argv)

    def compare() -> dict:
        if args.json:
            check_writable(args.json, "--json")
        try:
            return measure(args, *check_inputs(args))
        except ModuleNotFoundError as e:
            raise ValueError(str(e)) from None

    code, report = run_command(compare, "interrupted")
    if code:
        return code
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report)
    return 1 if report["failures"] else 0


def cli() -> None:
    """`python -m rlsc_jax.compare`."""
    exit_process(main())


if __name__ == "__main__":
    cli()
