"""Prequential evaluation: every post is scored before the model learns from it."""

import json
import subprocess
import sys

import pytest

from tagspace.prequential import prequential
from tests.test_online import post, small_model, topics


def test_each_post_is_scored_before_it_is_learnt():
    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    # The same post three times: its tag is unknown when it is first scored (a miss, as
    # offline), admitted after, so the repeats can hit.
    stream = [post(i, "pasta sauce garlic", ["food"]) for i in range(3)]
    report = prequential(online, stream, batch_size=1, window=1)
    assert [p.p_at_1 for p in report.curve][0] == 0.0
    assert [p.tags_in_use for p in report.curve] == [0, 1, 1]
    assert report.curve[1].p_at_1 == 1.0  # the only tag in use is the top suggestion
    assert report.posts == 3 and report.gold == 3


def test_the_curve_has_a_point_per_window_and_learning_shows_in_it():
    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=2)
    stream = topics(600) + [post(10_000, "no tags here", [])]
    report = prequential(online, stream, batch_size=8, window=100)
    assert len(report.curve) == 6 and report.posts == 600 and report.skipped_untagged == 1
    assert report.curve[-1].cum_p_at_1 == pytest.approx(report.p_at_1)
    first, last = report.curve[0], report.curve[-1]
    assert last.p_at_1 > first.p_at_1 + 0.3  # three separable topics: learnt online
    assert last.p_at_1 > 0.9


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        prequential(small_model(words=8, tags=4), topics(3), batch_size=0)


def test_the_command_reports_and_writes_the_curve(tmp_path, cooking_paths):
    out = tmp_path / "preq.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tagspace.cli", "prequential", "--data", str(cooking_paths[0]),
         "--limit", "600", "--window", "200", "--tag-capacity", "500", "--word-capacity",
         "5000", "--hidden", "64", "--dim", "16", "--json", str(out), "--plot",
         str(tmp_path / "preq.png")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["posts"] == 600 and len(report["curve"]) == 3
    assert 0.0 < report["p_at_1"] < 1.0 and report["settings"]["lr"] == 0.02
    assert "\r" not in proc.stderr  # not a terminal: log lines, no bar
    assert (tmp_path / "preq.png").stat().st_size > 1000


def test_the_command_starts_from_a_saved_model(tmp_path, cooking_paths):
    from tagspace.checkpoint import Checkpoint, save_checkpoint

    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    for i, p in enumerate(topics(60)):
        online.observe(p, clock=float(i))
    save_checkpoint(tmp_path / "m", Checkpoint(online.snapshot()))
    data = tmp_path / "stream.txt"
    data.write_text("".join(f"__label__{p.tags[0]} {' '.join(p.tokens)}\n" for p in topics(90)))
    out = tmp_path / "preq.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tagspace.cli", "prequential", "--data", str(data), "--model",
         str(tmp_path / "m"), "--window", "30", "--tag-capacity", "16", "--word-capacity", "64",
         "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    # the saved model already knows the three topic tags: the first window can hit
    assert report["curve"][0]["tags_in_use"] == 3 and report["posts"] == 90
