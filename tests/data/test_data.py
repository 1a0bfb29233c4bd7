"""Generated tasks, example encoding with prompt masking, deterministic batches."""
import numpy as np
import pytest

from minilora.data import IGNORE_INDEX, TASKS, Batches, CharTokenizer, encode_example, task_splits


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_splits_are_reproducible_and_disjoint(name):
    train, evals = task_splits(name, n_train=300, n_eval=40, seed=3)
    again, _ = task_splits(name, n_train=300, n_eval=40, seed=3)
    assert train == again
    assert len(evals) == 40 and len({p for p, _ in evals}) == 40
    assert not {p for p, _ in train} & {p for p, _ in evals}


def test_dates_task_writes_the_date_out():
    train, _ = task_splits("dates", n_train=50, n_eval=5, seed=0)
    months = {"January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December"}
    for prompt, completion in train:
        iso = prompt.split("Date: ")[1].split("\n")[0]
        year, month, day = (int(s) for s in iso.split("-"))
        d, m, y = completion.split()
        assert int(d) == day and int(y) == year and m in months


def test_encode_example_masks_the_prompt_and_predicts_the_completion():
    tok = CharTokenizer()
    ids, labels = encode_example(tok, "ab=", "cd", max_len=64)
    full = tok.encode("ab=") + tok.encode("cd") + [tok.eos_token_id]
    assert ids == full[:-1]
    assert labels == [IGNORE_INDEX, IGNORE_INDEX] + full[3:]
    unmasked = encode_example(tok, "ab=", "cd", max_len=64, mask_prompt=False)[1]
    assert unmasked == full[1:]


def test_batches_depend_only_on_seed_and_step():
    tok = CharTokenizer()
    train, _ = task_splits("sort", n_train=100, n_eval=5)
    enc = [encode_example(tok, p, c, 32) for p, c in train]
    b1, b2 = Batches(enc, 8, tok.pad_token_id, seed=5), Batches(enc, 8, tok.pad_token_id, seed=5)
    for step in (0, 7, 7, 123):
        np.testing.assert_array_equal(b1(step)[0], b2(step)[0])
    assert not np.array_equal(b1(0)[0], b1(1)[0])
    ids, labels = b1(0)
    assert ids.shape == labels.shape and ids.dtype == np.int64
    assert np.all(labels[ids == tok.pad_token_id] == IGNORE_INDEX)


def test_char_tokenizer_round_trip_and_clear_error():
    tok = CharTokenizer()
    assert tok.decode(tok.encode("sort 123 = 123")) == "sort 123 = 123"
    with pytest.raises(ValueError, match="printable"):
        tok.encode("é")
