import json
from pathlib import Path

import pytest

from tagspace.dataset import MAX_LINE_BYTES, ReadStats, detect_format, read_posts


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_jsonl_record_with_and_without_tags(tmp_path):
    lines = [
        {"post_id": "p1", "user_id": "u1", "ts": 1700000000.5,
         "text": "Crazy commute this am #nyc #snow", "tags": ["NYC", "#snow"]},
        {"post_id": "p2", "user_id": "u1", "ts": "2024-01-01T00:00:00Z", "text": "so #Cold today"},
    ]
    path = write(tmp_path, "p.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    posts = list(read_posts(path))
    assert posts[0].tags == ("nyc", "snow")
    assert posts[0].tokens == ("crazy", "commute", "this", "am")
    assert posts[1].tags == ("cold",) and posts[1].tokens == ("so", "today")
    assert posts[1].ts == 1704067200.0


def test_naive_iso_times_are_utc(tmp_path):
    line = json.dumps({"post_id": "p", "user_id": "u", "ts": "2024-01-01T00:00:00", "text": "x"})
    assert next(read_posts(write(tmp_path, "p.jsonl", line.encode()))).ts == 1704067200.0


def test_fasttext_and_hyt_formats(cooking_paths, tmp_path):
    assert detect_format(cooking_paths[0]) == "fasttext"
    first = next(read_posts(cooking_paths[0]))
    assert first.tags and first.tokens and first.user_id is None
    hyt = write(tmp_path, "h.csv", b"so happy today\t42\tjoy\tlife\n")
    assert detect_format(hyt) == "hyt"
    post = next(read_posts(hyt))
    assert (post.user_id, post.tags) == ("42", ("joy", "life"))
    assert post.tokens == ("so", "happy", "today")


def test_bad_lines_are_skipped_and_counted(tmp_path):
    good = json.dumps({"post_id": "ok", "user_id": "u", "text": "fine #tag"}).encode()
    bad = [
        b"{not json",
        json.dumps({"post_id": 5, "user_id": "u", "text": "x"}).encode(),
        json.dumps({"post_id": "p", "user_id": "u"}).encode(),
        json.dumps({"post_id": "p", "user_id": "u", "text": "x", "tags": "nope"}).encode(),
        json.dumps({"post_id": "p", "user_id": "u", "text": "x", "ts": -1}).encode(),
        json.dumps([1, 2]).encode(),
        b'{"post_id": "p", "user_id": "u", "text": "\xff\xfe"}',
        b"{" + b'"text": "' + b"a" * (MAX_LINE_BYTES + 10) + b'"}',
        json.dumps({"post_id": "p", "user_id": "u", "text": "x",
                    "tags": ["t"] * 10_000}).encode(),
        b"",
        b'{"post_id": "p", "user_id": "u", "text": "x", "ts": 1' + b"0" * 400 + b"}",
        b'{"post_id": "p", "user_id": "u", "text": "x", "n": 1' + b"0" * 5000 + b"}",
    ]
    path = write(tmp_path, "mixed.jsonl", b"\n".join([good, *bad, good]))
    stats = ReadStats()
    posts = list(read_posts(path, stats=stats))
    assert len(posts) == 2
    assert stats.lines == 14 and sum(stats.skipped.values()) == 12
    assert stats.skipped["invalid_json"] == 2 and stats.skipped["invalid_ts"] == 2
    assert stats.skipped["invalid_utf8"] == 1
    assert stats.skipped["line_too_long"] == 1 and stats.skipped["too_many_tags"] == 1


def test_posts_without_text_or_tags_can_be_required(tmp_path):
    path = write(tmp_path, "f.txt", b"__label__a only words here\n__label__b\nno labels at all\n")
    stats = ReadStats()
    posts = list(read_posts(path, "fasttext", stats, require_tags=True, require_tokens=True))
    assert [p.tags for p in posts] == [("a",)]
    assert stats.skipped == {"no_text": 1, "no_tags": 1}


def test_unknown_format_is_a_clear_error(tmp_path):
    path = write(tmp_path, "x.bin", b"just some words\n")
    with pytest.raises(ValueError, match="cannot detect the format"):
        list(read_posts(path))
    with pytest.raises(ValueError, match="no such file"):
        list(read_posts(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="unknown format"):
        list(read_posts(path, "csv"))


def test_post_ids_are_unique_across_files_with_one_stem(tmp_path):
    # cooking.train and cooking.valid share the stem "cooking": their line ids must not collide
    rows = b"so happy today\t42\tjoy\nrainy again\t7\tsad\n"
    train, valid = write(tmp_path, "posts.train", rows), write(tmp_path, "posts.valid", rows)
    (tmp_path / "copy").mkdir()
    other = write(tmp_path / "copy", "posts.train", rows)  # same name, another folder
    ids = [[p.post_id for p in read_posts(path)] for path in (train, valid, other)]
    assert all(len(set(i)) == 2 for i in ids)
    assert not set(ids[0]) & set(ids[1]) and not set(ids[0]) & set(ids[2])
    assert [p.post_id for p in read_posts(train)] == ids[0]  # stable: same file, same ids
    assert ids[0][0].startswith("posts.train@")
