"""Segmentation metrics as pure functions of the confusion matrix, against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcn_dist.train import metrics as M

# rows = ground truth, columns = prediction; class 2 never occurs (neither labelled nor predicted)
CM = np.array([[3, 1, 0],
               [2, 4, 0],
               [0, 0, 0]])


def test_hand_computed_values():
    # valid pixels 10, correct 3 + 4
    assert M.pixel_accuracy(CM) == pytest.approx(0.7)
    # class accuracy 3/4 and 4/6; class 2 undefined and left out
    assert M.mean_accuracy(CM) == pytest.approx((3 / 4 + 4 / 6) / 2)
    # IoU 3 / (4 + 5 - 3) = 1/2 and 4 / (6 + 5 - 4) = 4/7
    iou = M.per_class_iou(CM)
    assert iou[:2] == pytest.approx([0.5, 4 / 7])
    assert math.isnan(iou[2])
    assert M.mean_iou(CM) == pytest.approx((0.5 + 4 / 7) / 2)
    # frequency weights 4/10 and 6/10
    assert M.fw_iou(CM) == pytest.approx(0.4 * 0.5 + 0.6 * 4 / 7)
    s = M.summarize(CM, ["a", "b", "c"])
    assert s["miou"] == pytest.approx((0.5 + 4 / 7) / 2)
    assert s["per_class_iou"]["b"] == pytest.approx(4 / 7)
    assert M.nan_to_none(s)["per_class_iou"]["c"] is None


def test_predicted_but_unlabelled_class_counts_as_zero_iou():
    cm = np.array([[2, 1], [0, 0]])  # class 1 predicted once, never labelled
    assert M.per_class_iou(cm) == pytest.approx([2 / 3, 0.0])
    assert M.mean_iou(cm) == pytest.approx(1 / 3)
    assert M.mean_accuracy(cm) == pytest.approx(2 / 3)  # class 1 has no labelled pixel
    assert M.fw_iou(cm) == pytest.approx(2 / 3)


def test_perfect_and_empty():
    assert M.summarize(np.diag([5, 7]))["miou"] == 1.0
    assert math.isnan(M.pixel_accuracy(np.zeros((2, 2))))
    with pytest.raises(ValueError):
        M.pixel_accuracy(np.zeros((2, 3)))


def test_torchmetrics_matrix_matches_numpy_and_ignores_ignore_index():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 9, 11), generator=g)
    target[:, :2] = 255  # unlabelled band
    pred = torch.randint(0, 3, (2, 9, 11), generator=g)
    metric = M.confusion_matrix_metric(3, ignore_index=255)
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    cm = metric.compute().numpy()
    ref = M.confusion_matrix_numpy(pred.numpy(), target.numpy(), 3, ignore_index=255)
    np.testing.assert_array_equal(cm, ref)
    assert cm.sum() == 2 * 7 * 11
