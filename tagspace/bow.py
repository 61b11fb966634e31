"""TF-IDF bag of words over model tokens (scikit-learn), rows L2-normalised: cosine = dot."""

from __future__ import annotations

from collections.abc import Sequence

import scipy.sparse as sps
from sklearn.feature_extraction.text import TfidfVectorizer


def _identity(tokens: Sequence[str]) -> Sequence[str]:
    return tokens  # posts arrive tokenised by tagspace.text


class BagOfWords:
    """IDF fitted on a corpus of posts; ``transform`` gives unit-norm sparse TF-IDF rows."""

    def __init__(self, corpus: Sequence[Sequence[str]]):
        self.vectorizer = TfidfVectorizer(analyzer=_identity, sublinear_tf=True)
        docs = [tuple(t) for t in corpus]
        if not any(docs):
            docs.append(("<empty>",))  # an all-empty corpus still gives a usable (empty) space
        self.vectorizer.fit(docs)

    def transform(self, token_lists: Sequence[Sequence[str]]) -> sps.csr_matrix:
        return self.vectorizer.transform([tuple(t) for t in token_lists]).tocsr()
