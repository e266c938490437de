"""clear_native.metrics against hand-computed cases."""
import math

import pytest
import torch

from clear_native import metrics


class SumModel(torch.nn.Module):
    """Two classes: logit_0 = sum of the image's left column, logit_1 = 1.5."""

    def forward(self, x):
        left = x[:, 0, :, 0].sum(1)
        return torch.stack([left, torch.full_like(left, 1.5)], 1)


def test_strong_mask_relative_threshold():
    pos = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[-1.0, -2.0], [-3.0, 0.0]]])
    assert metrics.strong_mask(pos, 0.5).tolist() == [[[False, False], [True, True]],
                                                     [[False, False], [False, False]]]
    assert metrics.strong_mask(pos, 0.0)[0].sum() == 3  # positive pixels only


def test_strong_feature_accuracy_by_hand():
    # Image 0: left column (1, 1) -> logit 2 > 1.5 -> class 0 (correct).
    # Its positive map marks the top-left pixel as the only strong one.
    x = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    labels = torch.tensor([0])
    pos = torch.tensor([[[1.0, 0.0], [0.2, 0.0]]])
    curve = metrics.strong_feature_accuracy(SumModel(), x, labels, pos, thresholds=[0.5, 0.1])
    assert curve.full == 1.0
    # t=0.5: keep only top-left -> left sum 1 < 1.5 -> wrong; remove it -> sum 1 -> wrong.
    # t=0.1: both left pixels strong -> kept sum 2 -> right; removed sum 0 -> wrong.
    assert curve.kept == [0.0, 1.0] and curve.removed == [0.0, 0.0]
    assert curve.strong_share == [0.25, 0.5]
    best = curve.closest_to_paper()
    assert best["threshold"] == 0.1


def test_deletion_insertion_by_hand():
    x = torch.tensor([[[[2.0, 0.0], [1.0, 0.0]]]])
    sal = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # order: (0,0), (0,1), (1,0), (1,1)
    res = metrics.deletion_insertion(SumModel(), x, torch.tensor([0]), sal, steps=2)

    def p0(s):  # softmax prob of class 0 with left-column sum s
        return 1 / (1 + math.exp(1.5 - s))

    assert res.fractions == [0.0, 0.5, 1.0]
    # Deletion: 0 px removed (sum 3), 2 removed ((0,0),(0,1) -> sum 1), all (sum 0).
    assert res.deletion == pytest.approx([p0(3), p0(1), p0(0)])
    assert res.insertion == pytest.approx([p0(0), p0(2), p0(3)])
    assert res.deletion_auc == pytest.approx(0.25 * (p0(3) + 2 * p0(1) + p0(0)))


def test_dominance_agreement_by_hand():
    dom = torch.tensor([[[0, 0], [1, -1]], [[2, 1], [1, 1]]])
    pred = torch.tensor([0, 1])
    labels = torch.tensor([0, 2])            # image 1 is misclassified (true 2, predicted 1)
    out = metrics.dominance_agreement(dom, pred, labels, num_classes=3)
    assert out["share_predicted"].tolist() == pytest.approx([2 / 3, 3 / 4])
    assert out["share_predicted_correct"] == pytest.approx(2 / 3)
    assert out["wrong_true_class_share"] == pytest.approx(1 / 4)
    conf = out["wrong_region_confusion"]
    assert conf[0, 1] == 1 and conf[1, 2] == 1 and conf.sum() == 2


