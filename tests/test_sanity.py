"""The sanity checks of clear_native.metrics.sanity / .pointing on planted maps and tiny models."""
import math
from types import SimpleNamespace

import pytest
import torch

from clear_native import metrics
from clear_native.metrics import sanity

scipy_stats = pytest.importorskip("scipy.stats")


def maps_of(resp, cls=None, **more):
    cls = torch.zeros(resp.shape, dtype=torch.int64) if cls is None else cls
    return SimpleNamespace(dominant_response=resp, dominant_class=cls, **more)


# -- rank correlation ------------------------------------------------------------------------

def test_spearman_matches_scipy_with_ties_and_nan():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 40), generator=g).float()   # many ties
    b = a + torch.randn(6, 40, generator=g)
    got = metrics.spearman_rows(a, b)
    want = [scipy_stats.spearmanr(a[i], b[i]).statistic for i in range(6)]
    assert got.tolist() == pytest.approx(want, abs=1e-10)
    c = torch.ones(1, 10)                                      # constant row: rho 0, not NaN
    assert metrics.spearman_rows(c, torch.arange(10.0).view(1, 10)).item() == 0.0
    n = torch.tensor([[float("nan"), 1.0, 2.0]])               # NaN ranks lowest
    assert metrics.spearman_rows(n, torch.tensor([[0.0, 1.0, 2.0]])).item() == pytest.approx(1.0)


# -- a. data randomisation -------------------------------------------------------------------

def test_same_map_for_every_image_gives_rho_one():
    one = torch.rand(1, 9, 9, generator=torch.Generator().manual_seed(1))
    maps = maps_of(one.expand(5, 9, 9), class_maps=one.expand(5, 3, 9, 9).unsqueeze(0)[0].clone())
    out = metrics.data_randomisation(maps, maps_of(one.expand(2, 9, 9)), maps_of(one))
    assert out.image_image == pytest.approx(1.0) and out.image_pairs == 10
    assert out.image_noise == pytest.approx(1.0) and out.image_constant == pytest.approx(1.0)
    assert out.class_maps == pytest.approx(1.0) and out.class_map_pairs == 3 * 10
    assert out.detail_image_image is None and out.images == 5


def test_maps_copied_from_the_inputs_give_the_inputs_rho():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 8, 8, generator=g)
    x[1] = x[0] + 0.1 * torch.rand(8, 8, generator=g)           # one near-copy pair
    noise = torch.rand(3, 8, 8, generator=g)
    out = metrics.data_randomisation(maps_of(x), maps_of(noise), None, detail=True)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    rho = lambda u, v: scipy_stats.spearmanr(u.flatten(), v.flatten()).statistic  # noqa: E731
    assert out.image_image == pytest.approx(sum(rho(x[i], x[j]) for i, j in pairs) / 6, abs=1e-9)
    assert out.image_noise == pytest.approx(sum(rho(a, b) for a in x for b in noise) / 12, abs=1e-9)
    assert math.isnan(out.image_constant)
    assert out.image_image > 0.1 and out.detail_image_image is not None and out.class_maps is None


def test_class_map_rho_per_class_id_with_per_image_tables():
    # Per-image top-2 tables: class 7 in images 0 and 1 (identical maps), class 3 in 1 and 2
    # (opposite maps), class 5 only in image 0 (no pair), padding -1 ignored.
    ramp = torch.arange(16.0).view(4, 4)
    cm = torch.stack([torch.stack([ramp, torch.rand(4, 4)]), torch.stack([ramp, -ramp]),
                      torch.stack([ramp, torch.rand(4, 4)])])
    table = torch.tensor([[7, 5], [7, 3], [3, -1]])
    cm[2, 0] = ramp                                               # image 2's class 3 map
    out, pairs = sanity.class_map_rho(SimpleNamespace(class_maps=cm, classes=table))
    assert pairs == 2 and out == pytest.approx((1.0 + -1.0) / 2)


def test_reference_images_and_fine_detail():
    noise, const = metrics.reference_images((3, 5, 6), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), noise=2)
    assert noise.shape == (2, 3, 5, 6) and const.shape == (1, 3, 5, 6)
    assert const[0, :, 0, 0].tolist() == pytest.approx([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                                        (0.5 - 0.406) / 0.225])
    assert torch.equal(noise, metrics.reference_images((3, 5, 6), (0,), (1,), noise=2)[0])  # seeded
    with pytest.raises(ValueError, match="mean and std"):
        metrics.reference_images((3, 4, 4), (0, 0), (1,))
    assert metrics.fine_detail(torch.full((2, 40, 40), 3.0)).abs().max() == 0   # flat -> no detail
    spike = torch.zeros(1, 224, 224)
    spike[0, 100, 100] = 33.0 ** 2
    assert metrics.fine_detail(spike)[0, 100, 100] == pytest.approx(33.0 ** 2 - 1.0)  # 33 px box at 224


