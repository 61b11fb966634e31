"""Text processing for raw social posts: hashtags out as labels, the rest as model tokens.

Normalisation, in order: Unicode NFC (NFKC for hashtag labels), invisible characters
(zero-width joiners, variation selectors) removed, URLs -> ``<url>``, @mentions -> ``<user>``,
hashtags extracted as labels and removed, case folding, numbers -> ``<num>``, punctuation and
each emoji split into tokens of their own. Already-tokenised corpora (howyoutagtweets) pass
through unchanged apart from case folding.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

URL_TOKEN = "<url>"
USER_TOKEN = "<user>"
NUM_TOKEN = "<num>"

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w{1,30}")
# A hashtag starts at a word boundary and holds word characters (any script) plus inner '_'/'-'.
_HASHTAG = re.compile(r"(?<![\w#&])#(\w(?:[\w-]*\w)?)")
# The placeholders are tokens too, so that tokenising joined tokens gives them back (replays).
_TOKEN = re.compile(r"<url>|<user>|<num>|\d+(?:[.,:]\d+)+|\w+(?:['’]\w+)*|[^\w\s]")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*(?:st|nd|rd|th|k|m|s)?")
# Joiners and variation selectors glue emoji sequences together; they carry no meaning alone.
_INVISIBLE = dict.fromkeys(map(ord, "\u200d\ufe0e\ufe0f\u200b\u200c\u2060\ufeff"), None)


@dataclass(frozen=True, slots=True)
class ParsedText:
    tokens: tuple[str, ...]
    hashtags: tuple[str, ...]


def _visible(text: str) -> str:
    """NFC without invisible characters: done before any regex, so labels and tokens see the
    same text (a joiner inside ``#foo\u200dbar`` would otherwise end the hashtag at ``foo``)."""
    return unicodedata.normalize("NFC", text).translate(_INVISIBLE)


def normalize_tag(tag: str) -> str:
    """A label as the model stores it, whether it came from a ``tags`` list or a ``#hashtag``
    of the text: NFKC (full-width and compatibility forms fold to one tag), without invisible
    characters, trimmed, without a leading '#', case-folded (Unicode's lowercase for
    matching)."""
    return unicodedata.normalize("NFKC", _visible(tag)).strip().lstrip("#").casefold()


def extract_hashtags(text: str) -> tuple[str, ...]:
    """The distinct hashtags of ``text`` in order of first appearance, normalised."""
    seen: dict[str, None] = {}
    for match in _HASHTAG.finditer(_URL.sub(" ", _visible(text))):
        seen.setdefault(normalize_tag(match.group(1)), None)
    return tuple(seen)


def tokenize(text: str) -> tuple[str, ...]:
    """Model tokens of ``text`` with hashtags removed (they are labels, never input)."""
    text = _visible(text)
    text = _URL.sub(f" {URL_TOKEN} ", text)
    text = _MENTION.sub(f" {USER_TOKEN} ", text)
    text = _HASHTAG.sub(" ", text)
    tokens = []
    for token in _TOKEN.findall(text.casefold()):
        tokens.append(NUM_TOKEN if _NUMBER.fullmatch(token) else token)
    return tuple(tokens)


def parse_post_text(text: str) -> ParsedText:
    """Split a raw post into model tokens and its hashtag labels."""
    return ParsedText(tokens=tokenize(text), hashtags=extract_hashtags(text))
