"""AP3D on hand-computed fixtures, centre errors, QA accuracy."""
import math

import numpy as np
import pytest

from n3d_ros.core.box import Box3D
from n3d_ros.core.frames import Frame
from n3d_ros.core.metrics import (QARecord, ap3d, ap3d_at, ap3d_per_category, answer_correct,
                                  centre_errors, match_objects, median_centre_error,
                                  normalize_answer, qa_accuracy, relative_distance_error)
from n3d_ros.core.objects import GroundedObject
from n3d_ros.core.questions import QuestionKind


def obj(x, label="chair", score=1.0, size=1.0, shift=0.0):
    return GroundedObject(Box3D([x + shift, 0, 5], [size] * 3), label, score)


def test_perfect_is_one():
    gt = [[obj(0), obj(3)], [obj(0, "table")]]
    assert ap3d(gt, gt) == pytest.approx(1.0)
    assert ap3d_at(gt, gt) == {0.25: pytest.approx(1.0), 0.5: pytest.approx(1.0)}


def test_false_positive_above_true_positive():
    # ranked: FP (score .9), TP (score .8); one GT -> precision at recall 1 is 1/2 -> AP = 0.5
    gt = [[obj(0)]]
    pred = [[obj(10, score=0.9), obj(0, score=0.8)]]
    assert ap3d(pred, gt) == pytest.approx(0.5)
    # FP below the TP costs nothing
    pred = [[obj(10, score=0.5), obj(0, score=0.8)]]
    assert ap3d(pred, gt) == pytest.approx(1.0)


def test_half_recall_and_duplicates():
    gt = [[obj(0), obj(3)]]
    # one TP only: precision 1 up to recall .5 -> 51 of 101 recall points
    assert ap3d([[obj(0)]], gt) == pytest.approx(51 / 101)
    # a duplicate of the same GT is a FP (each GT matched once)
    pred = [[obj(0, score=0.9), obj(0, score=0.8), obj(3, score=0.7)]]
    # ranks: TP, FP, TP -> precision envelope: 1 to recall .5, 2/3 to recall 1
    assert ap3d(pred, gt) == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_threshold_behaviour():
    gt = [[obj(0)]]
    # shifted by 0.5 along x: IoU = 0.5 / 1.5 = 1/3 -> a TP at 0.25, a FP at 0.5
    pred = [[obj(0, shift=0.5)]]
    res = ap3d_at(pred, gt, thresholds=(0.25, 1 / 3, 0.5))
    assert res[0.25] == pytest.approx(1.0) and res[0.5] == 0.0
    assert res[1 / 3] == pytest.approx(1.0)  # IoU >= threshold counts


def test_labels_and_categories():
    gt = [[obj(0, "chair"), obj(3, "table")]]
    pred = [[obj(0, "Chair"), obj(3, "chair")]]  # the table is found but called a chair
    per = ap3d_per_category(pred, gt)
    assert per == {"chair": pytest.approx(1.0), "table": 0.0}
    assert ap3d(pred, gt) == pytest.approx(0.5)
    assert ap3d(pred, gt, match_labels=False) == pytest.approx(1.0)
    assert math.isnan(ap3d([[]], [[]]))
    assert ap3d([[]], gt) == 0.0
    with pytest.raises(ValueError, match="images"):
        ap3d([[]], [[], []])


def test_centre_errors():
    gt = [[obj(0), obj(3)]]
    pred = [[obj(0, shift=0.1, score=0.9), obj(3, shift=-0.3, score=0.8), obj(20)]]
    pairs = match_objects(pred, gt)
    assert len(pairs) == 2
    np.testing.assert_allclose(sorted(centre_errors(pairs)), [0.1, 0.3])
    assert median_centre_error(pairs) == pytest.approx(0.2)
    assert math.isnan(median_centre_error([]))
    # frames are reconciled: the same box stated in the N3D frame has zero error
    g = obj(1)
    p = GroundedObject(g.box.to_frame(Frame.N3D), "chair", 1.0)
    assert centre_errors(match_objects([[p]], [[g]]))[0] == pytest.approx(0.0)


def test_relative_distance_error():
    assert relative_distance_error(1.1, 1.0) == pytest.approx(0.1)
    assert relative_distance_error(0.0, 0.0) == 0.0
    assert relative_distance_error(1.0, 0.0) == math.inf
    np.testing.assert_allclose(relative_distance_error([2.0, 3.0], [1.0, 3.0]), [1.0, 0.0])


def test_qa_accuracy():
    records = [
        QARecord(QuestionKind.DISTANCE, "The distance is about 1.05 m.", 1.0),
        QARecord(QuestionKind.DISTANCE, 1.2, 1.0),
        QARecord(QuestionKind.DISTANCE, "far", 1.0),
        QARecord(QuestionKind.IS_BEHIND, "That is False.", "no"),
        QARecord(QuestionKind.IS_BEHIND, "Yes!", "yes"),
        QARecord(QuestionKind.IS_BEHIND, "yes and no", "yes"),
        QARecord("left_right", "Left.", "left"),
        QARecord("left_right", None, "left"),
        QARecord("count", "3", "3"),
    ]
    acc = qa_accuracy(records)
    assert acc.total == 9
    assert acc.per_kind == {"distance": pytest.approx(1 / 3), "is_behind": pytest.approx(2 / 3),
                            "left_right": 0.5, "count": 1.0}
    assert acc.overall == pytest.approx(5 / 9)
    assert qa_accuracy(records, rel_tol=0.25).per_kind["distance"] == pytest.approx(2 / 3)
    assert math.isnan(qa_accuracy([]).overall)
    assert normalize_answer("  In front OF! ") == "in front of"
    assert normalize_answer("True.") == "yes"
    assert answer_correct("0", 0) and not answer_correct("0.1", 0)
    assert answer_correct("in front of", "In front of.")