def test_prediction_share_counts_the_coloured_pixels():
    # image 0: a tie pixel (response 0, class 0 by the dominance's policy) and a pixel
    # without a class; image 1: no response at all
    dom = torch.tensor([[[0, 1], [1, -1]], [[0, 0], [0, 0]]])
    resp = torch.tensor([[[0.0, 2.0], [1.0, float("nan")]], [[0.0, 0.0], [0.0, 0.0]]])
    pred = torch.tensor([1, 0])
    share = metrics.prediction_share(dom, resp, pred)
    assert share[0] == 1.0 and math.isnan(share[1])  # two coloured pixels, both class 1
    strong = metrics.prediction_share(dom, resp, pred, strong=0.6)  # only the response 2.0
    assert strong[0] == 1.0 and math.isnan(strong[1])
    agree = metrics.dominance_agreement(dom, pred, torch.tensor([1, 0]), 2, dominant_response=resp)
    torch.testing.assert_close(agree["share_predicted"], share, equal_nan=True)
    assert agree["share_predicted_correct"] == 1.0  # image 1 has no coloured pixel: left out
    rows = metrics.table_rows(dom, resp, pred, 2, 0.1)
    assert rows[0]["prediction_share"] == 1.0 and rows[1]["prediction_share"] is None
    assert rows[0]["dominant_shares"] == [0.25, 0.5]  # of all pixels: the tie counts for class 0
    assert rows[0]["prediction_share_strong"] == 1.0 and rows[1]["prediction_share_strong"] is None
    assert rows[1]["top_dominant"] == 0 and rows[1]["agrees"] is True


def test_sanity_check_rows_and_model_untouched():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 3, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 5, 5)

    class Maps:
        def __init__(self, m):
            out = m(x)
            self.dominant_response, self.dominant_class = out.max(1)

    rows = metrics.sanity_check(model, Maps)
    assert [r["randomised"] for r in rows] == ["none", "2", "0"]
    assert rows[0]["spearman"] == 1.0 and rows[-1]["spearman"] < 0.99
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_gradient_saliency_matches_autograd():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.randn(2, 1, 2, 2)
    sal = metrics.gradient_saliency(model, x, torch.tensor([0, 2]))
    w = model[1].weight.detach()
    assert torch.allclose(sal[0].flatten(), w[0].abs()) and torch.allclose(sal[1].flatten(), w[2].abs())


# --- class_sensitivity ---------------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from conftest import DEVICES  # noqa: E402


def quadrant_of_pixels() -> torch.Tensor:
    """(8, 8) int64: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""
    i = torch.arange(8)
    return 2 * (i.view(8, 1) >= 4) + (i.view(1, 8) >= 4)


def quadrant_model() -> torch.nn.Module:
    """1x8x8 images, 4 classes: logit_c = sum of quadrant c (identity conv, then the head)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Flatten(), torch.nn.Linear(64, 4))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[2].weight.copy_(torch.nn.functional.one_hot(quadrant_of_pixels().flatten(), 4).T.float())
        model[2].bias.zero_()
    return model.eval()


def quadrant_data(n=6):
    x = 0.5 + 0.5 * torch.rand(n, 1, 8, 8)
    model = quadrant_model()
    with torch.no_grad():
        pred = model(x).argmax(1)
    labels = pred.clone()
    labels[0] = (pred[0] + 1) % 4          # one misclassified image
    return model, x, labels, pred


def quadrant_maps(model, x):
    """Per-class contribution maps of the quadrant model (they depend on its head)."""
    contrib = model[0](x) * model[2].weight.view(1, 4, 8, 8)
    resp, cls = contrib.max(1)
    return SimpleNamespace(dominant_class=cls, dominant_response=resp, prediction=model(x).argmax(1))


