"""The console script end to end on small real data: train, evaluate, suggest, errors."""

import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest

from tagspace.cli import main
from tests.conftest import COOKING_TRAIN, COOKING_VALID

FAST = ["--dim", "16", "--hidden", "32", "--epochs", "1", "--init-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    train, valid = folder / "train.txt", folder / "valid.txt"
    train.write_text("".join(islice(COOKING_TRAIN.open(), 800)))
    valid.write_text("".join(islice(COOKING_VALID.open(), 200)))
    return train, valid


@pytest.fixture(scope="module")
def model_dir(small_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "m"
    train, valid = small_files
    assert main(["train", "--data", str(train), "--valid", str(valid), "--out", str(out),
                 *FAST]) == 0
    return out


def test_evaluate_writes_what_the_library_computes(model_dir, small_files, tmp_path, capsys):
    from tagspace.baselines import FrequencyScorer
    from tagspace.checkpoint import load_checkpoint
    from tagspace.dataset import read_posts
    from tagspace.evaluate import evaluate

    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(small_files[1]),
                 "--json", str(out), "--quiet"]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"p_at_1", "r_at_10", "mean_rank", "p_at_1_known", "r_at_10_known",
                            "mean_rank_known", "n_posts", "n_gold_tags"}
    tagger = load_checkpoint(model_dir).tagger
    posts = list(read_posts(small_files[1], require_tags=True))
    assert metrics == evaluate(tagger, posts, progress=False).metrics.to_dict()
    assert f"p_at_1           {metrics['p_at_1']:.4f}" in capsys.readouterr().out
    # one epoch on 800 posts already learns: P@1 about 0.29 and R@10 about 0.41 over seeds
    # (0.275-0.305, 0.40-0.43), against 0.10 and 0.23 for the most frequent tags
    frequency = evaluate(FrequencyScorer(tagger.tags), posts, progress=False).metrics
    assert metrics["p_at_1"] > 2 * frequency.p_at_1
    assert metrics["r_at_10"] > frequency.r_at_10 + 0.1


def test_suggest_prints_the_models_best_tags(model_dir, capsys):
    from tagspace.checkpoint import load_checkpoint

    text = "how do I keep bread fresh?"
    assert main(["suggest", "--model", str(model_dir), "--k", "3", "--quiet", text]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    best = load_checkpoint(model_dir).tagger.suggest(text, k=3)
    assert lines == [f"#{s.tag}\t{s.score:.4f}" for s in best]
    assert best[0].score > best[1].score > best[2].score
    assert lines[0].startswith("#bread\t")  # top for every seed tried, well ahead of #baking


def test_personalized_evaluate_on_authored_posts(tmp_path):
    def posts(start, stop):
        # the same text from 15 authors, each with a tag of their own
        return "".join(json.dumps({"post_id": f"p{i}", "user_id": f"u{i % 15}",
                                   "text": "what a day", "tags": [f"tag{i % 15}"]}) + "\n"
                       for i in range(start, stop))

    history, later = tmp_path / "history.jsonl", tmp_path / "later.jsonl"
    history.write_text(posts(0, 60))
    later.write_text(posts(60, 90))
    out = tmp_path / "m"
    # One Hogwild worker, so the run is repeatable (with two, which worker steps which batch
    # depends on timing). Any author term may win the tuning: each of count, similarity and
    # lexical tells these authors apart alone (ties: one run picked count, another lexical).
    assert main(["train", "--data", str(history), "--valid", str(later), "--out", str(out),
                 "--workers", "1", *FAST]) == 0
    tuned = json.loads((out / "config.json").read_text())["extra"]["personalize"]
    assert tuned["count"] + tuned["similarity"] + tuned["lexical"] > 0
    js = tmp_path / "p.json"
    args = ["evaluate", "--model", str(out), "--data", str(later), "--json", str(js), "--quiet"]
    assert main([*args, "--personalize", str(history)]) == 0
    assert json.loads(js.read_text())["p_at_1"] == 1.0  # text alone cannot tell them apart
    # The evaluated posts' own tags never form a profile, even when passed as one.
    assert main([*args, "--personalize", str(later)]) == 0
    assert json.loads(js.read_text())["p_at_1"] < 0.5


def test_bad_inputs_give_clear_errors(tmp_path, model_dir, capsys):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\xfe not a dataset\n")
    assert main(["evaluate", "--model", str(model_dir), "--data", str(junk), "--quiet"]) == 2
    assert "cannot detect the format" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(junk), "--quiet"]) == 2
    assert "not a tagspace model" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("__label__a\n__label__b\n")
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "x"), *FAST]) == 2
    assert "no usable posts" in capsys.readouterr().err


