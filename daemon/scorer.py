"""Real-time hashtag suggestions.

Suggestions rank every tag the live model knows; when the request names the author, their
newest tagged posts in Redis personalize the ranking through the library's ``Personalizer``
(the same terms, weights and IDF as ``tagspace evaluate --personalize``: z-scored content score,
the author's tag counts, max model and TF-IDF cosine to their past posts with the tag, tag
popularity). An author with no tagged post gets the content ranking. Feeds are ``daemon.feed``.
"""

from __future__ import annotations

from daemon.model_hub import ModelHub
from daemon.store import Store
from tagspace.dataset import Post
from tagspace.personalize import AuthorHistory
from tagspace.tagger import top_k
from tagspace.text import parse_post_text


class Scorer:
    def __init__(self, hub: ModelHub, store: Store):
        self.hub, self.store = hub, store

    def suggest(self, text: str, k: int, user_id: str | None) -> list[tuple[str, float]]:
        online, version, personalizer = self.hub.online, self.hub.version, self.hub.personalizer
        tagger = online.tagger
        tokens = parse_post_text(text).tokens
        scores = tagger.scores([Post("", user_id, None, tokens, ())])
        past = self.store.authored(user_id) if user_id else []
        if past:
            history = AuthorHistory.of_posts((tags, words) for _, tags, words in past)
            # the model's vectors of this history: reusable until the version or history moves
            key = (user_id, version, len(past), past[-1][0])
            scores = personalizer.scores(tagger, scores, [tokens], [history], [key])
        return [(s.tag, s.score) for s in top_k(scores[0], online.tags, k)]
