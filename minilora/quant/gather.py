"""The dequantize's table gather, whole or in pieces: the same words, whichever this machine runs faster.

    words[i] = table[packed[i]]          packed uint8 (n,), table uint64 (256,) -> words uint64 (n,)

NumPy's ``take`` first widens the whole uint8 index array to intp, 8 bytes per index (3.5 MB for
a (1536, 576) weight), and then gathers. Gathering in pieces of ``PIECE`` bytes keeps each piece's
widened indices in the core's cache, at the price of one call per piece. Which wins is the
machine's: on a 2-core Intel Xeon VM (2 MiB of L2 per core, 2026-12-03) pieces were 20% faster
for a (1536, 576) weight and 1.7x for a 4096 x 4096 one; on a 2-core AMD EPYC VM (512 KiB of L2)
they were 10-37% slower for the (1536, 576) weight (docs/speed.md, "Quantization"). So the first
input of at least ``MIN_BYTES`` in a process times both ways, ``ROUNDS`` each in alternation, and
the faster (``choose``) serves every input of that size after it (``use_pieces``); ``set_pieces``
fixes the choice instead. Both give the same words.
"""
from __future__ import annotations

import time

PIECE = 1 << 15      # bytes of packed input per take: its intp indices (256 KiB) and words stay in L2
MIN_BYTES = 1 << 17  # smaller inputs take one call: at most 1 MiB of widened indices, little to win
ROUNDS = 3
_CHOICE: dict = {}   # {"pieces": bool} once chosen or set


def set_pieces(pieces: bool | None) -> None:
    """Gather in pieces (True), whole (False), or choose by timing at the next large gather (None)."""
    _CHOICE.pop("pieces", None)
    if pieces is not None:
        _CHOICE["pieces"] = bool(pieces)


def gather_words(np, table, packed, out, pieces: bool) -> None:
    """out[i] = table[packed[i]] (NumPy; out uint64 of packed's length), in one call or in pieces."""
    if not pieces:
        np.take(table, packed, out=out, mode="clip")  # uint8 indices are never out of range
        return
    for lo in range(0, packed.shape[0], PIECE):
        np.take(table, packed[lo:lo + PIECE], out=out[lo:lo + PIECE], mode="clip")


def use_pieces(np, table, packed, out) -> bool:
    """Whether to gather this input in pieces: never below MIN_BYTES, else the process's choice,
    made on this input (one thread, writing ``out``) when none was made yet."""
    if packed.shape[0] < MIN_BYTES:
        return False
    if "pieces" not in _CHOICE:
        def timed(pieces):
            t0 = time.perf_counter()
            gather_words(np, table, packed, out, pieces)
            return time.perf_counter() - t0
        _CHOICE["pieces"] = choose(lambda: timed(False), lambda: timed(True))
    return _CHOICE["pieces"]


def choose(time_whole, time_pieces, rounds: int = ROUNDS) -> bool:
    """True when pieces ran faster: the best of ``rounds`` timings each, the order alternating per round."""
    whole, pieces = [], []
    order = [(time_whole, whole), (time_pieces, pieces)]
    for r in range(rounds):
        for timer, times in (order if r % 2 == 0 else order[::-1]):
            times.append(timer())
    return min(pieces) < min(whole)