def test_data_randomisation_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.data_randomisation(maps_of(torch.rand(4, 4)))
    with pytest.raises(ValueError, match="noise_maps"):
        metrics.data_randomisation(maps_of(torch.rand(2, 4, 4)), maps_of(torch.rand(2, 5, 4)))


# -- b. model randomisation ------------------------------------------------------------------

def head_model():
    """1x8x8 -> 4 classes: identity 1x1 conv, flatten, linear head (from test_metrics)."""
    from test_metrics import quadrant_model
    return quadrant_model()


def contribution_explain(model, images, target=None, classes=None):
    """Per-class contribution maps (they follow the head's weights)."""
    cm = model[0](images) * model[2].weight.view(1, 4, 8, 8)
    resp, cls = cm.max(1)
    pred = model(images).argmax(1)
    t = pred if target is None else target
    return SimpleNamespace(dominant_class=cls, dominant_response=resp, prediction=pred,
                           target_response=cm[torch.arange(len(t)), t])


def input_explain(model, images, target=None, classes=None):
    """Ignores the model: the maps are the image."""
    resp = images[:, 0]
    return SimpleNamespace(dominant_class=(resp > 0.75).long(), dominant_response=resp,
                           prediction=torch.zeros(len(images), dtype=torch.int64), target_response=resp)


def test_model_randomisation_head_dependent_vs_independent():
    model = head_model()
    x = 0.5 + 0.5 * torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dep = metrics.model_randomisation(model, contribution_explain, x)
    assert dep.head_module == "2" and [s["randomised"] for s in dep.steps] == ["2", "0"]
    assert dep.head_spearman < 0.5 and dep.head_class_agreement < 0.6
    assert dep.head_predicted_map_spearman < 0.5
    ind = metrics.model_randomisation(model, input_explain, x, max_steps=1)
    assert len(ind.steps) == 1 and ind.head_spearman == pytest.approx(1.0)
    assert ind.head_class_agreement == 1.0 and ind.final_spearman == pytest.approx(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert metrics.model_randomisation(model, contribution_explain, x).steps == dep.steps  # seeded


def test_layer_groups_top_down():
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)),
                              torch.nn.Flatten(), torch.nn.Linear(2, 3))
    assert sanity.layer_groups(net, depth=1) == [["2"], ["0.0", "0.1"]]


# -- c. grid pointing game -------------------------------------------------------------------

class ValueNet(torch.nn.Module):
    """Image of constant value v: logits peak sharply at class round(v) (C = 6)."""

    def forward(self, x):
        return -20 * (x.mean((1, 2, 3)).view(-1, 1) - torch.arange(6.0)) ** 2


def value_images(values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 6).clone()


def planted_explain(model, images, target=None, classes=None):
    assert classes is not None and len(classes) == 4
    cls = images[:, 0].round().long()
    assert set(cls.unique().tolist()) <= set(classes)
    return SimpleNamespace(dominant_class=cls, dominant_response=torch.ones(cls.shape))


def shuffled_explain(model, images, target=None, classes=None):
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(4, images[:, 0].shape, generator=g)
    return SimpleNamespace(dominant_class=torch.tensor(classes)[pick], dominant_response=torch.ones(pick.shape))


def test_mosaic_plan_round_robin_is_deterministic():
    # classes 0..4, one unconfident image (class 5 near-tie) left out
    probs = torch.tensor([[.9, .1, 0, 0, 0, 0], [0, .8, .2, 0, 0, 0], [0, 0, .7, .3, 0, 0],
                          [0, 0, 0, .95, .05, 0], [0, 0, 0, 0, .6, .4], [.85, 0, 0, 0, 0, .15],
                          [0, 0, 0, 0, .5, .5], [0, .99, 0, 0, 0, .01]])
    plan, classes = metrics.mosaic_plan(probs)
    # class order by best confidence: 1 (.99), 3 (.95), 0 (.9), 2 (.7), 4 (.6)
    assert plan.tolist() == [[7, 3, 0, 2]] and classes.tolist() == [[1, 3, 0, 2]]
    # then only classes 1 (image 1), 0 (image 5) and 4 (image 4) have images left: < 4, stop
    assert torch.equal(metrics.mosaic_plan(probs)[0], plan)
    assert metrics.mosaic_plan(probs, max_mosaics=0)[0].shape == (0, 4)


