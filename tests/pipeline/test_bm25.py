"""BM25 scores against the formula written out by hand, and the ranking's order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.query.bm25 import BM25Index, tokenize

DOCS = ["a red circle moves left", "a blue square", "red red red", "", "The circle: RED!"]


def _by_hand(docs: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Robertson and Zaragoza's BM25 with Lucene's IDF, term by term, without the index."""
    tokens = [tokenize(d) for d in docs]
    avgdl = sum(map(len, tokens)) / len(tokens)
    scores = []
    for doc in tokens:
        score = 0.0
        for term in tokenize(query):
            n = sum(term in d for d in tokens)
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(score)
    return scores


def test_tokenize_lowercases_and_splits_on_punctuation() -> None:
    assert tokenize("A red-circle, moving_fast! 2 CATS") == ["a", "red", "circle", "moving", "fast", "2", "cats"]
    assert tokenize("  ?! ") == []


@pytest.mark.parametrize("query", ["red circle", "square", "red red", "nothing here", "circle moves left"])
def test_scores_equal_the_formula(query: str) -> None:
    np.testing.assert_allclose(BM25Index.build(DOCS).scores(query), _by_hand(DOCS, query), rtol=1e-12)


def test_top_ranks_best_first_and_leaves_out_documents_without_a_query_term() -> None:
    index = BM25Index.build(DOCS)
    top = index.top("red circle", limit=10)
    assert [i for i, _ in top] == [4, 0, 2]  # both words in a short text, both in a long one, one word only
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert index.top("red circle", limit=1) == top[:1]
    assert index.top("zebra", limit=3) == []


def test_equal_scores_keep_document_order() -> None:
    assert [i for i, _ in BM25Index.build(["x y", "z", "x y", "x y"]).top("x", 10)] == [0, 2, 3]


def test_an_empty_index_and_bad_parameters() -> None:
    assert BM25Index.build([]).top("red", 5) == []
    with pytest.raises(ValueError, match="b must be in"):
        BM25Index.build(DOCS, b=1.5)
    with pytest.raises(ValueError, match="limit must be an int >= 1, got 0"):
        BM25Index.build(DOCS).top("red", 0)
