"""TF-IDF bag of words over model tokens (scikit-learn), rows L2-normalised: cosine = dot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sps
from sklearn.feature_extraction.text import TfidfVectorizer

from tagspace.vocab import _unescape, tsv_lines

IDF_FILE = "idf.tsv"  # beside a model: the IDF its personalization was tuned with


def _identity(tokens: Sequence[str]) -> Sequence[str]:
    return tokens  # posts arrive tokenised by tagspace.text


def _vectorizer() -> TfidfVectorizer:
    return TfidfVectorizer(analyzer=_identity, sublinear_tf=True)


class BagOfWords:
    """IDF fitted on a corpus of posts; ``transform`` gives unit-norm sparse TF-IDF rows."""

    def __init__(self, corpus: Sequence[Sequence[str]]):
        self.vectorizer = _vectorizer()
        docs = [tuple(t) for t in corpus]
        if not any(docs):
            docs.append(("<empty>",))  # an all-empty corpus still gives a usable (empty) space
        self.vectorizer.fit(docs)

    def transform(self, token_lists: Sequence[Sequence[str]]) -> sps.csr_matrix:
        return self.vectorizer.transform([tuple(t) for t in token_lists]).tocsr()

    def save(self, path: Path) -> None:
        """One ``token<TAB>idf`` line per term (repr of the float: exact round trip)."""
        vocab = self.vectorizer.vocabulary_
        idf = self.vectorizer.idf_
        terms = sorted(vocab, key=vocab.__getitem__)
        values = (repr(float(idf[vocab[t]])) for t in terms)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tsv_lines(terms, values), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> BagOfWords:
        terms, idf = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            token, sep, value = line.rpartition("\t")
            try:
                idf.append(float(value))
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'token<TAB>idf'") from None
            if not sep:
                raise ValueError(f"{path}:{n}: expected 'token<TAB>idf'")
            terms.append(_unescape(token))
        bow = cls.__new__(cls)
        bow.vectorizer = _vectorizer()
        bow.vectorizer.vocabulary_ = {t: i for i, t in enumerate(terms)}
        bow.vectorizer.idf_ = np.asarray(idf, np.float64)
        return bow
