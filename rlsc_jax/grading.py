"""Answer grading as the field does it: extract the final answer, compare with math-verify, pass@k, maj@k, majority.

Grading has a time budget: extraction is linear in the completion's length, and parsing and comparing one
answer costs at most about `ANSWER_BUDGET` seconds in total, its failures (timeouts) remembered.
"""

from __future__ import annotations

import gc
import logging
import re
import signal
import threading
import time
from collections import Counter
from functools import lru_cache
from math import comb

import numpy as np
from math_verify import parse, verify

# CPU seconds (of the grading thread, so a busy machine does not shrink them) that parsing and comparing one
# answer may cost, all calls together; an answer that runs out compares unequal to every other. Enforced with
# SIGALRM, so in the main thread only: elsewhere just the size limits bound the work (an answer longer or more
# deeply nested is not parsed; benchmark golds reach 210 characters, depth 3).
ANSWER_BUDGET = 1.0
MAX_ANSWER_CHARS = 1000
MAX_NESTING = 20

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_NON_SPACE = re.compile(r"\S")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+)", re.IGNORECASE)


class _QuietTimeoutNotice(logging.Filter):
    """math-verify warns that its own (signal.alarm) timeouts are off; grading's budget replaces them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_QuietTimeoutNotice())


def _closing_braces(text: str) -> dict[int, int]:
    """Each `{`'s position -> the position of the `}` closing it (every brace counts, escaped or not); one pass."""
    closing, open_at = {}, []
    for match in _BRACE.finditer(text):
        if match.group() == "{":
            open_at.append(match.start())
        elif open_at:
            closing[open_at.pop()] = match.start()
    return closing


def last_boxed(text: str) -> str | None:
    """Content of the last closed, non-empty `\\boxed{...}` / `\\fbox{...}` (balanced braces); None if none."""
    boxes = list(_BOX_OPEN.finditer(text))
    closing = _closing_braces(text) if boxes else {}
    for match in reversed(boxes):
        end = closing.get(match.end() - 1)
        if end is not None and _NON_SPACE.search(text, match.end(), end):
            return text[match.end():end].strip()
    return None


def _short_trailing_space(text: str) -> str:
    """`text` with its trailing whitespace cut to at most a newline and a space, kept only if present: what
    `_ANSWER_IS` can tell of it, without its two `\\s*` backtracking quadratically over a long run."""
    body = text.rstrip()
    tail = text[len(body):]
    return body + ("\n" if "\n" in tail else "") + (" " if tail.replace("\n", "") else "")


def extract_answer(text: str) -> str | None:
    """The model's final answer: the last box, else the text after the last `####`, else after "the answer is"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern, searched in ((_HASHES, text), (_ANSWER_IS, _short_trailing_space(text))):
        matches = pattern.findall(searched)
        if matches:
            answer = matches[-1].strip().rstrip(" .$").lstrip(" $")
            if answer:
                return answer
    return None


class _OutOfTime(BaseException):
    """Raised by SIGALRM when a grading budget is spent; a BaseException, so `except Exception` in math-verify
    or sympy cannot swallow it."""


_RAN_OUT = object()
_TICK = 0.02  # seconds between checks of the CPU time used


def _within(seconds: float, fn):
    """fn(), or `_RAN_OUT` once it has used `seconds` of this thread's CPU time (in the main thread; elsewhere
    fn() runs unlimited). Checked every `_TICK`, so a swallowed `_OutOfTime` is raised again. The garbage
    collector is paused meanwhile: a full collection of a large process's heap (half a second and more) is not
    this answer's cost, and its finalizers are no place for `_OutOfTime`."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _ticking(seconds, fn)
    finally:
        if collecting:
            gc.enable()


def _ticking(seconds: float, fn):
    """`_within`'s clock: fn() under a SIGALRM every `_TICK` that raises `_OutOfTime` past `seconds`."""
    deadline = time.thread_time() + seconds

    def ring(signum, frame) -> None:
        if time.thread_time() >= deadline:
            raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, ring)
    try:
        signal.setitimer(signal.ITIMER_REAL, _TICK, _TICK)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _OutOfTime:
        return _RAN_OUT
    finally:
        signal.signal(signal.SIGALRM, previous)


