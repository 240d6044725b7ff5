"""NodeParams validation and config/params.yaml agreement (no ROS needed)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from n3d_ros.ros import params as P

PARAMS_YAML = Path(__file__).resolve().parents[1] / "config" / "params.yaml"


def test_defaults_are_valid():
    assert P.validate(P.NodeParams()) == P.NodeParams()
    assert P.problems(P.NodeParams()) == []


@pytest.mark.parametrize("field,value,needle", [
    ("backend", "gpt5", "backend='gpt5': expected one of compact, n3d_vlm, qwen3_vl"),
    ("device", "tpu", "device='tpu'"),
    ("precision", "int4", "precision='int4'"),
    ("geometry_backend", "opencv", "geometry_backend='opencv'"),
    ("image_reliability", "sometimes", "image_reliability='sometimes'"),
    ("image_qos_depth", 0, "image_qos_depth=0: expected an integer in [1, 100]"),
    ("buffer_size", 1000, "buffer_size=1000"),
    ("sync_slop_sec", -0.1, "sync_slop_sec=-0.1"),
    ("sync_slop_sec", float("nan"), "sync_slop_sec=nan"),
    ("default_timeout_sec", 0.0, "default_timeout_sec=0.0: expected a number in (0.0, 600.0]"),
    ("max_question_chars", 0, "max_question_chars=0"),
    ("autostart", "yes", "autostart='yes': expected true or false"),
    ("marker_namespace", " ", "marker_namespace"),
    ("buffer_size", True, "buffer_size=True"),
])
def test_each_bad_value_is_named_with_its_range(field, value, needle):
    with pytest.raises(ValueError) as err:
        P.validate(replace(P.NodeParams(), **{field: value}))
    assert needle in str(err.value)


def test_all_problems_reported_at_once():
    bad = replace(P.NodeParams(), backend="x", image_qos_depth=-1, device="tpu")
    msg = str(pytest.raises(ValueError, P.validate, bad).value)
    assert "backend=" in msg and "image_qos_depth=" in msg and "device=" in msg


def test_large_backend_needs_model_dir():
    assert any("model_dir" in p for p in P.problems(replace(P.NodeParams(), backend="n3d_vlm")))
    assert P.problems(replace(P.NodeParams(), backend="n3d_vlm", model_dir="/ckpt")) == []


def test_from_mapping_coerces_ints_and_rejects_unknown_names():
    p = P.from_mapping({"sync_slop_sec": 1, "buffer_size": 3})
    assert p.sync_slop_sec == 1.0 and isinstance(p.sync_slop_sec, float) and p.buffer_size == 3
    with pytest.raises(ValueError, match="unknown parameters \\['bufer_size'\\]"):
        P.from_mapping({"bufer_size": 3})


def test_params_yaml_lists_every_parameter_with_valid_defaults():
    doc = yaml.safe_load(PARAMS_YAML.read_text())
    values = doc["/**"]["ros__parameters"]
    assert set(values) == set(P.param_names())
    assert P.from_mapping(values) == P.NodeParams()
    text = PARAMS_YAML.read_text()
    for name in P.param_names():  # each one documented by a comment on its line
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{name}:"))
        assert "#" in line, f"{name} has no comment in params.yaml"
