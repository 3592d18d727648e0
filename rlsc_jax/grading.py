"""Answer grading as the field does it: extract the final answer, compare with math-verify, pass@k, maj@k, majority."""

from __future__ import annotations

import re
import threading
from collections import Counter
from functools import lru_cache
from math import comb

import numpy as np
from math_verify import parse, verify
from math_verify.errors import TimeoutException

# math-verify's own per-call limits (seconds); they rely on signal.alarm, so only in the main thread.
PARSE_TIMEOUT = 5
VERIFY_TIMEOUT = 5

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+)", re.IGNORECASE)


def _balanced(text: str, start: int) -> str | None:
    """The text from `start` up to the brace closing the one just before it; None if never closed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last closed, non-empty `\\boxed{...}` / `\\fbox{...}` (balanced braces); None if none."""
    for match in reversed(list(_BOX_OPEN.finditer(text))):
        content = _balanced(text, match.end())
        if content is not None and content.strip():
            return content.strip()
    return None


def extract_answer(text: str) -> str | None:
    """The model's final answer: the last box, else the text after the last `####`, else after "the answer is"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (_HASHES, _ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            answer = matches[-1].strip().rstrip(" .$").lstrip(" $")
            if answer:
                return answer
    return None


@lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple:
    """math-verify's parse of a bare answer wrapped in `\\boxed{}` (robust to stray `$` inside); cached for voting."""
    timeout = PARSE_TIMEOUT if threading.current_thread() is threading.main_thread() else None
    return tuple(parse(f"\\boxed{{{answer.strip()}}}", parsing_timeout=timeout))


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
    timeout = VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None
    try:
        return bool(verify(list(_parse(gold)), list(_parse(pred)), timeout_seconds=timeout))
    except (Exception, TimeoutException):
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