def _timed(seconds: float, fn) -> tuple:
    """(fn(), or `_RAN_OUT` if it ran past `seconds` or none are left; the CPU seconds it took)."""
    start = time.thread_time()
    result = _within(seconds, fn) if seconds > 0 else _RAN_OUT
    return result, time.thread_time() - start


def _nesting(text: str) -> int:
    """The deepest nesting of `{}` and `()` in `text`."""
    depth = deepest = 0
    for match in re.finditer(r"[{}()]", text):
        depth += 1 if match.group() in "{(" else -1
        deepest = max(deepest, depth)
    return deepest


class _Answer:
    """One answer's math-verify parse (empty if it failed, ran out of time or is too large), the grading time it
    has used, and whether comparing it with 0 fits its budget (None: not yet tried)."""

    def __init__(self, parsed: tuple = (), spent: float = 0.0) -> None:
        self.parsed, self.spent, self.cheap = parsed, spent, None

    def left(self) -> float:
        return ANSWER_BUDGET - self.spent


@lru_cache(maxsize=8192)
def _answer(answer: str) -> _Answer:
    """`answer` parsed by math-verify inside `\\boxed{}` (robust to stray `$` inside); cached with its budget,
    a failure included, so votes pay once."""
    if len(answer) > MAX_ANSWER_CHARS or _nesting(answer) > MAX_NESTING:
        return _Answer()
    parsed, took = _timed(ANSWER_BUDGET, lambda: tuple(parse(f"\\boxed{{{answer.strip()}}}", parsing_timeout=None)))
    return _Answer(() if parsed is _RAN_OUT else parsed, took)


_ZERO = parse("$0$", parsing_timeout=None)


def _is_cheap(entry: _Answer) -> bool:
    """Whether this answer compares with 0 within its remaining budget, asked once, after a comparison ran out:
    it is blamed on the answer whose value is costly (such as 9^{9^{9^9}}), not on the other. A costly answer
    has spent its budget."""
    if entry.cheap is None:
        result, took = _timed(entry.left(), lambda: verify(_ZERO, list(entry.parsed), timeout_seconds=None))
        entry.cheap = result is not _RAN_OUT
        entry.spent = entry.spent + took if entry.cheap else ANSWER_BUDGET
    return entry.cheap


def _compare(gold: _Answer, pred: _Answer) -> bool:
    """math-verify's verdict within 3/4 of the time either answer has left (the rest is for `_is_cheap`), charged
    to `pred`, the answer being graded or voted in. A comparison that runs out is False and charged to the
    answers found costly, or to `pred` if neither is."""
    seconds = min(gold.left(), pred.left())
    if not gold.parsed or not pred.parsed or seconds <= 0:
        return False
    result, took = _timed(0.75 * seconds, lambda: verify(list(gold.parsed), list(pred.parsed), timeout_seconds=None))
    if result is not _RAN_OUT:
        pred.spent += took
        return bool(result)
    pair = {gold, pred}
    for entry in pair:  # for now, so that a costly answer's `_is_cheap` gets only what it has left
        entry.spent += took
    blamed = {entry for entry in pair if not _is_cheap(entry)} or {pred}
    for entry in pair - blamed:
        entry.spent -= took
    return False


_WORDS = re.compile(r"[a-z]+(?:[ '\-][a-z]+)*")


def plain_words(answer: str) -> str | None:
    """The answer normalised (lower case, `\\text{}`, `$` and a final period removed) if it is plain words of
    two or more letters, such as "yes" or "Infinitely many"; None for anything else (numbers, LaTeX)."""
    text = answer.strip().strip("$").strip()
    boxed_text = re.fullmatch(r"\\(?:text|textbf|mathrm)\{(.*)\}", text)
    text = " ".join((boxed_text.group(1) if boxed_text else text).rstrip(".").lower().split())
    return text if _WORDS.fullmatch(text) and sum(c.isalpha() for c in text) >= 2 else None