def test_config_file_sets_defaults_and_rejects_unknown_keys(tmp_path, small_files):
    config = tmp_path / "c.toml"
    config.write_text('dim = 8\nhidden = 16\nepochs = 1\ninit = "random"\n')
    out = tmp_path / "m"
    assert main(["train", "--data", str(small_files[0]), "--out", str(out), "--config",
                 str(config), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["dim"] == 8
    config.write_text("dimension = 8\n")
    with pytest.raises(SystemExit):
        main(["train", "--data", str(small_files[0]), "--out", str(out), "--config", str(config)])


def test_console_script_help_lists_the_contract_commands():
    exe = Path(sys.executable).with_name("tagspace")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "evaluate", "suggest", "compare"):
        assert command in out


def test_compare_writes_table_json_and_plot(small_files, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--train", str(small_files[0]), "--test", str(small_files[1]),
                 "--out", str(out), "--dims", "8", "--epochs", "1", "--wsabie-epochs", "1",
                 "--word2vec-epochs", "1", "--hidden", "16", "--quiet"]) == 0
    report = json.loads((out / "results.json").read_text())
    methods = [row["method"] for row in report["rows"]]
    assert methods == ["Frequency", "#words", "Word2Vec", "WSABIE", "#TagSpace"]
    assert report["wilcoxon"][0]["dim"] == 8
    assert "| #TagSpace | 8 |" in (out / "table.md").read_text()
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_config_file_can_supply_required_options(tmp_path, small_files):
    out = tmp_path / "m"
    config = tmp_path / "c.toml"
    config.write_text(f'data = ["{small_files[0]}"]\nout = "{out}"\ndim = 8\nhidden = 16\n'
                      'epochs = 1\ninit = "random"\n')
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["dim"] == 8


def test_eval_recommend_writes_contract_json(model_dir, tmp_path):
    topics = ["bread dough yeast", "steak grill beef", "cake sugar oven", "knife sharpen steel"]
    rows = [json.dumps({"post_id": f"p{i}", "user_id": f"u{i % 8}", "ts": i,
                        "text": f"{topics[(i % 8) % 4]} note {i}", "tags": ["x"]})
            for i in range(64)]
    data = tmp_path / "posts.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "rec.json"
    assert main(["eval-recommend", "--model", str(model_dir), "--data", str(data),
                 "--negatives", "20", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"bow", "model", "model+bow"}
    for metrics in result.values():
        assert set(metrics) == {"p_at_1", "r_at_10", "r_at_50", "n_users"}
        assert metrics["n_users"] == 8
    assert result["bow"]["r_at_10"] == 1.0  # each user's target shares its topic words


def test_personalize_drops_only_the_evaluated_posts_themselves(tmp_path, caplog):
    from types import SimpleNamespace

    from tagspace.baselines import FrequencyScorer
    from tagspace.cli_commands import _maybe_personalized
    from tagspace.dataset import read_posts
    from tagspace.vocab import Vocabulary

    # hyt files of one stem: line ids used to be "posts:<line>" in both
    rows = "".join(f"post {i}\tu{i}\ttag{i}\n" for i in range(6))
    train, valid = tmp_path / "posts.train", tmp_path / "posts.valid"
    train.write_text(rows)
    valid.write_text(rows)
    tags = Vocabulary.build([[f"tag{i}"] for i in range(6)])
    checkpoint = SimpleNamespace(tagger=FrequencyScorer(tags), extra={})
    evaluated = {p.post_id for p in read_posts(valid)}
    scorer = _maybe_personalized(checkpoint, tmp_path, [train], None, "auto",
                                 exclude=evaluated)
    assert len(scorer.profiles) == 6  # unrelated profile posts all kept
    assert "also evaluated posts" not in caplog.text
    scorer = _maybe_personalized(checkpoint, tmp_path, [valid], None, "auto",
                                 exclude=evaluated)
    assert len(scorer.profiles) == 0  # the evaluated file itself never forms a profile