def test_strong_pixel_shares_by_hand():
    nan = float("nan")
    dom = torch.tensor([[[0, 0], [1, -1]],         # image 0: correct (pred 0 = label 0)
                        [[2, 1], [1, 1]],          # image 1: wrong (pred 1, label 2)
                        [[0, 0], [0, 0]]])         # image 2: no strong pixel
    resp = torch.tensor([[[1.0, 0.1], [0.5, 0.8]],  # (0,1) below 0.2 * 1.0; -1 class never strong
                         [[4.0, 2.0], [nan, 0.5]],  # NaN and 0.5 < 0.8 not strong
                         [[0.0, -1.0], [nan, 0.0]]])
    out = metrics.strong_pixel_shares(dom, resp, torch.tensor([0, 1, 0]), torch.tensor([0, 2, 0]),
                                      num_classes=3)
    assert out["share_predicted_correct"] == pytest.approx(1 / 2)   # strong: (0,0)=0, (1,0)=1
    assert out["share_true_wrong"] == pytest.approx(1 / 2)          # strong: (0,0)=2, (0,1)=1
    assert out["share_predicted_wrong"] == pytest.approx(1 / 2)
    assert out["chance"] == pytest.approx(1 / 3)
    assert (out["images_correct"], out["images_wrong"], out["images_without_strong"]) == (1, 1, 1)
    assert metrics.dominant_strong_mask(dom, resp, 0.2).flatten(1).sum(1).tolist() == [2, 2, 0]
    out = metrics.strong_pixel_shares(dom, resp, torch.tensor([0, 1, 0]), torch.tensor([0, 2, 0]),
                                      num_classes=3, strong=0.6)   # image 0 keeps only (0,0)
    assert out["share_predicted_correct"] == 1.0 and out["share_true_wrong"] == pytest.approx(1.0)


def test_causal_check_by_hand():
    # 8 strong pixels: 4 of quadrant 0 dominated by class 0, 4 of quadrant 1 by class 1, so
    # k = 4 deletes each whole set: no randomness. With A, B the sums of the two sets,
    # class 0: d(region) = A, d(complement) = -B / 3 -> A + B / 3; class 1: B + A / 3.
    model, x, _, _ = quadrant_data(1)
    dom = torch.zeros(1, 8, 8, dtype=torch.int64)
    resp = torch.zeros(1, 8, 8)
    dom[0, 0, :4], dom[0, 0, 4:] = 0, 1
    resp[0, 0, :] = 1.0
    a, b = float(x[0, 0, 0, :4].sum()), float(x[0, 0, 0, 4:].sum())
    out = metrics.causal_check(model, x, dom, resp)
    assert out["causal_pairs"] == 2 and out["causal_skipped"] == 0
    assert out["causal_effect_per_class"][:2] == pytest.approx([a + b / 3, b + a / 3])
    assert math.isnan(out["causal_effect_per_class"][2])
    assert out["causal_effect"] == pytest.approx((a + b) * 2 / 3)


@pytest.mark.parametrize("device", DEVICES)
def test_causal_check_true_vs_permuted_regions(device):
    model, x, _, _ = quadrant_data(8)
    model, x = model.to(device), x.to(device)
    quad = quadrant_of_pixels().to(device).expand(8, 8, 8)
    resp = x[:, 0]
    right = metrics.causal_check(model, x, quad, resp)
    wrong = metrics.causal_check(model, x, (quad + 1) % 4, resp)
    assert right["causal_pairs"] == wrong["causal_pairs"] == 32 and right["causal_skipped"] == 0
    # Expected: right ~ 16 * 0.75 * 4 / 3 = 16, permuted ~ -5.3 (pixels in [0.5, 1]).
    assert right["causal_effect"] > 10 and wrong["causal_effect"] < -2
    assert right["causal_effect_pairs_mean"] == pytest.approx(right["causal_effect"])


def test_causal_check_gamed_maps_are_skipped():
    model, x, labels, pred = quadrant_data(5)
    gamed = SimpleNamespace(dominant_class=pred.view(-1, 1, 1).expand(5, 8, 8).clone(),
                            dominant_response=x[:, 0], prediction=pred)
    res = metrics.class_sensitivity(model, x, labels, gamed)
    assert res.share_predicted_correct == 1.0
    assert res.causal_pairs == 0 and res.causal_skipped == 5 and math.isnan(res.causal_effect)
    # 61 strong pixels of class 0, 3 of class 1: class 0 skipped (complement 3 < 4), class 1
    # is no candidate; with min_pixels=3 both are scored.
    dom = torch.zeros(1, 8, 8, dtype=torch.int64)
    dom[0, 0, :3] = 1
    out = metrics.causal_check(model, x[:1], dom, x[:1, 0])
    assert (out["causal_pairs"], out["causal_skipped"]) == (0, 1)
    out = metrics.causal_check(model, x[:1], dom, x[:1, 0], min_pixels=3)
    assert (out["causal_pairs"], out["causal_skipped"]) == (2, 0)


