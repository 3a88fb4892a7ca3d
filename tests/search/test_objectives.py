"""The scored documents: needle documents hide a key at a seeded depth and score only its answer; guard
windows cut the documents into original-window pieces."""

import pytest

from ctxext.errors import CtxextError
from ctxext.evaluation.passkey import QUESTION
from ctxext.search.objectives import (ScoredSequence, fingerprint, given_needles, guard_windows, long_documents,
                                      needle_documents)
from evalkit import byte_tokenizer

TEXT = " ".join(f"word{i % 37}" for i in range(400))


def test_needle_documents_hide_a_key_and_score_exactly_its_answer():
    tokenizer = byte_tokenizer()  # one token per byte, BOS in front
    docs = long_documents(tokenizer, [TEXT, TEXT[7:], TEXT[13:]], 600, samples=3)
    needles = needle_documents(tokenizer, docs, 512, seed=0)
    depths = []
    for d in needles:
        assert len(d.input_ids) == 512 and d.input_ids[0] == tokenizer.bos_token_id
        text = tokenizer.decode(d.input_ids, skip_special_tokens=True)
        answer = tokenizer.decode([d.input_ids[t] for t in d.scored])
        key = answer.strip()
        assert len(key) == 5 and key.isdigit() and answer == " " + key
        assert text.endswith(QUESTION + answer)
        assert f"The pass key is {key}. Remember it. {key} is the pass key." in text
        assert list(d.scored) == list(range(512 - len(d.scored), 512))
        depths.append(text.index("The pass key is") / len(text))
    assert len({round(x, 2) for x in depths}) == 3  # each document its own depth
    assert needle_documents(tokenizer, docs, 512, seed=0) == needles  # seeded
    assert needle_documents(tokenizer, docs, 512, seed=1) != needles
    with pytest.raises(CtxextError, match="cannot hold its key line"):
        needle_documents(tokenizer, docs, 100, seed=0)


def test_given_needles_score_the_answer_ids_and_bad_pairs_are_refused():
    (s,) = given_needles([([1, 5, 6, 7], [8, 9])])
    assert s == ScoredSequence((1, 5, 6, 7, 8, 9), (4, 5))
    with pytest.raises(CtxextError, match="empty prompt or answer"):
        given_needles([([1, 2], [])])
    with pytest.raises(CtxextError, match="is not a pair"):
        given_needles([[1, 2, 3]])


def test_guard_windows_are_disjoint_original_window_pieces():
    seqs = [ScoredSequence.all_tokens(range(300)), ScoredSequence.all_tokens(range(100, 230))]
    windows = guard_windows(seqs, 64)
    assert [w.input_ids[0] for w in windows] == [0, 64, 128, 192, 100, 164]
    assert all(len(w.input_ids) == 64 and w.scored == tuple(range(1, 64)) for w in windows)
    with pytest.raises(CtxextError, match="shorter than the original window"):
        guard_windows([ScoredSequence.all_tokens(range(10))], 64)
    assert fingerprint(windows) == fingerprint(guard_windows(seqs, 64)) != fingerprint(windows[:-1])
