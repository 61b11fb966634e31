"""Progress off a terminal: a few log lines, never carriage-return bar redraws."""

import io
import logging
import subprocess
import sys
import threading
from itertools import islice

from tqdm import tqdm

from tagspace.baselines import FrequencyScorer
from tagspace.dataset import Post
from tagspace.evaluate import evaluate
from tagspace.progress import LogProgress, progress_bar
from tagspace.vocab import Vocabulary
from tests.conftest import COOKING_TRAIN, ROOT


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    bar = progress_bar(10, "x")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(10, "x"), LogProgress)
    progress_bar(10, "x", disable=True).update(10)
    assert sys.stderr.getvalue() == ""


def test_each_quarter_is_logged_once_across_threads(caplog):
    caplog.set_level(logging.INFO, "tagspace.progress")
    bar = LogProgress(1000, "train", "post")
    threads = [threading.Thread(target=lambda: [bar.update(1) for _ in range(250)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[1] for line in lines] == ["25%", "50%", "75%", "100%"]
    assert "(1000/1000 posts" in lines[-1]


def redirected(monkeypatch) -> io.StringIO:
    """stderr as a file, and INFO logs into it, as the CLI sets them up."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    handler = logging.StreamHandler(err)
    logger = logging.getLogger("tagspace")
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    return err


def test_evaluation_logs_four_lines_off_a_terminal(monkeypatch):
    err = redirected(monkeypatch)
    try:
        tags = Vocabulary.build([["a"], ["b"]])
        posts = [Post(str(i), None, None, ("w",), ("a",)) for i in range(100)]
        evaluate(FrequencyScorer(tags), posts, batch_size=7, desc="evaluate")
    finally:
        logging.getLogger("tagspace").handlers.pop()
    out = err.getvalue()
    assert "\r" not in out
    assert out.count("\n") == 4 and "evaluate: 100% (100/100 posts" in out


def test_cli_training_written_to_a_file_is_a_few_lines(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("".join(islice(COOKING_TRAIN.open(), 400)))
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as err:  # stderr a file, as in CI or `2> train.log`
        subprocess.run(
            [sys.executable, "-m", "tagspace.cli", "train", "--data", str(data), "--valid",
             str(data), "--out", str(tmp_path / "m"), "--dim", "8", "--hidden", "16",
             "--epochs", "2", "--init-epochs", "2", "--workers", "1"],
            stderr=err, stdout=subprocess.DEVNULL, cwd=ROOT, check=True, timeout=300)
    out = log_file.read_bytes().decode()  # read_text() turns a carriage return into a newline
    assert "\r" not in out  # a bar redrawn into a file was ~100 KB of these per run
    assert len(out) < 5000 and len(out.splitlines()) < 30
    assert "wsabie epoch 2/2" in out and "tagspace epoch 2/2" in out
    assert "evaluate: 100% (400/400 posts" in out
