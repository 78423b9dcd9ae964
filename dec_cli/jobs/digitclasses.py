"""The label set of the digits benchmark: which digit tuples are its classes.

Class ``k`` has base digit ``i = k % 10`` in round ``r = k // 10``: the tuple is
``(i, i + a_r, i + b_r)`` (mod 10, truncated to the number of digits) with one
fixed offset pair ``(a_r, b_r)`` per round. Every round uses every base digit
once, so with a multiple of 10 classes each position shows every digit value
equally often; from two rounds on, no single position determines the class,
so a model must read every digit. The first ten rounds (100 classes, all
digit pairs) are those of every earlier version; three digits go on to 100
rounds, one per offset pair, which gives all 1000 three-digit numbers.
Independent of any seed. Nothing here prints or exits.
"""

from __future__ import annotations

import numpy as np

from dec_cli.core.errors import UsageError

#: Offsets of the first ten rounds (position 0 is the round's base digit).
_SECOND = (1, 4, 7, 2, 5, 8, 3, 6, 9, 0)
_THIRD = (3, 8, 5, 6, 1, 9, 2, 7, 4, 0)
#: Fixed seed of the order of the other 90 offset pairs (never the user's seed).
_ROUND_SEED = 20261204
#: Most classes per number of digits: all pairs, all three-digit numbers.
MAX_CLASSES = {2: 100, 3: 1000}


def _offset_pairs() -> list[tuple[int, int]]:
    """(a_r, b_r) of every round: the ten historical pairs, then the other 90 in a fixed shuffled order."""
    first = list(zip(_SECOND, _THIRD))
    rest = [(a, b) for a in range(10) for b in range(10) if (a, b) not in set(first)]
    order = np.random.default_rng(_ROUND_SEED).permutation(len(rest))
    return first + [rest[int(j)] for j in order]


_PAIRS = _offset_pairs()


def class_set(digits: int, n_classes: int) -> list[tuple[int, ...]]:
    """The ``n_classes`` digit tuples used as classes (see the module docstring); 2-100 pairs, 2-1000 triples."""
    if digits not in MAX_CLASSES:
        raise UsageError(f"--digits must be 2 or 3; got {digits}")
    most = MAX_CLASSES[digits]
    if not 2 <= n_classes <= most:
        hint = "20 (the default) keeps the task CPU-sized" + ("; --digits 3 allows up to 1000" if digits == 2 else "")
        raise UsageError(f"--classes must be between 2 and {most} with --digits {digits}; got {n_classes}", hint)
    out = []
    for k in range(n_classes):
        r, i = divmod(k, 10)
        a, b = _PAIRS[r]
        out.append((i, (i + a) % 10, (i + b) % 10)[:digits])
    return out