def test_make_mosaics_tiles_and_downscales():
    x = value_images([0, 1, 2, 3])
    m = metrics.make_mosaics(x, torch.tensor([[3, 2, 1, 0]]))
    assert m.shape == (1, 1, 8, 12)
    assert [m[0, 0, 0, 0], m[0, 0, 0, 11], m[0, 0, 7, 0], m[0, 0, 7, 11]] == [3, 2, 1, 0]
    small = metrics.make_mosaics(x, torch.tensor([[3, 2, 1, 0]]), downscale=True)
    assert small.shape == (1, 1, 4, 6) and small[0, 0, 3, 5] == 0 and small[0, 0, 0, 0] == 3


@pytest.mark.parametrize("downscale", [False, True])
def test_grid_pointing_planted_is_perfect_and_shuffled_is_chance(downscale):
    x = value_images([0, 1, 2, 3, 4, 5] * 4)
    got = metrics.grid_pointing(ValueNet(), planted_explain, x, downscale=downscale)
    assert got.mosaics == 6 and got.strong == 1.0 and got.visible == 1.0
    assert got.quadrants_strong == 24 and all(len(set(c)) == 4 for c in got.classes)
    shuffled = metrics.grid_pointing(ValueNet(), shuffled_explain, x, downscale=downscale)
    assert 0.1 < shuffled.strong < 0.4
    empty = metrics.grid_pointing(ValueNet(), planted_explain, x[:3])
    assert empty.mosaics == 0 and math.isnan(empty.strong)


def test_pointing_shares_strong_vs_visible():
    dc = torch.tensor([[[0, 1], [2, 1]]])
    dr = torch.tensor([[[1.0, 0.1], [0.5, 0.04]]])
    q = torch.tensor([[0, 1, 2, 3]])
    s = metrics.pointing_shares(dc, dr, q, 0.2)
    assert (s[0, 0], s[0, 2]) == (1.0, 1.0) and math.isnan(s[0, 1]) and math.isnan(s[0, 3])
    v = metrics.pointing_shares(dc, dr, q, 0.05)
    assert v[0, 1] == 1.0 and math.isnan(v[0, 3])   # 0.04 < 0.05 x 1.0: not visible


# -- d. the prediction leads -----------------------------------------------------------------

def test_prediction_leads():
    dc = torch.tensor([[[1, 1, 2]], [[0, 2, 2]], [[1, 1, 1]], [[3, 3, 3]]])
    dr = torch.tensor([[[1.0, 1.0, 1.0]], [[1.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]]])
    assert metrics.leading_class(dc, dr).tolist() == [1, 0, 1, -1]  # image 1: the 2s are not coloured
    pred = torch.tensor([1, 2, 1, 3])
    assert metrics.prediction_leads(dc, dr, pred) == (pytest.approx(0.5), 4)
    share, n = metrics.prediction_leads(dc, dr, pred, labels=torch.tensor([1, 2, 0, 0]))
    assert (share, n) == (pytest.approx(0.5), 2)


# -- e. causal check with its interval, thresholds, report --------------------------------------

def test_causal_check_bootstrap_interval():
    from test_metrics import quadrant_data, quadrant_of_pixels
    model, x, _, _ = quadrant_data(8)
    quad = quadrant_of_pixels().expand(8, 8, 8)
    right = metrics.causal_check(model, x, quad, x[:, 0])
    lo, hi = right["causal_effect_ci"]
    assert 0 < lo <= right["causal_effect"] <= hi
    wrong = metrics.causal_check(model, x, (quad + 1) % 4, x[:, 0])
    assert wrong["causal_effect_ci"][1] < 0
    const = metrics.sensitivity.bootstrap_ci(torch.tensor([0, 1, 1]), torch.tensor([2, 2, 5]),
                                             torch.tensor([3.0, 3.0, 3.0]), 2)
    assert const == pytest.approx([3.0, 3.0])
    assert all(math.isnan(v) for v in metrics.sensitivity.bootstrap_ci(
        torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0), 4))


