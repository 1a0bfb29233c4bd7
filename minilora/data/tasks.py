"""Generated tasks with an exact-match metric: (prompt, completion) pairs from a fixed seed.

Each task is a function ``make(rng) -> (prompt, completion)``; ``task_splits`` draws a train and an
eval split with no prompt shared between them, so eval measures generalisation, not memory.
"""
from __future__ import annotations

import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
_WORDS = ("apple river stone cloud garden silver winter forest candle mirror planet rocket violin "
          "harbor meadow puzzle lantern copper falcon island jungle marble orbit pepper quartz saddle "
          "thunder velvet walnut yellow zephyr anchor bridge castle desert engine feather glacier "
          "hammer ivory jacket kettle ladder magnet needle oyster pillow rabbit spider tomato").split()


def sort_digits(rng: random.Random):
    """'sort 4913 =' -> ' 1349'."""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 7)))
    return f"sort {digits} =", " " + "".join(sorted(digits))


def reverse_word(rng: random.Random):
    """'reverse garden =' -> ' nedrag'."""
    word = rng.choice(_WORDS) + rng.choice(["", "s", "ed", "er"])
    return f"reverse {word} =", " " + word[::-1]


def date_format(rng: random.Random):
    """'Date: 2024-03-05\\nWritten out:' -> ' 5 March 2024' (ISO date to day, month name, year)."""
    year, month, day = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    return f"Date: {year:04d}-{month:02d}-{day:02d}\nWritten out:", f" {day} {MONTHS[month - 1]} {year}"


def unit_conversion(rng: random.Random):
    """'Convert 3.5 km to m:' -> ' 3500 m'."""
    value = rng.randint(1, 99) / rng.choice([1, 10])
    meters = round(value * 1000)
    return f"Convert {value:g} km to m:", f" {meters} m"


TASKS = {"sort": sort_digits, "reverse": reverse_word, "dates": date_format, "units": unit_conversion}


def task_splits(name: str, n_train: int = 2000, n_eval: int = 100, seed: int = 0):
    """(train, eval) lists of (prompt, completion) for task ``name``; eval prompts never in train."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {sorted(TASKS)}")
    make = TASKS[name]
    rng = random.Random(seed)
    eval_set, seen = [], set()
    while len(eval_set) < n_eval:
        prompt, completion = make(rng)
        if prompt not in seen:
            seen.add(prompt)
            eval_set.append((prompt, completion))
    train, attempts = [], 0
    while len(train) < n_train and attempts < 50 * n_train:
        attempts += 1
        prompt, completion = make(rng)
        if prompt not in seen:
            train.append((prompt, completion))
    return train, eval_set
