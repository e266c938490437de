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