def test_head_randomisation():
    model, x, _, _ = quadrant_data(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    out = metrics.head_randomisation(model, lambda m: quadrant_maps(m, x), seed=3)
    assert out["head_randomised_module"] == "2"
    assert 0.0 <= out["head_randomised_agreement"] < 0.6       # the maps follow the head
    fixed = quadrant_maps(model, x)
    still = metrics.head_randomisation(model, lambda m: fixed)  # ignores the model
    assert still["head_randomised_agreement"] == 1.0
    assert torch.equal(rng, torch.random.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="no module with parameters"):
        metrics.head_randomisation(torch.nn.Flatten(), lambda m: fixed)


def test_class_sensitivity_bad_shapes():
    model, x, labels, _ = quadrant_data(2)
    maps = quadrant_maps(model, x)
    bad = SimpleNamespace(dominant_class=maps.dominant_class[:, :, :7], dominant_response=maps.dominant_response,
                          prediction=maps.prediction)
    with pytest.raises(ValueError, match=r"dominant_class must be \(N, H, W\) = \(2, 8, 8\), got \(2, 8, 7\)"):
        metrics.class_sensitivity(model, x, labels, bad)
    with pytest.raises(ValueError, match=r"labels must be \(N,\) = \(2,\), got \(3,\)"):
        metrics.class_sensitivity(model, x, torch.zeros(3, dtype=torch.int64), maps)
    with pytest.raises(ValueError, match=r"images must be \(N, C_in, H, W\), got \(2, 8, 8\)"):
        metrics.class_sensitivity(model, x[:, 0], labels, maps)
    with pytest.raises(ValueError, match=r"prediction must be \(N,\) = \(2,\), got \(2, 1\)"):
        metrics.strong_pixel_shares(maps.dominant_class, maps.dominant_response, maps.prediction[:, None],
                                    labels, num_classes=4)
    with pytest.raises(TypeError, match="prediction"):
        metrics.class_sensitivity(model, x, labels, SimpleNamespace(dominant_class=maps.dominant_class,
                                                                    dominant_response=maps.dominant_response))


def test_class_sensitivity_deterministic():
    model, x, labels, _ = quadrant_data(6)
    maps = quadrant_maps(model, x)

    def run(seed):
        return metrics.class_sensitivity(model, x, labels, maps, explain=lambda m: quadrant_maps(m, x),
                                         seed=seed, batch_size=5).as_dict()

    first = run(0)
    assert repr(first) == repr(run(0))
    assert first["causal_effect_pairs_mean"] != run(1)["causal_effect_pairs_mean"]
    assert first["images_correct"] == 5 and first["images_wrong"] == 1 and first["causal_pairs"] == 24
    assert metrics.class_sensitivity(model, x, labels, maps).head_randomised_agreement is None


def test_class_sensitivity_on_shipped_mnist_model():
    import clear_native

    model = clear_native.load_pretrained("mnist")
    x, y = clear_native.load_sample("mnist").tensors()
    x, y = x[:48], y[:48]
    res = metrics.class_sensitivity(model, x, y, clear_native.Clear(model, method="cam")(x),
                                    explain=lambda m: clear_native.Clear(m, method="cam")(x))
    assert 0.0 <= res.share_predicted_correct <= 1.0 and res.chance == 0.1
    assert res.images_correct + res.images_wrong + res.images_without_strong == 48
    assert 0.0 <= res.head_randomised_agreement <= 1.0 and res.head_randomised_module == "classifier"
    assert res.causal_pairs > 0 and math.isfinite(res.causal_effect)
