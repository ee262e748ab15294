"""Okapi BM25 ranking of short texts: a tokenizer, an inverted index and its scores. No I/O, no Ray.

The search job (``jobs/search.py``) ranks the answers and captions of a results folder with it. DuckDB's
full-text search extension would do the same, but it is not part of the DuckDB wheel: ``INSTALL fts`` downloads
it at run time from DuckDB's own extension server, which a cluster without internet cannot reach, and the
extension packages on the package index are built for other DuckDB releases. The scoring here is the textbook
one (Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009, eq. 3.15), with
the non-negative IDF that Lucene uses::

    score(d, q) = sum over terms t of q:  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))

with ``N`` documents, ``n(t)`` of them containing ``t``, ``|d|`` the document's length in tokens and ``avgdl``
the mean length. A term repeated in the query counts once per repetition, as in Lucene.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BM25Index", "tokenize"]

# Letters and digits of any script; everything else (spaces, punctuation) separates tokens.
_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: ``"A red-circle, moving!"`` -> ``["a", "red", "circle", "moving"]``.

    No stemming and no stop words: the texts are short model answers, where "moving" and "moves" are rare
    enough that a user types what they see, and a stop word's low IDF already makes it count for little.
    """
    return _TOKEN.findall(text.casefold())


@dataclass(frozen=True)
class BM25Index:
    """An inverted index of ``N`` documents: per term the documents holding it and how often.

    Build it with :meth:`build`; :meth:`scores` and :meth:`top` rank the documents for a query.
    """

    postings: dict[str, tuple[np.ndarray, np.ndarray]]  # term -> (doc indices [P] int64, term counts [P] float64)
    lengths: np.ndarray  # [N] float64, tokens per document
    k1: float = 1.2
    b: float = 0.75

    @classmethod
    def build(cls, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> BM25Index:
        """Index ``documents`` (one string each; an empty string is a document that matches nothing).

        Raises:
            ValueError: ``k1`` below 0 or ``b`` outside [0, 1].
        """
        if not k1 >= 0:
            raise ValueError(f"k1 must be >= 0, got {k1}")
        if not 0 <= b <= 1:
            raise ValueError(f"b must be in [0, 1], got {b}")
        docs: dict[str, list[int]] = {}
        counts: dict[str, list[int]] = {}
        lengths = np.zeros(len(documents), dtype=np.float64)
        for index, text in enumerate(documents):
            terms = Counter(tokenize(text))
            lengths[index] = sum(terms.values())
            for term, count in terms.items():
                docs.setdefault(term, []).append(index)
                counts.setdefault(term, []).append(count)
        postings = {
            term: (np.asarray(docs[term], dtype=np.int64), np.asarray(counts[term], dtype=np.float64)) for term in docs
        }
        return cls(postings, lengths, k1, b)

    def __len__(self) -> int:
        return int(self.lengths.size)

    def idf(self, term: str) -> float:
        """The term's inverse document frequency (0 for a term no document holds)."""
        if term not in self.postings:
            return 0.0
        n = self.postings[term][0].size
        return math.log(1 + (len(self) - n + 0.5) / (n + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query``: `[N]` float64, 0 where no query term occurs."""
        scores = np.zeros(len(self), dtype=np.float64)
        if not len(self):
            return scores
        avgdl = float(self.lengths.mean()) or 1.0
        for term in tokenize(query):
            if term not in self.postings:
                continue
            docs, tf = self.postings[term]  # [P], [P]
            norm = self.k1 * (1 - self.b + self.b * self.lengths[docs] / avgdl)  # [P]
            scores[docs] += self.idf(term) * tf * (self.k1 + 1) / (tf + norm)
        return scores

    def top(self, query: str, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` best documents holding a query term, as (index, score), best first.

        Equal scores keep the documents' order (a stable sort), so a ranking is reproducible.
        """
        if limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit}")
        scores = self.scores(query)
        matched = np.flatnonzero(scores > 0)  # [M]
        order = matched[np.argsort(-scores[matched], kind="stable")][:limit]
        return [(int(i), float(scores[i])) for i in order]
