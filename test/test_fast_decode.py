"""Fast batch-1 greedy decoder on tiny random checkpoints (CPU path, no CUDA graphs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from n3d_ros.vlm.fast_decode import DecodeConfig, FastDecoder
from n3d_ros.vlm.hf_loading import load_qwen_vl
from test_vlm_n3d import tiny_checkpoint


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def ckpt(request, tmp_path_factory):
    return load_qwen_vl(tiny_checkpoint(tmp_path_factory, request.param), device="cpu", dtype="fp32")


def _inputs(ckpt, text: str, seed: int = 0):
    img = np.random.default_rng(seed).integers(0, 255, (168, 224, 3), dtype=np.uint8)
    return ckpt.encode(text, [img])


def test_tokens_equal_model_generate(ckpt):
    inputs = _inputs(ckpt, "<image>How far is the mug from the laptop?")
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        ref = ckpt.model.generate(**inputs, do_sample=False, max_new_tokens=24)[0, n:].tolist()
    dec = FastDecoder(ckpt.model, eos_token_ids=ckpt.eos_token_ids(), config=DecodeConfig(max_seq_len=512))
    res = dec.generate(inputs, max_new_tokens=24)
    assert res.tokens == ref
    assert res.prompt_len == n and res.reused_prefix == 0
    assert len(set(ref)) > 1  # a degenerate repeat would make the comparison weak


def test_prefix_reuse_equals_recompute(ckpt):
    first = _inputs(ckpt, "<image>How far is the mug from the laptop? First locate them.")
    second = _inputs(ckpt, "<image>How far is the mug from the laptop? The 3D bbox of mug is [0.1].")
    dec = FastDecoder(ckpt.model, eos_token_ids=ckpt.eos_token_ids(), config=DecodeConfig(max_seq_len=512))
    dec.generate(first, max_new_tokens=16, prefix_key="img0")
    reused = dec.generate(second, max_new_tokens=16, prefix_key="img0")
    fresh = FastDecoder(ckpt.model, eos_token_ids=ckpt.eos_token_ids(),
                        config=DecodeConfig(max_seq_len=512)).generate(second, max_new_tokens=16)
    n_img = int((second["input_ids"] == ckpt.image_token_id).sum())
    assert reused.reused_prefix > n_img
    assert reused.tokens == fresh.tokens
    # another image key: nothing may be reused
    other = dec.generate(second, max_new_tokens=4, prefix_key="img1")
    assert other.reused_prefix == 0


def test_min_new_tokens_and_cache_limit(ckpt):
    inputs = _inputs(ckpt, "<image>hi")
    dec = FastDecoder(ckpt.model, eos_token_ids=ckpt.eos_token_ids(), config=DecodeConfig(max_seq_len=256))
    res = dec.generate(inputs, max_new_tokens=10, min_new_tokens=10)
    assert len(res.tokens) == 10
    with pytest.raises(ValueError, match="exceeds the cache"):
        dec.generate(inputs, max_new_tokens=256)


def test_stops_on_eos(ckpt):
    inputs = _inputs(ckpt, "<image>hi")
    dec = FastDecoder(ckpt.model, eos_token_ids=ckpt.eos_token_ids(), config=DecodeConfig(max_seq_len=256))
    probe = dec.generate(inputs, max_new_tokens=6, min_new_tokens=6).tokens
    # declare the 3rd greedy token an EOS: decoding must stop right after producing it
    dec.eos = frozenset({probe[2]})
    res = dec.generate(inputs, max_new_tokens=6)
    assert res.stopped_on_eos and res.tokens == probe[: probe.index(probe[2]) + 1]