def is_equivalent(gold: str, pred: str | None) -> bool:
    """Whether `pred` is mathematically equal to `gold` (math-verify, gold first); False on anything unparseable.

    Two plain-word answers are compared as normalised strings: math-verify reads "yes" as the product
    y*e*s, which would make "sey" (and every anagram) equal to it.
    """
    if pred is None or not pred.strip() or not gold.strip():
        return False
    gold_words, pred_words = plain_words(gold), plain_words(pred)
    if gold_words is not None and pred_words is not None:
        return gold_words == pred_words
    try:
        return _compare(_answer(gold), _answer(pred))
    except Exception:
        return False


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), as a product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def answer_groups(answers: list[str | None]) -> list[int | None]:
    """Each answer's equivalence group (numbered in order of first appearance; None for no answer): the votes."""
    groups: list[list[str]] = []  # each group: its representative (first seen) first, then exact strings seen
    out: list[int | None] = []
    for answer in answers:
        if answer is None:
            out.append(None)
            continue
        key = answer.strip()
        index = next((i for i, group in enumerate(groups) if key in group), None)
        if index is None:
            index = next((i for i, group in enumerate(groups) if is_equivalent(group[0], key)), None)
        if index is None:
            groups.append([key])
            index = len(groups) - 1
        elif key not in groups[index]:
            groups[index].append(key)
        out.append(index)
    return out


def majority_answer(answers: list[str | None]) -> tuple[str | None, int]:
    """The most common answer up to equivalence and its count (ties: first seen); None wins only if all are None."""
    groups = answer_groups(answers)
    counts = Counter(g for g in groups if g is not None)
    if not counts:
        return None, len(answers)
    best = min(counts, key=lambda g: (-counts[g], g))
    return answers[groups.index(best)].strip(), counts[best]


def maj_at_k(counts: list[int], correct: list[bool], unanswered: int, k: int) -> float:
    """Exact expected correctness of the majority vote over k of the n samples drawn at random without replacement.

    `counts[g]` samples gave answer group g, `correct[g]` says whether g matches the gold, `unanswered` samples
    gave no answer (they never win). A tie between groups scores 1 / (groups tied). Like pass@k, an unbiased
    estimate of the vote of k fresh samples.
    """
    n = sum(counts) + unanswered
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs 1 <= k <= n, got n={n}, k={k}")
    total = 0.0
    for g, (count, ok) in enumerate(zip(counts, correct)):
        if ok:
            others = counts[:g] + counts[g + 1:]
            total += sum(comb(count, j) * _tied_ways(others, unanswered, j, k - j) for j in range(1, min(count, k) + 1))
    return total / comb(n, k)


def _tied_ways(others: list[int], unanswered: int, j: int, rest: int) -> float:
    """Ways to draw `rest` samples from the other groups and the unanswered ones with no group above j votes,
    each weighted 1 / (1 + other groups at exactly j): a dynamic programme over the groups."""
    ways = np.zeros((rest + 1, len(others) + 1))  # [samples drawn so far, groups tied at j]
    ways[:, 0] = [comb(unanswered, s) for s in range(rest + 1)]
    for count in others:
        grown = np.zeros_like(ways)
        for t in range(min(count, j, rest) + 1):
            tie = int(t == j)
            grown[t:, tie:] += comb(count, t) * ways[:rest + 1 - t, :ways.shape[1] - tie]
        ways = grown
    return float(ways[rest] @ (1.0 / np.arange(1, len(others) + 2)))


def answer_classes(answers: list[str | None]) -> list[int]:
    """Each answer's equivalence class numbered by votes: 0 is `majority_answer`'s answer, 1 the next most
    common, ... (ties: first seen first); -1 for no answer. What a majority-vote reward needs, as integers."""
    groups = answer_groups(answers)
    counts = Counter(g for g in groups if g is not None)
    rank = {g: r for r, g in enumerate(sorted(counts, key=lambda g: (-counts[g], g)))}
    return [-1 if g is None else rank[g] for g in groups]
