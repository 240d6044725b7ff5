"""The spatial benchmark harness: held-out sim scenes -> pipeline -> detection and QA metrics.

Pure Python (no ROS). For every sample (one rendered scene, its visible ground-truth boxes and a
few questions with exact answers) the pipeline is queried in each mode:
    monocular: frame.depth = None (the backend's geometry encoder estimates the scene)
    depth:     frame.depth = the rendered z-depth (metres)
and we collect AP3D@IoU (detect_only query vs all visible GT, labels matched), the median centre
error of same-label matches, the median relative error of DISTANCE answers, QA accuracy per
question kind, and the wall-clock latency of every query.

The pipeline is anything with `query(frame, question, targets=(), *, detect_only=False) ->
QueryResult` (the real `SpatialPipeline`, or a test double), so the harness is testable without
a model. Held-out seeds start at HELD_OUT_FIRST_SEED; training uses 0 .. HELD_OUT_FIRST_SEED-1.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from ..core.box_overlap import iou_3d, iou_matrix
from ..core.metrics import MatchedPair, QARecord, ap3d_at, median_centre_error, normalize_label, qa_accuracy
from ..core.objects import GroundedObject
from ..core.questions import QuestionKind
from ..pipeline.types import CameraFrame, QueryResult

HELD_OUT_FIRST_SEED = 1_000_000
MODES = ("monocular", "depth")
DETECT_QUESTION = "Detect all objects."

TruthValue = float | int | str | bool

# Kinds whose truth is a metric length in metres (the answer's number is converted from its unit).
METRIC_KINDS = frozenset({QuestionKind.DISTANCE, QuestionKind.GAP, QuestionKind.DISTANCE_TO_CAMERA,
                          QuestionKind.HEIGHT, QuestionKind.WIDTH, QuestionKind.LENGTH,
                          QuestionKind.LOCATE})
# Categorical direction kinds and the words an answer may commit to.
DIRECTION_WORDS = {
    QuestionKind.LEFT_RIGHT: ("left", "right"),
    QuestionKind.ABOVE_BELOW: ("above", "below"),
    QuestionKind.FRONT_BEHIND: ("in front of", "behind"),
}
LABEL_KINDS = frozenset({QuestionKind.CLOSEST, QuestionKind.FARTHEST, QuestionKind.LARGEST,
                         QuestionKind.SMALLEST})
_UNIT_TO_METRES = {"mm": 1e-3, "millimetre": 1e-3, "millimeter": 1e-3, "cm": 1e-2, "centimetre": 1e-2,
                   "centimeter": 1e-2, "m": 1.0, "metre": 1.0, "meter": 1.0, "km": 1e3,
                   "in": 0.0254, "inch": 0.0254, "inches": 0.0254, "ft": 0.3048, "foot": 0.3048,
                   "feet": 0.3048}
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())} | {"no": 0, "none": 0}
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_IDS = re.compile(r"\(?\b(?:bbox|obj|object)[_ ]?\d+\b\)?", re.IGNORECASE)  # "(bbox_0)" carries digits
_NUM_UNIT = re.compile(rf"({_NUM})\s*({'|'.join(sorted(_UNIT_TO_METRES, key=len, reverse=True))})s?\b",
                       re.IGNORECASE)
_NUM_ANY = re.compile(_NUM)
_CLOCK = re.compile(rf"({_NUM})\s*o\s*'?\s*clock", re.IGNORECASE)


# ---------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class EvalQuestion:
    """A question with its exact answer (value of core.reasoning.Answer for the GT boxes)."""

    text: str
    kind: QuestionKind
    targets: tuple[str, ...]
    truth: TruthValue      # float metres | int count/hour | str category/label | bool


@dataclass(frozen=True)
class EvalSample:
    """One held-out scene.

    frame:   the rendered image with `depth` set ((H, W) float32 metres, z); monocular mode drops it.
    objects: visible ground-truth objects, optical frame of `frame`, labels as the sim names them.
    """

    seed: int
    frame: CameraFrame
    objects: list[GroundedObject]
    questions: list[EvalQuestion]


class QueryPipeline(Protocol):
    def query(self, frame: CameraFrame, question: str, targets: Sequence[str] = (), *,
              detect_only: bool = False) -> QueryResult: ...


@dataclass(frozen=True)
class EvalConfig:
    modes: tuple[str, ...] = MODES
    iou_thresholds: tuple[float, ...] = (0.25, 0.5)
    rel_tol: float = 0.10                 # numeric answers within 10 % count as correct
    prompt_labels: bool = False           # detection prompt: False = "everything", True = GT label set
    prompt_targets: bool = False          # questions: False = the model decides what to ground,
                                          # True = the GT target phrases go in `targets` (grounding given names)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")
        if not self.iou_thresholds or not all(0.0 < t <= 1.0 for t in self.iou_thresholds):
            raise ValueError(f"iou_thresholds must lie in (0, 1], got {self.iou_thresholds}")
        if not 0.0 <= self.rel_tol < 1.0:
            raise ValueError(f"rel_tol must be in [0, 1), got {self.rel_tol}")


@dataclass
class ModeReport:
    """Metrics of one mode; NaN where a metric had nothing to measure."""

    mode: str
    ap3d: dict[str, float]                # "0.25" -> AP3D
    median_centre_error_m: float
    matched_objects: int
    gt_objects: int
    median_rel_distance_error: float      # unanswered DISTANCE questions count as inf
    distance_questions: int
    qa_accuracy: float
    qa_accuracy_by_kind: dict[str, float]
    qa_counts_by_kind: dict[str, int]
    latency_median_s: float
    latency_p90_s: float
    latency_first_median_s: float         # the first query on each frame ("detect all", encoding included)
    latency_followup_median_s: float      # the questions after it on the same frame
    queries: int
    failed_queries: int


@dataclass
class BenchmarkReport:
    seeds: list[int]
    modes: dict[str, ModeReport]
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)   # hardware, date, backend (filled by the caller)

    def to_dict(self) -> dict:
        """JSON-ready: NaN -> None, +-inf -> "inf"/"-inf" (strict JSON has neither)."""
        return _json_safe({"seeds": self.seeds, "config": self.config, "environment": self.environment,
                           "modes": {k: asdict(v) for k, v in self.modes.items()}})


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else x
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------------------- answers
def _clean(text: str) -> str:
    return _IDS.sub(" ", str(text))


def _norm(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9' ]+", " ", str(text).lower()).split()) + " "


def parse_metres(text: str) -> float | None:
    """First length in the text, in metres ("1.2 m", "45 cm", "3 ft"); a bare number is metres."""
    t = _clean(text)
    m = _NUM_UNIT.search(t)
    if m is not None:
        unit = m.group(2).lower()
        return float(m.group(1)) * _UNIT_TO_METRES[unit]
    m = _NUM_ANY.search(t)
    return float(m.group(0)) if m is not None else None


def parse_count(text: str) -> int | None:
    t = _clean(text)
    m = _NUM_ANY.search(t)
    if m is not None:
        return int(round(float(m.group(0))))
    for word in _norm(t).split():
        if word in _NUMBER_WORDS:
            return _NUMBER_WORDS[word]
    return None


def parse_clock(text: str) -> int | None:
    t = _clean(text)
    m = _CLOCK.search(t) or _NUM_ANY.search(t)
    return int(round(float(m.group(1 if m.re is _CLOCK else 0)))) if m is not None else None


def parse_yes_no(text: str) -> str | None:
    """'yes'/'no' from the answer's first word, else the only one of them in the text."""
    words = _norm(_clean(text)).split()
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0]
    has_yes, has_no = "yes" in words, ("no" in words or "not" in words)
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The option that appears first in the text (longest wins at the same place); None if none."""
    t = _norm(_clean(text))
    best: tuple[int, int, str] | None = None
    for opt in options:
        pos = t.find(_norm(opt))
        if pos >= 0:
            key = (pos, -len(opt), opt)
            best = key if best is None or key < best else best
    return None if best is None else best[2]


def predicted_value(result: QueryResult, question: EvalQuestion, labels: Sequence[str]) -> TruthValue | None:
    """The answer as a value comparable with `question.truth`.

    A structured `result.value` (when the pipeline exposes one) wins; otherwise it is read from
    the answer text by kind. None when the query failed or nothing could be read.
    """
    if not result.success:
        return None
    value = getattr(result, "value", None)
    if value is not None:
        return "yes" if value is True else "no" if value is False else value
    text, kind = result.answer, question.kind
    if isinstance(question.truth, bool):
        return parse_yes_no(text)
    if kind in METRIC_KINDS:
        return parse_metres(text)
    if kind in (QuestionKind.COUNT, QuestionKind.DETECT):
        return parse_count(text)
    if kind == QuestionKind.CLOCK:
        hour = parse_clock(text)
        return None if hour is None else clock_category(hour)
    if kind in DIRECTION_WORDS:
        return parse_choice(text, DIRECTION_WORDS[kind])
    if kind in LABEL_KINDS:
        return parse_choice(text, labels)
    return text


def clock_category(hour: int) -> str:
    """Clock hours compare exactly (10 % of 12 would accept 11 but not 2 for 1)."""
    return f"{int(hour)} o'clock"


def truth_for_record(truth: TruthValue, kind: QuestionKind) -> str | float:
    if kind == QuestionKind.CLOCK and not isinstance(truth, (bool, str)):
        return clock_category(int(truth))
    if isinstance(truth, bool):
        return "yes" if truth else "no"
    if isinstance(truth, (int, float, np.integer, np.floating)):
        return float(truth)
    return str(truth)


# ---------------------------------------------------------------------------------- matching
def match_by_centre(predictions: Sequence[Sequence[GroundedObject]],
                    ground_truth: Sequence[Sequence[GroundedObject]]) -> list[MatchedPair]:
    """Same-label pairs per image, greedily by smallest centre distance (each object used once).

    Unlike the AP matching this needs no IoU, so badly scaled monocular boxes still count.
    """
    pairs: list[MatchedPair] = []
    for img, (preds, gts) in enumerate(zip(predictions, ground_truth)):
        if not preds or not gts:
            continue
        cand = []
        for i, p in enumerate(preds):
            for j, g in enumerate(gts):
                if normalize_label(p.label) == normalize_label(g.label):
                    d = float(np.linalg.norm(p.box.to_frame(g.box.frame).center - g.box.center))
                    cand.append((d, i, j))
        used_p, used_g = set(), set()
        ious = iou_matrix([p.box for p in preds], [g.box for g in gts]) if cand else None
        for _d, i, j in sorted(cand):
            if i in used_p or j in used_g:
                continue
            used_p.add(i)
            used_g.add(j)
            pairs.append(MatchedPair(preds[i], gts[j], float(ious[i, j]), img))
    return pairs


# Where a ground-truth object stands in "detect all", judged by the predictions around it (detection_failures).
FAILURE_CLASSES = ("found", "low IoU", "same label, misplaced", "wrong label", "nothing near")


@dataclass(frozen=True)
class ObjectOutcome:
    """One ground-truth object against one image's predictions.

    outcome: the first of FAILURE_CLASSES that applies:
      found                  a prediction with its label at IoU >= `iou`
      low IoU                its label, best IoU in [0.1, iou)
      same label, misplaced  its label with the centre within `near` of it, IoU < 0.1
      wrong label            another label on it: IoU >= 0.1, or the centre within half its diagonal
                             (a mug on a table is not "wrong label" for the table's box)
      nothing near           none of these
    iou: best IoU with a prediction of its label (0 if none).
    range_fixed_iou: that prediction's IoU once its centre is moved along its viewing ray to the
      ground truth's range, size and yaw kept: how much of the error is the distance along the ray.
    """
    label: str
    outcome: str
    iou: float
    range_fixed_iou: float


def classify_objects(predictions: Sequence[GroundedObject], ground_truth: Sequence[GroundedObject], *,
                     iou: float = 0.25, near: float = 0.5) -> list[ObjectOutcome]:
    """Each ground-truth object of one image by its best same-label prediction (not one-to-one, unlike
    AP matching: two objects may claim one box). `near` (m): the centre radius within which a box of
    the object's label counts as near it, at least half the object's diagonal."""
    if not 0.1 < iou <= 1.0 or near <= 0:
        raise ValueError(f"need 0.1 < iou <= 1 and near > 0, got {iou}, {near}")
    out: list[ObjectOutcome] = []
    if not ground_truth:
        return out
    frame = ground_truth[0].box.frame
    preds = [p.to_frame(frame) for p in predictions]
    ious = iou_matrix([g.box for g in ground_truth], [p.box for p in preds]) if preds else None
    for j, g in enumerate(ground_truth):
        half_diagonal = float(np.linalg.norm(g.box.size)) / 2
        radius = max(near, half_diagonal)
        same = [i for i, p in enumerate(preds) if normalize_label(p.label) == normalize_label(g.label)]
        dist = {i: float(np.linalg.norm(p.box.center - g.box.center)) for i, p in enumerate(preds)}
        best_iou, fixed_iou = 0.0, 0.0
        if same:
            # The same-label prediction that overlaps most, or the nearest one when none overlaps.
            best = max(same, key=lambda i: (ious[j, i], -dist[i]))
            best_iou = float(ious[j, best])
            b = preds[best].box
            r_pred, r_gt = float(np.linalg.norm(b.center)), float(np.linalg.norm(g.box.center))
            if r_pred > 0:
                moved = replace(b, center=b.center * (r_gt / r_pred))
                fixed_iou = iou_3d(moved, g.box)
        if best_iou >= iou:
            outcome = "found"
        elif best_iou >= 0.1:
            outcome = "low IoU"
        elif any(dist[i] <= radius for i in same):
            outcome = "same label, misplaced"
        elif any(ious[j, i] >= 0.1 or dist[i] <= half_diagonal for i in range(len(preds))):
            outcome = "wrong label"
        else:
            outcome = "nothing near"
        out.append(ObjectOutcome(g.label, outcome, best_iou, fixed_iou))
    return out


# ---------------------------------------------------------------------------------- harness
def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _timed_query(pipeline: QueryPipeline, frame: CameraFrame, question: str, targets: Sequence[str],
                 detect_only: bool) -> tuple[QueryResult, float]:
    t0 = time.perf_counter()
    result = pipeline.query(frame, question, tuple(targets), detect_only=detect_only)
    return result, time.perf_counter() - t0


def evaluate_mode(pipeline: QueryPipeline, samples: Sequence[EvalSample], mode: str,
                  config: EvalConfig = EvalConfig()) -> ModeReport:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    predictions: list[list[GroundedObject]] = []
    truths: list[list[GroundedObject]] = []
    records: list[QARecord] = []
    distance_errors: list[float] = []
    latencies: list[float] = []
    first: list[float] = []
    followup: list[float] = []
    failed = 0
    for sample in samples:
        frame = sample.frame if mode == "depth" else replace(sample.frame, depth=None)
        if mode == "depth" and frame.depth is None:
            raise ValueError(f"sample of seed {sample.seed} has no depth but mode 'depth' was asked")
        labels = sorted({o.label for o in sample.objects})
        prompt = labels if config.prompt_labels else ()
        det, dt = _timed_query(pipeline, frame, DETECT_QUESTION, prompt, True)
        latencies.append(dt)
        first.append(dt)
        failed += int(not det.success)
        predictions.append(list(det.objects) if det.success else [])
        truths.append(list(sample.objects))
        for q in sample.questions:
            res, dt = _timed_query(pipeline, frame, q.text, q.targets if config.prompt_targets else (), False)
            latencies.append(dt)
            followup.append(dt)
            failed += int(not res.success)
            pred = predicted_value(res, q, labels)
            if q.kind == QuestionKind.CLOCK and isinstance(pred, (int, float)) and not isinstance(pred, bool):
                pred = clock_category(int(pred))  # a structured value is the bare hour
            truth = truth_for_record(q.truth, q.kind)
            records.append(QARecord(q.kind, pred, truth))
            if q.kind == QuestionKind.DISTANCE:
                p = pred if isinstance(pred, (int, float)) and not isinstance(pred, bool) else None
                distance_errors.append(abs(p - truth) / abs(truth) if p is not None and truth else math.inf)
    ap = ap3d_at(predictions, truths, thresholds=config.iou_thresholds) if truths else {}
    pairs = match_by_centre(predictions, truths)
    acc = qa_accuracy(records, rel_tol=config.rel_tol)
    return ModeReport(
        mode=mode, ap3d={f"{t:g}": float(v) for t, v in ap.items()},
        median_centre_error_m=median_centre_error(pairs), matched_objects=len(pairs),
        gt_objects=sum(len(t) for t in truths),
        median_rel_distance_error=float(np.median(distance_errors)) if distance_errors else float("nan"),
        distance_questions=len(distance_errors),
        qa_accuracy=float(acc.overall), qa_accuracy_by_kind=dict(acc.per_kind),
        qa_counts_by_kind=dict(acc.counts),
        latency_median_s=_percentile(latencies, 50), latency_p90_s=_percentile(latencies, 90),
        latency_first_median_s=_percentile(first, 50), latency_followup_median_s=_percentile(followup, 50),
        queries=len(latencies), failed_queries=failed)


def evaluate(pipeline: QueryPipeline, samples: Iterable[EvalSample],
             config: EvalConfig = EvalConfig()) -> BenchmarkReport:
    """Run every mode of `config` over `samples` (materialised once, so render cost is paid once)."""
    samples = list(samples)
    modes = {m: evaluate_mode(pipeline, samples, m, config) for m in config.modes}
    return BenchmarkReport(seeds=[s.seed for s in samples], modes=modes, config=asdict(config))


# ---------------------------------------------------------------------------------- sim samples
def held_out_seeds(n: int, first: int = HELD_OUT_FIRST_SEED) -> list[int]:
    if n <= 0:
        raise ValueError(f"need at least one scene, got {n}")
    if first < HELD_OUT_FIRST_SEED:
        raise ValueError(f"benchmark seeds must be >= {HELD_OUT_FIRST_SEED} (training uses the ones "
                         f"below), got {first}")
    return list(range(first, first + n))


def sim_samples(seeds: Sequence[int], *, questions_per_scene: int = 6, max_width: int = 0,
                render_device: str = "cpu") -> Iterator[EvalSample]:
    """Render each seed's scene and ask `questions_per_scene` questions about its visible objects.

    max_width > 0 rescales wider scene cameras (keeping the field of view) to bound CPU time.
    """
    from ..sim.questions import gt_object, make_questions, marginal_objects, visible_objects
    from ..sim.render import render  # torch ray caster: only loaded when samples are rendered
    from ..sim.world import generate_scene

    for seed in seeds:
        scene = generate_scene(seed)
        if max_width > 0 and scene.camera.width > max_width:
            scene = scene.with_camera(scaled_camera(scene.camera, max_width / scene.camera.width))
        view = render([scene], device=render_device, named=True).numpy(0)
        visible = visible_objects(scene, view.instance, named_map=view.named)
        rng = np.random.default_rng(seed)
        questions = [EvalQuestion(q.text, QuestionKind(q.spec.kind), tuple(q.spec.targets), q.answer.value)
                     for q in make_questions(scene, visible, rng, questions_per_scene,
                                             marginal=marginal_objects(scene, view.instance, named_map=view.named))]
        frame = CameraFrame(image=view.rgb, camera=scene.camera, stamp_ns=0, frame_id=scene.camera.frame_id,
                            depth=np.asarray(view.depth, dtype=np.float32))
        objects = [with_box_2d(gt_object(scene, i), scene.camera) for i in visible]
        yield EvalSample(seed, frame, objects, questions)


def with_box_2d(obj: GroundedObject, camera) -> GroundedObject:
    """Ground truth as a detector would report it: score 1 and the box's 2D extent in pixels."""
    b2 = obj.box.project_2d(camera)
    return replace(obj, score=1.0, box_2d=None if b2 is None else tuple(float(v) for v in b2))


def scaled_camera(camera, factor: float):
    """The camera of the same view resampled by `factor` (pixel-centre convention kept)."""
    w = max(int(round(camera.width * factor)), 1)
    h = max(int(round(camera.height * factor)), 1)
    sx, sy = w / camera.width, h / camera.height
    K = camera.K.copy()
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return camera.with_intrinsics(K, w, h)


# ---------------------------------------------------------------------------------- report
def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def to_markdown(report: BenchmarkReport) -> str:
    """One table (metric x mode), then QA accuracy per question kind."""
    modes = list(report.modes)
    rows: list[tuple[str, list[str]]] = []
    first = report.modes[modes[0]]
    for t in first.ap3d:
        rows.append((f"AP3D@{t}", [_fmt(report.modes[m].ap3d.get(t, float("nan"))) for m in modes]))
    rows += [
        ("median centre error (m)", [_fmt(report.modes[m].median_centre_error_m)
                                     + f" ({report.modes[m].matched_objects}/{report.modes[m].gt_objects})"
                                     for m in modes]),
        ("median rel. distance error", [_fmt(report.modes[m].median_rel_distance_error)
                                        + f" (n={report.modes[m].distance_questions})" for m in modes]),
        ("QA accuracy (all kinds)", [_fmt(report.modes[m].qa_accuracy) for m in modes]),
        ("latency median (s)", [_fmt(report.modes[m].latency_median_s) for m in modes]),
        ("latency p90 (s)", [_fmt(report.modes[m].latency_p90_s) for m in modes]),
        ("latency median, first query on a frame (s)", [_fmt(report.modes[m].latency_first_median_s)
                                                        for m in modes]),
        ("latency median, follow-up questions (s)", [_fmt(report.modes[m].latency_followup_median_s)
                                                     for m in modes]),
        ("failed queries", [f"{report.modes[m].failed_queries}/{report.modes[m].queries}" for m in modes]),
    ]
    lines = ["| metric | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
    kinds = sorted({k for m in modes for k in report.modes[m].qa_counts_by_kind})
    if kinds:
        lines += ["", "| QA accuracy by kind | n | " + " | ".join(modes) + " |",
                  "|---|---|" + "---|" * len(modes)]
        for k in kinds:
            n = max(report.modes[m].qa_counts_by_kind.get(k, 0) for m in modes)
            vals = [_fmt(report.modes[m].qa_accuracy_by_kind.get(k, float("nan"))) for m in modes]
            lines.append(f"| {k} | {n} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
