"""Both box parsers survive random, truncated, mutated and pathological text without raising."""
import json
import random

import numpy as np
from hypothesis import given, settings, strategies as st

from n3d_ros.core.camera import CameraModel
from n3d_ros.core.codec_n3d import N3DDecodeResult, decode_boxes
from n3d_ros.core.codec_qwen3 import Qwen3DecodeResult, decode_qwen3_json
from n3d_ros.core.pointcloud_norm import PointCloudNorm

CAM = CameraModel.from_intrinsics(500, 500, 320, 240, 640, 480)
NORM = PointCloudNorm(np.array([-1.0, -1.0, 0.5]), 0.6)
N_CASES = 10_000

TOKENS = ["(", ")", ",", "[", "]", "{", "}", '"', ":", "nan", "inf", "-inf", "Infinity", "NaN", "-",
          "1e309", "9" * 400, "bbox_", "=Bbox(", "bbox_3d", "\n", "```json", "```", "\\", "\x00",
          "label", "0.5", "999", "-0", "1_0", "٣", "\u202e", "\ud800", " ", "\t"]

N3D_VALID = ("bbox_0=Bbox(red mug,512,433,310,500,90,120,88)\n"
             "bbox_1=Bbox(laptop, open,0.61,0.52,1.8,0.3,0.35,0.02,0.25)\n")
QWEN_VALID = ("```json\n" + json.dumps([
    {"bbox_3d": [0.1, 0.2, 2.0, 0.1, 0.12, 0.1, 0.0, 0.25, 0.0], "label": "mug"},
    {"bbox_3d": [-0.4, 0.3, 2.5, 0.35, 0.02, 0.25, 0.0, -0.1, 0.0], "label": "laptop"}]) + "\n```")


def _random_unicode(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x3000),
                                   rng.randrange(0xD800, 0xE000), rng.randrange(0x10000, 0x10FFFF)]))
                   for _ in range(n))


def _mutate(rng: random.Random, s: str) -> str:
    s = list(s)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(3)
        i = rng.randrange(len(s) + 1)
        if op == 0 and s:
            del s[min(i, len(s) - 1)]
        elif op == 1:
            s.insert(i, rng.choice(TOKENS))
        elif s:
            s[min(i, len(s) - 1)] = rng.choice(TOKENS)
    return "".join(s)


def _pathological() -> list[str]:
    return [
        "[" * 20000, "{" * 20000, '{"a":' * 5000, "[" * 5000 + "]" * 5000,
        "bbox_0=Bbox(" + "a," * 50000, "bbox_0=Bbox(x" + ")" * 100000,
        "bbox_0=Bbox(" * 10000, "[" + "1," * 50000, "```json" * 10000,
        "x" * 100_000, ("bbox_1=Bbox(a," + "1," * 6 + "1)") * 5000,
        '[{"bbox_3d":[' + "9" * 100000 + "]}]", '[{"bbox_3d":[1e999,0,1,1,1,1,0,0,0]}]',
        "bbox_0=Bbox(a,1e999,0,1,1,1,1,1)", "bbox_0=Bbox(a,-0,-0,-0,-0,-0,-0,-0)",
        '[{"bbox_3d":[0,0,0,0,0,0,0,0,0],"label":null}]', '[{"bbox_3d":[true,0,1,1,1,1,0,0,0]}]',
        '{"bbox_3d":{"x":1}}', "[]", "{}", "", "\n\n\n", "```json\n```",
    ]


def _check(text: str) -> None:
    r1 = decode_boxes(text, CAM, NORM)
    assert isinstance(r1, N3DDecodeResult)
    r2 = decode_qwen3_json(text, CAM)
    assert isinstance(r2, Qwen3DecodeResult)
    for obj in r1.objects + r2.objects:
        assert np.all(np.isfinite(obj.box.center)) and np.all(obj.box.size >= 0)


def test_ten_thousand_strings():
    rng = random.Random(1234)
    cases = _pathological()
    while len(cases) < N_CASES:
        kind = rng.randrange(5)
        if kind == 0:
            cases.append(_random_unicode(rng, rng.randrange(0, 120)))
        elif kind == 1:
            src = rng.choice([N3D_VALID, QWEN_VALID])
            cases.append(src[: rng.randrange(len(src) + 1)])
        elif kind == 2:
            cases.append(_mutate(rng, rng.choice([N3D_VALID, QWEN_VALID])))
        elif kind == 3:
            cases.append("".join(rng.choice(TOKENS) for _ in range(rng.randrange(1, 40))))
        else:
            src = rng.choice([N3D_VALID, QWEN_VALID])
            cases.append(_mutate(rng, src[: rng.randrange(len(src) + 1)]))
    for text in cases:
        _check(text)
    # the unmutated outputs do parse
    assert len(decode_boxes(N3D_VALID, CAM, NORM).objects) == 2
    assert len(decode_qwen3_json(QWEN_VALID, CAM).objects) == 2


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_hypothesis_text(text):
    _check(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_hypothesis_token_soup(tokens):
    _check("".join(tokens))