def test_passes_against_thresholds():
    good = {"rho_image_noise": 0.1, "rho_image_image": 0.5, "pointing_strong": 0.95, "pointing_visible": 0.85,
            "class_share": 0.7, "causal_effect": 0.3, "causal_ci_low": 0.1, "causal_regions": 50,
            "head_predicted_map_rho": 0.2, "prediction_leads": 0.9}
    assert set(metrics.passes(good)) == set(metrics.THRESHOLDS) and all(metrics.passes(good).values())
    bad = dict(good, rho_image_image=0.97, causal_ci_low=float("nan"), causal_regions=49, head_predicted_map_rho=None)
    failed = {k for k, ok in metrics.passes(bad).items() if not ok}
    assert failed == {"rho_image_image", "causal_ci_low", "causal_regions", "head_predicted_map_rho"}


def test_sanity_report_on_the_shipped_mnist_model():
    import clear_native
    model = clear_native.load_pretrained("mnist")
    x, y = clear_native.load_sample("mnist").tensors()
    row = metrics.sanity_report(model, x[:24], y[:24], {"method": "cam"}, data_images=12, model_images=2,
                                cascade_steps=2, max_mosaics=2, noise_images=1)
    assert (row.method, row.signal, row.data_images, row.model_images, row.cascade_steps) == ("cam", None, 12, 2, 2)
    assert row.mosaics == 2 and 0.5 < row.pointing_strong <= 1.0
    assert -1 <= row.rho_image_image < 0.9 and row.rho_class_maps is not None
    assert row.head_rho < 0.9 and row.causal_regions > 0 and row.causal_ci_low <= row.causal_effect
    assert set(metrics.passes(row)) == set(metrics.THRESHOLDS)
    assert row.as_dict()["cascade"][0]["randomised"] == "classifier"


def test_model_randomisation_keeps_each_images_top_k_classes():
    model = head_model()
    x = 0.5 + 0.5 * torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    calls = []

    def explain(m, images, target=None, classes=None):
        calls.append((images.shape[0], classes, None if target is None else target.tolist()))
        out = contribution_explain(m, images, target)
        out.classes = torch.tensor([[1, 3], [2, -1]])[:images.shape[0]]
        return out
    base = explain(model, x)
    base.classes = torch.tensor([[1, 3], [2, -1]])
    calls.clear()
    metrics.model_randomisation(model, explain, x, max_steps=1, base=base)
    assert calls == [(1, [1, 3], base.prediction[:1].tolist()), (1, [2], base.prediction[1:].tolist())]


def test_evaluate_markdown_has_the_sanity_table():
    from clear_native.evaluate import _sanity_md
    s = {"data_images": 8, "model_images": 2, "rho_image_image": 0.97, "rho_image_noise": 0.1,
         "rho_image_constant": 0.2, "head_predicted_map_rho": 0.3, "cascade_rho": 0.1, "pointing_strong": 0.95,
         "pointing_visible": 0.9, "mosaics": 3, "prediction_leads": 0.9, "causal_effect": 0.2,
         "causal_ci_low": 0.1, "causal_ci_high": 0.3, "causal_regions": 60}
    ok = dict(metrics.passes(dict(s, class_share=0.7)))
    md = "\n".join(_sanity_md({"methods": {"cam": {"method": "cam", "signal": None, "sanity": s,
                                                   "sanity_passes": ok}}}))
    assert "## Sanity checks beyond the paper" in md
    assert "| cam | 0.97* | 0.10 | 0.20 | 0.30 |" in md and "| 9/10 |" in md


def test_the_default_passes_every_check_on_the_shipped_model():
    """The default method (docs/method.md) meets every target of THRESHOLDS on the shipped MNIST
    model's sample (a smaller run than benchmarks/sanity.py's 500 test images), and the
    paper's deconvnet does not: the checks tell the two apart."""
    import clear_native
    from clear_native.explain import DEFAULT_METHOD
    model = clear_native.load_pretrained("mnist")
    x, y = clear_native.load_sample("mnist").tensors()
    budget = dict(data_images=200, model_images=16, cascade_steps=1, max_mosaics=24, noise_images=1)
    row = metrics.sanity_report(model, x, y, {"method": DEFAULT_METHOD}, **budget)
    failed = [k for k, ok in metrics.passes(row).items() if not ok]
    assert not failed, {k: getattr(row, k) for k in failed}
    paper = metrics.sanity_report(model, x, y, {"method": "deconvnet", "signal": "logit"}, **budget)
    assert not all(metrics.passes(paper).values())
