"""Evaluation metrics: 3D detection AP (Omni3D / COCO style), centre errors, spatial QA accuracy.

Pure functions over GroundedObject lists; nothing here knows about models or ROS.
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .box_overlap import iou_matrix
from .objects import GroundedObject
from .questions import QuestionKind

_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation


@dataclass(frozen=True)
class MatchedPair:
    """A prediction matched to a ground-truth object of the same image."""

    pred: GroundedObject
    truth: GroundedObject
    iou: float
    image: int


def normalize_label(label: str) -> str:
    """A label as matching compares it: lower case, single spaces."""
    return " ".join(str(label).lower().split())


def _check_images(predictions: Sequence[Sequence[GroundedObject]],
                  ground_truth: Sequence[Sequence[GroundedObject]]) -> None:
    if len(predictions) != len(ground_truth):
        raise ValueError(f"predictions cover {len(predictions)} images but ground truth "
                         f"covers {len(ground_truth)}")


def _greedy_match(predictions: Sequence[Sequence[GroundedObject]],
                  ground_truth: Sequence[Sequence[GroundedObject]], iou_threshold: float,
                  match_labels: bool) -> tuple[list[tuple[float, bool, str]], dict[str, int],
                                               list[MatchedPair]]:
    """COCO greedy matching, per image and category.

    Returns per-prediction (score, is_tp, category), the number of GT per category, and the pairs.
    Predictions are taken in descending score; each one takes the unmatched GT of its category
    with the highest IoU >= threshold.
    """
    records: list[tuple[float, bool, str]] = []
    n_gt: dict[str, int] = {}
    pairs: list[MatchedPair] = []

    def cat_of(o: GroundedObject) -> str:
        return normalize_label(o.label) if match_labels else ""

    for img, (preds, gts) in enumerate(zip(predictions, ground_truth)):
        for g in gts:
            n_gt[cat_of(g)] = n_gt.get(cat_of(g), 0) + 1
        order = sorted(range(len(preds)), key=lambda i: -float(preds[i].score))  # stable
        ious = iou_matrix([p.box for p in preds], [g.box for g in gts]) if preds and gts else None
        taken = np.zeros(len(gts), dtype=bool)
        for i in order:
            cat = cat_of(preds[i])
            best, best_iou = -1, iou_threshold
            for j, g in enumerate(gts):
                if taken[j] or cat_of(g) != cat or ious is None:
                    continue
                if ious[i, j] >= best_iou:
                    best, best_iou = j, float(ious[i, j])
            if best >= 0:
                taken[best] = True
                pairs.append(MatchedPair(preds[i], gts[best], best_iou, img))
            records.append((float(preds[i].score), best >= 0, cat))
    return records, n_gt, pairs


def _average_precision(scores_tp: list[tuple[float, bool]], n_gt: int) -> float:
    """101-point interpolated AP of one category (COCO)."""
    if n_gt == 0:
        return float("nan")
    if not scores_tp:
        return 0.0
    scores = np.array([s for s, _ in scores_tp])
    tp = np.array([t for _, t in scores_tp], dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order]
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    # Make precision monotonically decreasing (the envelope), then sample at fixed recalls.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def ap3d_per_category(predictions: Sequence[Sequence[GroundedObject]],
                      ground_truth: Sequence[Sequence[GroundedObject]], iou_threshold: float = 0.25,
                      *, match_labels: bool = True) -> dict[str, float]:
    """AP of each ground-truth category (lower-cased label; "" when labels are ignored)."""
    _check_images(predictions, ground_truth)
    records, n_gt, _ = _greedy_match(predictions, ground_truth, iou_threshold, match_labels)
    out = {}
    for cat, n in sorted(n_gt.items()):
        out[cat] = _average_precision([(s, t) for s, t, c in records if c == cat], n)
    return out


def ap3d(predictions: Sequence[Sequence[GroundedObject]],
         ground_truth: Sequence[Sequence[GroundedObject]], iou_threshold: float = 0.25, *,
         match_labels: bool = True) -> float:
    """Omni3D-style AP3D at one IoU threshold, in [0, 1].

    predictions / ground_truth: one list of objects per image (same order); prediction `score`
    ranks detections. Greedy matching by descending score, each GT matched once, 101-point
    interpolated precision, mean over the categories present in the ground truth (predictions of
    other categories do not count). NaN when there is no ground truth at all.
    """
    per_cat = ap3d_per_category(predictions, ground_truth, iou_threshold, match_labels=match_labels)
    return float(np.mean(list(per_cat.values()))) if per_cat else float("nan")


def ap3d_at(predictions: Sequence[Sequence[GroundedObject]],
            ground_truth: Sequence[Sequence[GroundedObject]], *,
            thresholds: Sequence[float] = (0.25, 0.5), match_labels: bool = True
            ) -> dict[float, float]:
    """{threshold: AP3D} for each IoU threshold."""
    return {float(t): ap3d(predictions, ground_truth, t, match_labels=match_labels)
            for t in thresholds}


def match_objects(predictions: Sequence[Sequence[GroundedObject]],
                  ground_truth: Sequence[Sequence[GroundedObject]], iou_threshold: float = 0.25,
                  *, match_labels: bool = True) -> list[MatchedPair]:
    """The true-positive pairs of the AP matching (for centre / size error statistics)."""
    _check_images(predictions, ground_truth)
    return _greedy_match(predictions, ground_truth, iou_threshold, match_labels)[2]


def centre_errors(pairs: Iterable[MatchedPair]) -> np.ndarray:
    """(N,) metres: distance between predicted and true box centres (in the truth's frame)."""
    errs = [float(np.linalg.norm(p.pred.box.to_frame(p.truth.box.frame).center - p.truth.box.center))
            for p in pairs]
    return np.array(errs, dtype=np.float64)


def median_centre_error(pairs: Iterable[MatchedPair]) -> float:
    """Median centre error in metres; NaN when there are no pairs."""
    errs = centre_errors(pairs)
    return float(np.median(errs)) if errs.size else float("nan")


def relative_distance_error(pred_distance: float | np.ndarray, true_distance: float | np.ndarray
                            ) -> float | np.ndarray:
    """|pred - true| / |true| (inf when true is 0 and pred is not; 0 when both are 0)."""
    p = np.asarray(pred_distance, dtype=np.float64)
    t = np.asarray(true_distance, dtype=np.float64)
    diff = np.abs(p - t)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(t == 0, np.where(diff == 0, 0.0, np.inf), diff / np.abs(t))
    return float(err) if err.ndim == 0 else err


# ---------------------------------------------------------------------------------- QA accuracy
_YES = frozenset({"yes", "true", "correct", "right", "y"})
_NO = frozenset({"no", "false", "incorrect", "wrong", "n"})
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


@dataclass(frozen=True)
class QARecord:
    """One answered question: kind, the model's answer (text or number) and the truth."""

    kind: QuestionKind | str
    predicted: str | float | None
    truth: str | float


@dataclass(frozen=True)
class QAAccuracy:
    overall: float                      # fraction correct over all records (NaN if none)
    per_kind: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces; a bare yes/no synonym becomes yes/no."""
    norm = " ".join(str(text).lower().translate(_PUNCT).split())
    if norm in _YES:
        return "yes"
    if norm in _NO:
        return "no"
    return norm


def _yes_no(text: str) -> str | None:
    """yes/no if the answer text commits to exactly one of them ("That is False." -> no)."""
    words = set(normalize_answer(text).split())
    has_yes, has_no = bool(words & _YES), bool(words & _NO)
    if has_yes == has_no:
        return None
    return "yes" if has_yes else "no"


def _as_number(value: str | float | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    m = _NUMBER.search(str(value))
    if m is None:
        return None
    x = float(m.group(0))
    return x if math.isfinite(x) else None


def answer_correct(predicted: str | float | None, truth: str | float, *,
                   rel_tol: float = 0.1) -> bool:
    """Numeric truth: the first number in the answer within rel_tol of it (exact match if the
    truth is 0). Categorical truth: normalized exact match, yes/no read from the whole answer."""
    if predicted is None:
        return False
    t_num = _as_number(truth) if not isinstance(truth, str) or _NUMBER.fullmatch(truth.strip()) \
        else None
    if t_num is not None:
        p_num = _as_number(predicted)
        if p_num is None:
            return False
        return abs(p_num - t_num) <= rel_tol * abs(t_num) if t_num != 0 else p_num == 0
    t_norm = normalize_answer(str(truth))
    if t_norm in ("yes", "no"):
        return _yes_no(str(predicted)) == t_norm
    return normalize_answer(str(predicted)) == t_norm


def qa_accuracy(records: Iterable[QARecord], *, rel_tol: float = 0.1) -> QAAccuracy:
    """Accuracy over all records and per question kind."""
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    for r in records:
        kind = r.kind.value if isinstance(r.kind, QuestionKind) else str(r.kind)
        counts[kind] = counts.get(kind, 0) + 1
        hits[kind] = hits.get(kind, 0) + int(answer_correct(r.predicted, r.truth, rel_tol=rel_tol))
    total = sum(counts.values())
    overall = sum(hits.values()) / total if total else float("nan")
    return QAAccuracy(overall=overall, per_kind={k: hits[k] / counts[k] for k in counts},
                      counts=counts, total=total)
