"""The built-in demo and the evaluate command, end to end."""
import json
import math

import pytest

pytest.importorskip("matplotlib")

import clear_native  # noqa: E402
from clear_native import cli  # noqa: E402
from clear_native.demo import run_demo  # noqa: E402
from clear_native.evaluate import evaluate, parse_names  # noqa: E402

SENSITIVITY_KEYS = ("share_predicted_correct", "share_true_wrong", "share_predicted_wrong", "chance",
                    "head_randomised_agreement", "causal_effect", "causal_pairs", "causal_skipped")


def _check_sensitivity(c, *, wrong: bool):
    """Class-sensitivity figures: present, finite where they must be, in range."""
    for key in SENSITIVITY_KEYS:
        assert key in c, key
    assert c["chance"] == pytest.approx(0.1) and c["strong_threshold"] == 0.2
    shares = ["share_predicted_correct", "head_randomised_agreement"]
    if wrong:
        shares += ["share_true_wrong", "share_predicted_wrong"]
    for key in shares:
        assert math.isfinite(c[key]) and 0.0 <= c[key] <= 1.0, (key, c[key])
    assert math.isfinite(c["causal_effect"]) and c["causal_pairs"] > 0 and c["causal_skipped"] >= 0
    assert c["head_randomised_images"] > 0


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
    # The default: lrp of the class logit (docs/method.md); the class-sensitivity figures.
    assert metrics["method"] == clear_native.explain.DEFAULT_METHOD == "lrp" and metrics["signal"] == "logit"
    c = metrics["class_sensitivity"]
    _check_sensitivity(c, wrong=True)
    assert c["share_predicted_correct"] > 2 * c["chance"]  # the default is class sensitive
    assert c["causal_effect"] > 0
    # The sample is enriched with errors: its accuracy is below the full test set's, shown beside it.
    sample = metrics["sample"]
    assert sample["extra_misclassified"] > 0 and sample["test_accuracy"] > metrics["accuracy"]
    assert "Class sensitivity" in html and "lrp, logit signal" in html
    for v in ("share_predicted_correct", "chance", "head_randomised_agreement"):
        assert f"{100 * c[v]:.2f}%" in html, v
    assert f"{c['causal_effect']:+.3f}" in html
    assert "enriched with misclassified" in html and f"{100 * sample['test_accuracy']:.2f}%" in html


def test_demo_is_the_cli_default():
    args = cli.parse([])
    assert args.command == "demo" and args.func is cli._demo
    assert (args.out, args.method, args.signal, args.dataset) == ("clear-demo", "lrp", None, "mnist")


def test_demo_cli_rejects_a_signal_for_cam(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--method", "cam", "--signal", "logit"]) == 2
    assert "--signal" in capsys.readouterr().err


def test_evaluate_small(tmp_path):
    report = evaluate("mnist", "sample", methods=("cam", "deconvnet"), signals=("response", "logit"),
                      limit=24, sanity_images=4, out=tmp_path)
    assert report["images"] == 24
    assert list(report["methods"]) == ["cam", "deconvnet/response", "deconvnet/logit"]
    assert report["signals"] == ["response", "logit"]
    assert report["default_signals"] == {"cam": None, "deconvnet": "response"}
    for key, method, signal in (("cam", "cam", None), ("deconvnet/response", "deconvnet", "response"),
                                ("deconvnet/logit", "deconvnet", "logit")):
        r = report["methods"][key]
        assert (r["method"], r["signal"]) == (method, signal)
        assert r["default_signal"] == (signal != "logit")
        assert len(r["strong_features"]["curve"]) == 11
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
        assert r["sanity_check"][0]["spearman"] == 1.0 and len(r["sanity_check"]) > 2
        c = r["class_sensitivity"]
        _check_sensitivity(c, wrong=False)  # the first 24 sample images are all classified right
        assert c["head_randomised_images"] == 4 and c["images_correct"] + c["images_wrong"] <= 24
    md = (tmp_path / "evaluation.md").read_text()
    assert "Strong features" in md and "Sanity check" in md
    assert "## Class sensitivity" in md and "causal effect" in md and "chance" in md
    section = md.split("## Class sensitivity")[1].split("\n## ")[0]
    for row in ("| cam | none |", "| deconvnet | response (default) |", "| deconvnet | logit |"):
        assert row in section, row
    assert "Default signal per method" in md
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["images"] == 24 and "class_sensitivity" in saved["methods"]["deconvnet/logit"]


def test_evaluate_rejects_bad_names(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown signal 'grad'.*response, logit"):
        evaluate("mnist", "sample", methods=("cam",), signals=("grad",), limit=4, out=tmp_path)
    with pytest.raises(ValueError, match=r"unknown method 'deconv'"):
        parse_names("deconv,cam", ("deconvnet", "cam"), "method")
    assert parse_names(" response, logit,response,", ("response", "logit"), "signal") == ("response", "logit")
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--signals", "response,bogus", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--signals" in err and "unknown signal 'bogus'" in err and "response, logit" in err
    assert not (tmp_path / "evaluation.json").exists()
