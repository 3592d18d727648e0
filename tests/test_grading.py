"""Answer extraction, math-verify equivalence, pass@k and majority voting."""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import pytest

from rlsc_jax.benchmarks import BENCHMARKS, load_benchmark
from rlsc_jax.grading import answer_classes, extract_answer, is_equivalent, last_boxed, majority_answer, pass_at_k


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $x = \\boxed{42}$.", "42"),
        ("first \\boxed{1}, then corrected: \\boxed{2}", "2"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("\\boxed{\\left\\{ 1, \\{2\\} \\right\\}}", "\\left\\{ 1, \\{2\\} \\right\\}"),
        ("\\boxed {7}", "7"),
        ("\\fbox{8}", "8"),
        ("\\boxed{3} and a truncated \\boxed{\\frac{1}{", "3"),
        ("echoing the instruction \\boxed{} after \\boxed{5}", "5"),
        ("She makes 9 * 2 = 18 dollars.\n#### 18", "18"),
        ("#### 1,000\n", "1,000"),
        ("Thus the answer is 12.", "12"),
        ("So, the final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The answer is: 3.5", "3.5"),
        ("The answer is 2.\nWait, no. The answer is 4.", "4"),
        ("\\boxed{9}\n#### 10\nThe answer is 11", "9"),
        ("I cannot solve this.", None),
        ("", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "gold, pred",
    [
        ("025", "25"),
        ("27.0", "27"),
        ("\\frac{1}{2}", "0.5"),
        ("\\frac{1}{2}", "1/2"),
        ("0.5", "\\frac12"),
        ("\\frac{\\sqrt2}{2}", "\\sqrt{2}/2"),
        ("3\\sqrt{2}", "\\sqrt{18}"),
        ("(x+1)^2", "x^2+2x+1"),
        ("(1,2]", "(1, 2]"),
        ("(-\\infty, 0) \\cup\\{1\\}", "(-\\infty,0)\\cup\\{1\\}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("10", "10\\text{ cm}"),
        ("10\\text{ cm}", "10"),
        ("18", "\\$18"),
        ("1000", "1,000"),
        ("5", "x = 5"),
        ("90^\\circ", "90"),
        ("\\text{Evelyn}", "Evelyn"),
    ],
)
def test_equivalent(gold: str, pred: str) -> None:
    assert is_equivalent(gold, pred)


@pytest.mark.parametrize(
    "gold, pred",
    [
        ("025", "26"),
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("(1,2]", "[1,2]"),
        ("(3, \\frac{\\pi}{2})", "(\\frac{\\pi}{2}, 3)"),
        ("\\pi", "3.14"),
        ("(x+1)^2", "x^2+1"),
        ("5", None),
        ("5", ""),
        ("", "5"),
        ("5", "}{"),
        ("5", "\\frac{"),
        ("5", "\\boxed{\\boxed{"),
    ],
)
def test_not_equivalent(gold: str, pred: str | None) -> None:
    assert not is_equivalent(gold, pred)


def test_equivalent_outside_main_thread() -> None:
    """math-verify's signal-based timeouts only work in the main thread; grading must not depend on it."""
    results: list[bool] = []
    worker = threading.Thread(
        target=lambda: results.extend([is_equivalent("\\frac{1}{2}", "0.5"), is_equivalent("7", "8")])
    )
    worker.start()
    worker.join()
    assert results == [True, False]


def test_model_output_end_to_end() -> None:
    completion = "Adding, $2 + 3 = 5$, so the total is $\\boxed{\\dfrac{10}{2}}$ apples."
    assert is_equivalent("5", extract_answer(completion))
    assert not is_equivalent("5", extract_answer("I am not sure."))


def _pass_at_k_brute_force(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) holding at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize(
    "n, c, k",
    [(1, 0, 1), (1, 1, 1), (5, 0, 3), (5, 2, 1), (5, 2, 3), (6, 1, 6), (8, 3, 2), (10, 4, 5), (10, 9, 2), (12, 5, 4)],
)
def test_pass_at_k_matches_enumeration(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable() -> None:
    assert pass_at_k(1000, 1, 1) == pytest.approx(1e-3)
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100))


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_majority_groups_equivalent_answers() -> None:
    assert majority_answer(["3", "1/2", "0.5", "3", "\\frac{1}{2}", None, None, None]) == ("1/2", 3)


def test_majority_ties_go_to_first_seen() -> None:
    assert majority_answer(["7", "2", "2", "7"]) == ("7", 2)


def test_majority_ignores_none_unless_all_none() -> None:
    assert majority_answer([None, None, "4"]) == ("4", 1)
    assert majority_answer([None, None]) == (None, 2)
    assert majority_answer([]) == (None, 0)


def test_answer_classes_number_by_votes_with_the_majority_first() -> None:
    assert answer_classes(["3", "1/2", "0.5", "3", "\\frac{1}{2}", None, "9"]) == [1, 0, 0, 1, 0, -1, 2]
    assert answer_classes(["7", "2", "2", "7"]) == [0, 1, 1, 0]  # the tie goes to the first seen, as majority_answer
    assert answer_classes([None, None]) == [-1, -1] and answer_classes([]) == []


def test_last_boxed_reads_real_minerva_solution() -> None:
    solution = "Hence\n\\[\nI(t)=\\boxed{I(0) e^{-\\frac{t}{R C}}\n}\n\\]"
    assert last_boxed(solution) == "I(0) e^{-\\frac{t}{R C}}"


# The data README's self-consistency floor (math-verify 0.9.0): gold vs a completion ending in \boxed{gold}.
README_FLOOR = {"aime24": 30, "amc23": 40, "gsm8k": 1319, "math500": 500, "minerva_math": 270, "olympiadbench": 673}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_gold_answers_grade_themselves(benchmark_dir: Path, name: str) -> None:
    """Every gold answer, written by a model as `... \\boxed{gold}`, is extracted and graded correct."""
    problems = load_benchmark(name, benchmark_dir)
    completions = [f"So the answer is $\\boxed{{{p.gold}}}$." for p in problems]
    failures = [p.gold for p, text in zip(problems, completions) if not is_equivalent(p.gold, extract_answer(text))]
    assert len(problems) - len(failures) >= README_FLOOR[name], failures[:5]


@pytest.mark.parametrize("gold,pred,equal", [
    ("yes", "sey", False), ("no", "on", False), ("cat", "act", False),  # math-verify alone: products, all True
    ("yes", "Yes", True), ("yes", "\\text{yes}", True), ("no", "No.", True), ("no", "yes", False),
    ("Infinitely many", "infinitely  many", True), ("yes", "7", False),
])
def test_word_answers_compare_as_words_not_products(gold, pred, equal):
    assert is_equivalent(gold, pred) is equal
