"""The built-in demo and the evaluate command, end to end."""
import json

import pytest

pytest.importorskip("matplotlib")

from clear_native import cli  # noqa: E402
from clear_native.demo import run_demo  # noqa: E402
from clear_native.evaluate import evaluate  # noqa: E402


def test_demo_writes_every_promised_file(tmp_path):
    summary = run_demo(tmp_path / "clear-demo")
    out = tmp_path / "clear-demo"
    for name in ["index.html", "metrics.json", "correct.png", "correct.pdf", "wrong.png", "wrong.pdf",
                 "grid.png", "grid.pdf"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    html = (out / "index.html").read_text()
    for name in ("correct.png", "wrong.png", "grid.png", "79.89"):
        assert name in html
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == summary["images"] > 0
    assert 0.5 < metrics["accuracy"] <= 1.0 and metrics["num_wrong"] > 0
    assert len(metrics["strong_features"]["curve"]) == 11


def test_demo_is_the_cli_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = {}
    monkeypatch.setattr("clear_native.demo.run_demo", lambda out, **kw: calls.setdefault(
        "summary", {"images": 1, "dataset": "mnist", "accuracy": 1.0, "num_wrong": 0, "seconds": 0.0,
                    "out": str(tmp_path / out), "files": {"grid": "grid.png"}}))
    assert cli.main([]) == 0
    assert "clear-demo" in capsys.readouterr().out and calls


def test_evaluate_small(tmp_path):
    report = evaluate("mnist", "sample", methods=("cam", "deconvnet"), limit=24, sanity_images=4,
                      out=tmp_path)
    assert report["images"] == 24
    for method in ("cam", "deconvnet"):
        r = report["methods"][method]
        assert len(r["strong_features"]["curve"]) == 11
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
        assert r["sanity_check"][0]["spearman"] == 1.0 and len(r["sanity_check"]) > 2
    md = (tmp_path / "evaluation.md").read_text()
    assert "Strong features" in md and "Sanity check" in md
    assert json.loads((tmp_path / "evaluation.json").read_text())["images"] == 24
