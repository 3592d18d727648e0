"""The paper's pipeline in one command: plan, evaluate the base model, train, evaluate the result with the same
protocol, and write the before/after table and both pass@k curves.

    python -m rlsc_jax.paper --config paper_qwen25_math_1.5b model=/data/Qwen2.5-Math-1.5B [key=value ...]
        [--protocol qwen-math] [--benchmarks aime24,math500] [--limit N] [--eval-set key=value ...]
        [--hardware h100-80gb] [--no-plan]

(`rlsc-paper` once installed.) Each part is the project's own command, run in order into the config's
`output_dir` (OUT): `rlsc-plan` (a subprocess: it simulates this host's device count on the CPU; with
`--hardware` a config that does not fit stops here, exit 3) -> OUT/plan.json; `rlsc-eval` of `model` ->
OUT/eval-base; `rlsc-train` -> OUT (checkpoints, final/); `rlsc-eval` of OUT/final with `--compare
OUT/eval-base` -> OUT/eval-final (its pass_at_k.png holds both curves); then OUT/before_after.md. Rerunning the
same command resumes: the evaluations skip the problems already graded, training restarts from its newest
checkpoint (or does nothing when done). One host; several hosts run the parts themselves
(docs/running-the-paper.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rlsc_jax.cli import exit_process, prog, run_command
from rlsc_jax.protocols import DEFAULT_PROTOCOL

TABLE = "before_after.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("paper"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training config, as for train.py (a path or a shipped name)")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL, help=f"evaluation protocol (default {DEFAULT_PROTOCOL})")
    p.add_argument("--benchmarks", help="comma-separated benchmarks to evaluate (default: all six)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    p.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an eval.py setting for both evaluations (e.g. dtype=bfloat16 batch_size=32); repeatable")
    p.add_argument("--hardware", help="plan: judge the config against this device (a100-80gb, h100-80gb, tpu-v5e, "
                                      "tpu-v5p) and stop if it does not fit")
    p.add_argument("--no-plan", action="store_true", help="skip the plan")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    return p.parse_intermixed_args(argv)


def _eval_argv(args: argparse.Namespace, model: str | Path, out: Path) -> list[str]:
    """eval.py's command line for one of the two evaluations: the same protocol, benchmarks and settings."""
    argv = ["--model", str(model), "--output-dir", str(out), "--protocol", args.protocol]
    argv += ["--benchmarks", args.benchmarks] if args.benchmarks else []
    argv += ["--limit", str(args.limit)] if args.limit is not None else []
    return argv + args.eval_set


def _plan(args: argparse.Namespace, cfg, out: Path) -> int:
    """`rlsc-plan` for this host's devices and the training prompts' longest length, as a subprocess."""
    import jax

    from rlsc_jax.evaluation import prompt_ids
    from rlsc_jax.loop import training_questions
    from rlsc_jax.tokenizer import load_tokenizer
    questions = training_questions(cfg)  # what train.py will read, `data.offset` included
    longest = max(map(len, prompt_ids(load_tokenizer(cfg.model), questions, cfg.data.template).values()))
    command = [sys.executable, "-m", "rlsc_jax.plan", *(["--config", args.config] if args.config else []),
               *args.overrides, "--devices", str(jax.device_count()), "--prompt-len", str(longest),
               "--json", str(out / "plan.json")]
    command += ["--hardware", args.hardware, "--strict"] if args.hardware else []
    print(f"== plan: {jax.device_count()} devices, longest prompt {longest} tokens", flush=True)
    paths = [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)}).returncode  # a checkout too


def write_table(out: Path, protocol: str) -> Path:
    """OUT/before_after.md: per benchmark, `report.before_after_table` of the base and the trained model's
    results, with their truncation warnings; also printed."""
    from rlsc_jax.report import before_after_table, truncation_warning
    before, after = (json.loads((out / name / "results.json").read_text()) for name in ("eval-base", "eval-final"))
    lines = [f"# Before and after training: protocol {protocol}", "",
             f"base: {before['model']}; trained: {after['model']}", ""]
    for name, summary in before["benchmarks"].items():
        lines += [f"## {name} ({summary['problems']} problems)", "",
                  before_after_table(summary, after["benchmarks"][name]), ""]
        lines += [w for w in (truncation_warning(f"{name} {label}", s[name]) for label, s in
                              (("before", before["benchmarks"]), ("after", after["benchmarks"]))) if w]
    path = out / TABLE
    from rlsc_jax.files import atomic_write_text
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    """The first non-zero exit code of a part (each prints its own one-line error), else 0."""
    args = parse_args(argv)

    def setup():
        from rlsc_jax.config import load_config
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit {args.limit}: must be >= 1")
        cfg = load_config(args.config, args.overrides)
        if not cfg.export_final:
            raise ValueError("export_final=false: the pipeline evaluates the trained model's final/")
        return cfg

    code, cfg = run_command(setup, "interrupted")
    if code:
        return code
    from rlsc_jax import eval as eval_command, train as train_command
    out = Path(cfg.output_dir)
    if not args.no_plan:
        code, code_of_plan = run_command(lambda: _plan(args, cfg, out), "interrupted")
        if code or code_of_plan:
            return code or code_of_plan
    print(f"== evaluate the base model: {out / 'eval-base'}", flush=True)
    code = eval_command.main(_eval_argv(args, cfg.model, out / "eval-base"))
    if code:
        return code
    print(f"== train: {out}", flush=True)
    code = train_command.main([*(["--config", args.config] if args.config else []), *args.overrides])
    if code:
        return code
    print(f"== evaluate the trained model: {out / 'eval-final'}", flush=True)
    code = eval_command.main([*_eval_argv(args, out / "final", out / "eval-final"), "--compare", str(out / "eval-base")])
    if code:
        return code
    code, table = run_command(lambda: write_table(out, args.protocol), "interrupted")
    if not code:
        print(f"paper pipeline done: {table}; pass@k before and after: {out / 'eval-final' / 'pass_at_k.png'}")
    return code


def cli() -> None:
    """The `rlsc-paper` console script."""
    exit_process(main())


if __name__ == "__main__":
    cli()
