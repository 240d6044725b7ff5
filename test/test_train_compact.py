"""The training script end to end on CPU (tiny): data, refresh, a few steps, a loadable model folder."""
import json
import math
import os
import re
import shutil
import time

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from n3d_ros.core.questions import QuestionKind
from n3d_ros.tools.train_compact import GpuDataset, TrainConfig, parse_ema_decays, train


def _log(_msg: str) -> None:
    pass


def test_refresh_swaps_images_and_questions_together(tmp_path):
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
    from n3d_ros.tools.train_compact import build_tokenizer
    from n3d_ros.vlm.compact_model import CompactVLMConfig

    tok = build_tokenizer(n_scenes=20)
    tok.save(tmp_path / "tok.json")
    cfg = TrainConfig(device="cpu", scenes=8, workers=1, render_batch=8, questions_per_scene=3,
                      refresh_fraction=0.25)
    dec_cfg = CompactVLMConfig(vocab_size=tok.vocab_size)
    ds = GpuDataset(cfg, CompactEncoderConfig(), dec_cfg, str(tmp_path / "tok.json"), _log)
    try:
        rng = np.random.default_rng(0)
        before, questions_before = ds.rgb.clone(), list(ds.questions)
        ds.refresh(rng)                       # fresh scenes requested from the workers
        slots, futures = ds._pending
        for f in futures:
            f.result()
        assert torch.equal(ds.rgb, before)    # nothing changes until the whole batch is back
        ds.refresh(rng)                       # swapped in: images and questions at once
        assert not ds.refreshing and ds.next_seed == 8 + 2
        changed = (ds.rgb != before).flatten(1).any(1).nonzero().flatten().tolist()
        assert changed and set(changed) <= set(slots.tolist())
        for s in slots:
            assert ds.questions[s] is not questions_before[s]
        assert ds.usable.dtype.kind == "i"
        assert set(slots.tolist()) <= set(ds.usable.tolist()) | {s for s in slots if not ds.questions[s]}
        # A worker render (CPU) of a scene equals the first fill's render of it.
        fresh = GpuDataset(replace(cfg, scenes=2, scene_seed_offset=8), CompactEncoderConfig(), dec_cfg,
                           str(tmp_path / "tok.json"), _log)
        try:
            for slot, j in zip(slots, range(2)):        # seeds 8 and 9 went to the slots in order
                assert torch.equal(ds.rgb[slot], fresh.rgb[j])
                assert torch.equal(ds.depth[slot], fresh.depth[j])
                assert len(ds.questions[slot]) == len(fresh.questions[j])
        finally:
            fresh.close()
    finally:
        ds.close()


def test_workers_fill_the_slots_the_first_fill_left_before_replacing_any(tmp_path):
    """--initial-scenes: training starts on part of the pool; refresh fills the empty slots in order
    (seeds continuing), and only a full pool has scenes replaced."""
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
    from n3d_ros.tools.train_compact import build_tokenizer
    from n3d_ros.vlm.compact_model import CompactVLMConfig

    tok = build_tokenizer(n_scenes=20)
    tok.save(tmp_path / "tok.json")
    cfg = TrainConfig(device="cpu", scenes=6, initial_scenes=2, workers=1, render_batch=6, questions_per_scene=3,
                      refresh_fraction=0.5)
    dec_cfg = CompactVLMConfig(vocab_size=tok.vocab_size)
    ds = GpuDataset(cfg, CompactEncoderConfig(), dec_cfg, str(tmp_path / "tok.json"), _log)
    full = GpuDataset(replace(cfg, initial_scenes=0), CompactEncoderConfig(), dec_cfg, str(tmp_path / "tok.json"),
                      _log)
    try:
        assert ds.filling and ds.next_seed == 2 and set(ds.usable.tolist()) <= {0, 1}
        assert not ds.questions[2]                     # empty slots are never sampled
        rng = np.random.default_rng(0)
        submitted = []
        while ds.filling or ds.refreshing:
            ds.refresh(rng)
            if ds.refreshing:
                slots = ds._pending[0].tolist()
                if not submitted or submitted[-1] != slots:
                    submitted.append(slots)
                for f in ds._pending[1]:
                    f.result()
        assert submitted == [[2, 3, 4], [5]]           # refresh_fraction of the pool at a time, in order
        assert ds.next_seed == 6
        # The workers' renders (CPU) and questions of seeds 2-5 are those of the device's first fill.
        assert torch.equal(ds.rgb, full.rgb) and torch.equal(ds.depth, full.depth)
        assert [len(q) for q in ds.questions] == [len(q) for q in full.questions]
        assert ds.usable.tolist() == full.usable.tolist()
        ds.refresh(rng)                                # a full pool: now scenes are replaced
        assert ds.refreshing and ds.next_seed == 9 and not ds.filling
    finally:
        ds.close()
        full.close()
    with pytest.raises(ValueError, match="initial_scenes"):
        TrainConfig(scenes=4, initial_scenes=5)


def test_a_few_steps_write_a_model_the_backend_loads(tmp_path):
    out = tmp_path / "model"
    # Every architecture option at once: another model grid (smaller, for speed), fine features and global
    # context in the encoder, sub-patch depth detail and the geometry-source embedding in the decoder;
    # mirrored images; NHWC encoder weights; half of the pool filled while training; range loss by size.
    cfg = TrainConfig(out=str(out), device="cpu", minutes=0.05, scenes=6, initial_scenes=3, workers=1,
                      render_batch=6, images_per_step=2, questions_per_image=2, questions_per_scene=3, warmup_steps=1,
                      grid_width=256, grid_height=192, f0=192.0, fine_features=True, depth_cells=4,
                      source_embedding=True, encoder_context=1, mirror=True, channels_last=True, range_by_size=True)
    meta = train(cfg)
    assert meta["state"]["step"] >= 1
    for f in ("config.json", "encoder.safetensors", "encoder.onnx", "decoder.safetensors", "tokenizer.json",
              "training_state.json"):
        assert (out / f).is_file(), f
    state = json.loads((out / "training_state.json").read_text())
    assert state["state"]["runs"][0]["config"]["scenes"] == 6
    config = json.loads((out / "config.json").read_text())
    assert config["decoder"]["depth_cells"] == 4 and config["decoder"]["source_embedding"] is True
    assert config["encoder"]["context_layers"] == 1
    assert (config["encoder"]["in_width"], config["encoder"]["in_height"], config["encoder"]["f0"]) == (256, 192, 192.0)
    assert (config["decoder"]["grid_w"], config["decoder"]["grid_h"]) == (16, 12)
    from n3d_ros.vlm.compact_backend import DEFAULT_INFERENCE
    assert config["inference"] == DEFAULT_INFERENCE   # a fresh folder runs with the validated settings
    from n3d_ros.ros.sim_camera_node import render_sim_frame
    from n3d_ros.vlm.compact_backend import CompactSpatialVLM
    from n3d_ros.vlm.contract import SceneInput
    vlm = CompactSpatialVLM(out, device="cpu")
    seen = []                                          # which geometry source the decoder was told
    embed = vlm.decoder.embed_image
    vlm.decoder.embed_image = lambda *a: seen.append(bool(a[3])) or embed(*a)
    frame = render_sim_frame(1_000_124, width=160, height=120)
    g = vlm.ground(SceneInput(frame.rgb, frame.camera), "where is the red cabinet?")
    assert g.raw_text  # an untrained model says something; it must not crash
    # Each image and its mirror (mirror_average "always"), once more if the untrained output made no
    # question and the question's own phrases were grounded.
    assert seen in ([False] * 2, [False] * 4)
    seen.clear()
    g = vlm.ground(SceneInput(frame.rgb, frame.camera, depth=frame.depth), "how many chairs are there?")
    assert g.raw_text  # the measured-depth path through the depth detail and the source embedding
    assert seen in ([True] * 2, [True] * 4)
    # A set's class phrase is the question's own: a decoder that would write "<k:count> ball <set>" for
    # "how many chairs" writes "<k:count> chair <set>" (a stand-in lm_head, step by step: the kind, then
    # "ball" over "chair", then <set>).
    tok = vlm.tokenizer
    prefer = [[tok.kind_ids[QuestionKind.COUNT]], tok.encode_words("ball chair"), [tok.set_id], [tok.eos_id]]
    calls = []

    def lm_head(h):
        ids = prefer[min(len(calls), len(prefer) - 1)]
        calls.append(1)
        logits = torch.zeros(1, tok.vocab_size)
        logits[0, ids] = torch.arange(len(ids), 0, -1, dtype=torch.float32)
        return logits

    vlm.decoder.lm_head.forward = lm_head
    g = vlm.ground(SceneInput(frame.rgb, frame.camera), "how many chairs are there?")
    assert g.raw_text.startswith("<k:count> chair <set>"), g.raw_text
    vlm.close()


def test_range_by_size_weighs_a_range_miss_by_what_the_box_can_afford():
    """The same 30 % range miss costs a mug 3 m away (range / size 30) more than a bed 3 m away (2.6), and
    the plain loss the same; the other parameters' losses are untouched."""
    from n3d_ros.tools.train_compact import BOX_WEIGHTS, RANGE_BY_SIZE_CLAMP, _box_loss
    z = 3.0
    sizes = {"mug": (0.1, 0.1, 0.1), "bed": (1.6, 1.0, 2.0)}
    params = torch.tensor([[0.0, 0.0, math.log(z), *map(math.log, s), 0.0, 1.0] for s in sizes.values()])
    patch_z = torch.full((2,), z)
    miss = params.clone()
    miss[:, 2] = math.log(1.3)                  # the head predicts range relative to the patch: 30 % too far
    plain = [float(_box_loss(miss[i:i + 1], params[i:i + 1], patch_z[:1])) for i in range(2)]
    weighed = [float(_box_loss(miss[i:i + 1], params[i:i + 1], patch_z[:1], range_by_size=True)) for i in range(2)]
    assert plain[0] == pytest.approx(plain[1])
    mug, bed = weighed
    assert mug > plain[0] > bed
    # The residual is past smooth-L1's beta (0.05), where the loss is |x| - beta / 2: each factor comes back
    # from it: sqrt(range / (8 size)) within the clamp (mug 1.94, bed 0.61).
    factor = [(loss / BOX_WEIGHTS[2] + 0.025) / math.log(1.3) for loss in weighed]
    for f, s in zip(factor, sizes.values()):
        assert f == pytest.approx(np.clip(math.sqrt(z / (8.0 * math.exp(np.mean(np.log(s))))), *RANGE_BY_SIZE_CLAMP),
                                  rel=1e-4)
    # A size miss costs the same either way.
    size_miss = params.clone()
    size_miss[:, 2] = 0.0
    size_miss[:, 4] += 0.2
    assert float(_box_loss(size_miss, params, patch_z, range_by_size=True)) == pytest.approx(
        float(_box_loss(size_miss, params, patch_z)))


def test_train_config_rejects_unknown_flags():
    from n3d_ros.tools.train_compact import main
    with pytest.raises(SystemExit):
        main(["--no-such-flag", "1"])


def test_training_seeds_never_reach_the_benchmark_seeds(tmp_path):
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
    from n3d_ros.tools.eval_spatial import HELD_OUT_FIRST_SEED
    from n3d_ros.tools.train_compact import build_tokenizer
    from n3d_ros.vlm.compact_model import CompactVLMConfig
    tok = build_tokenizer(n_scenes=5)
    tok.save(tmp_path / "tok.json")
    cfg = TrainConfig(device="cpu", scenes=2, workers=1, scene_seed_offset=HELD_OUT_FIRST_SEED - 1)
    with pytest.raises(RuntimeError, match="held-out"):
        GpuDataset(cfg, CompactEncoderConfig(), CompactVLMConfig(vocab_size=tok.vocab_size),
                   str(tmp_path / "tok.json"), _log)


def test_visibility_threshold_follows_the_benchmark_rule():
    from n3d_ros.core.camera import CameraModel
    from n3d_ros.tools.train_compact import visibility_threshold
    from types import SimpleNamespace
    src = CameraModel.from_intrinsics(960.0, 960.0, 639.5, 359.5, 1280, 720)
    grid = CameraModel.from_intrinsics(240.0, 240.0, 159.5, 119.5, 320, 240)
    # 40 px at 640 wide = 160 px at 1280 wide; the grid has 1/16 of the 1280-wide image's pixels -> 10
    assert visibility_threshold(SimpleNamespace(camera=src), grid) == pytest.approx(10.0)
    small = CameraModel.from_intrinsics(240.0, 240.0, 159.5, 119.5, 320, 240)
    assert visibility_threshold(SimpleNamespace(camera=small), grid) == pytest.approx(40.0)


def test_dense_positives_supervise_the_centre_and_its_neighbours():
    from n3d_ros.tools.train_compact import dense_positives
    from n3d_ros.vlm.compact_targets import DenseTarget, GroundingTarget, heat_target

    params = np.array([0.3, -0.2, 1.0, -1.0, -1.0, -1.0, 0.0, 1.0])
    a = DenseTarget(kind=1, colour=2, target=GroundingTarget(patch=1 * 5 + 0, params=params),
                    centre=(0.8, 1.3), sigma=0.5)                      # left edge: 6 patches around it
    b = DenseTarget(kind=1, colour=0, target=GroundingTarget(patch=1 * 5 + 1, params=params),
                    centre=(1.8, 1.3), sigma=0.5)                      # a same-kind twin next to it
    heat = heat_target([a, b], 4, 5, 3)
    rows = dense_positives([a, b], heat, 4, 5, neighbour_weight=0.5)
    assert rows.shape[1] == 12
    of_a = rows[rows[:, 2] == 2]
    assert len(of_a) == 5                      # 6 in the grid, minus b's centre
    centre = of_a[of_a[:, 0] == 5][0]
    assert centre[3] == 1.0 and np.allclose(centre[4:], params)
    below = of_a[of_a[:, 0] == 10][0]          # one row down: the centre is a patch up from it
    assert below[3] == 0.5 and np.isclose(below[5], -1.0) and np.isclose(below[4], 0.3)
    assert len(dense_positives([a], heat, 4, 5, neighbour_weight=0.0)) == 1


def test_compile_option_is_checked_and_none_keeps_the_module():
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
    from n3d_ros.tools.train_compact import compile_for_training

    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="everything")
    with pytest.raises(ValueError, match="neighbour_weight"):
        TrainConfig(neighbour_weight=2.0)
    from n3d_ros.tools.train_compact import decoder_pass
    from n3d_ros.vlm.compact_model import CompactSpatialDecoder, CompactVLMConfig
    enc = CompactGeometryEncoder(CompactEncoderConfig())
    dec = CompactSpatialDecoder(CompactVLMConfig(vocab_size=16))
    passes = compile_for_training(enc, dec, "none")
    assert passes.encoder is enc and passes.decoder is decoder_pass and passes.dec is dec
    with pytest.raises(ValueError, match="compile"):
        compile_for_training(enc, dec, "everything")


def _compiled_matches_eager(tmp_path, device: str, what: str, rtol: float, atol: float, *,
                            channels_last: bool = False, grad_atol: float | None = None) -> None:
    """Losses and gradients of `compile_for_training(..., what, channels_last=...)` against the eager
    NCHW modules on one real batch with a dense head and mirrored images; the compiled passes run three
    times (compile or warm up, record, replay) and the last run is compared."""
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
    from n3d_ros.tools.train_compact import build_tokenizer, collate, compile_for_training, new_decoder_config, \
        step_losses
    from n3d_ros.vlm.compact_model import CompactSpatialDecoder
    from n3d_ros.vlm.compact_tokenizer import CompactTokenizer

    tok = build_tokenizer(n_scenes=20)
    tok.save(tmp_path / "tok.json")
    enc_cfg = CompactEncoderConfig(fine_features=True)
    dec_cfg = new_decoder_config(tok, enc_cfg, dense_head=True)
    cfg = TrainConfig(device=device, scenes=3, workers=1, render_batch=3, questions_per_scene=4,
                      images_per_step=2, questions_per_image=3, dense_head=True, mirror=True)
    ds = GpuDataset(cfg, enc_cfg, dec_cfg, str(tmp_path / "tok.json"), _log)
    try:
        torch.manual_seed(0)
        enc, dec = CompactGeometryEncoder(enc_cfg).to(device), CompactSpatialDecoder(dec_cfg).to(device)
        batch = collate(ds, np.random.default_rng(1), cfg, dec_cfg, CompactTokenizer.load(tmp_path / "tok.json"))
        assert batch[2].shape == (6, 24) and batch[4].shape == (6, 8)   # token rows padded: one shape
        results = []
        for run in range(4):
            if run < 2:  # made after the eager run: channels_last turns the encoder's weights in place
                passes = compile_for_training(enc, dec, "none" if run == 0 else what, channels_last=run > 0
                                              and channels_last)
            for p in list(enc.parameters()) + list(dec.parameters()):
                p.grad = None
            torch.manual_seed(5)                           # the measured-depth holes and noise
            gen = torch.Generator(device=device).manual_seed(2)
            loss, stats = step_losses(passes, ds, batch, gen, dec_cfg, mirror=True)
            loss.backward()
            results.append((loss.detach().clone(), {k: v.clone() for k, v in stats.items()},
                            [p.grad.clone() for p in (enc.head.weight, dec.blocks[0].qkv.weight,
                                                      dec.dense_head[-1].weight)]))
        (l0, s0, g0), (l1, s1, g1) = results[0], results[-1]
        torch.testing.assert_close(l1, l0, rtol=rtol, atol=atol)
        assert s0.keys() == s1.keys() and {"heat", "colour", "dbox", "ptr"} <= s0.keys()
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, rtol=100 * rtol, atol=atol if grad_atol is None else grad_atol)
    finally:
        ds.close()


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile's CPU backend needs a C++ compiler (g++)")
def test_compiled_passes_give_the_eager_losses_and_gradients(tmp_path):
    """--compile all (inductor on this CPU) computes what the eager modules compute."""
    _compiled_matches_eager(tmp_path, "cpu", "all", rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_graph_passes_give_the_eager_losses_and_gradients(tmp_path, channels_last):
    """--compile graphs (the recipe's, with --channels-last): the replayed CUDA graphs compute what the
    eager NCHW modules compute."""
    # NHWC convolutions sum their weight gradients in another order: on a lent H100 (torch 2.11) 3 of 196,608
    # elements differed from the NCHW eager ones by 1.4e-4, over the 1e-4 that the losses keep.
    _compiled_matches_eager(tmp_path, "cuda", "graphs", rtol=1e-4, atol=1e-4, channels_last=channels_last,
                            grad_atol=5e-4 if channels_last else None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_training_step_never_waits_for_the_gpu(tmp_path):
    """Batch assembly and the step queue work on the GPU without waiting for it (torch's sync debug
    mode raises on any operation that would): the loop prepares step n+1 while the GPU runs step n."""
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
    from n3d_ros.tools.train_compact import (build_tokenizer, collate, compile_for_training, new_decoder_config,
                                             train_step)
    from n3d_ros.vlm.compact_model import CompactSpatialDecoder

    tok = build_tokenizer(n_scenes=20)
    tok.save(tmp_path / "tok.json")
    enc_cfg = CompactEncoderConfig(fine_features=True)
    dec_cfg = new_decoder_config(tok, enc_cfg, dense_head=True)
    cfg = TrainConfig(device="cuda", scenes=4, workers=1, render_batch=4, questions_per_scene=4,
                      images_per_step=2, questions_per_image=3, dense_head=True, mirror=True)
    ds = GpuDataset(cfg, enc_cfg, dec_cfg, str(tmp_path / "tok.json"), _log)
    try:
        enc, dec = CompactGeometryEncoder(enc_cfg).cuda(), CompactSpatialDecoder(dec_cfg).cuda()
        passes = compile_for_training(enc, dec, "none")
        params = list(enc.parameters()) + list(dec.parameters())
        opt = torch.optim.AdamW(params, fused=True)
        rng, gen = np.random.default_rng(0), torch.Generator(device="cuda").manual_seed(0)
        step = lambda: train_step(passes, ds, collate(ds, rng, cfg, dec_cfg, tok), gen, dec_cfg, opt,  # noqa: E731
                                  params, amp=True, mirror=True)
        step()                                    # first use: allocations, lazy state
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        ds.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned memory)")
def test_batch_upload_gives_each_array_back_on_the_gpu():
    """Arrays of every dtype collate makes, empty ones and a batch larger than the buffer come back
    equal; earlier uploads stay intact while the two buffers are reused."""
    from n3d_ros.tools.train_compact import BatchUpload
    up = BatchUpload("cuda", capacity=64)
    rng = np.random.default_rng(0)
    batches = [[rng.integers(-5, 5, size=(3, 7)), rng.random((2, 5)).astype(np.float32), rng.random(4) < 0.5,
                np.zeros((0, 8), np.float32), rng.random((6, 3)).astype(np.float32)[:, 1]] for _ in range(5)]
    got = [up(b) for b in batches]
    for b, g in zip(batches, got):
        for a, t in zip(b, g):
            assert t.device.type == "cuda" and tuple(t.shape) == a.shape
            np.testing.assert_array_equal(t.cpu().numpy(), a)


def test_channels_last_encoder_gives_the_nchw_losses_and_gradients(tmp_path):
    """--channels-last changes the encoder's memory layout, not what it computes."""
    _compiled_matches_eager(tmp_path, "cpu", "none", rtol=1e-5, atol=1e-5, channels_last=True)


def test_loaded_optimizer_moments_take_their_parameters_layout(tmp_path):
    """Moments saved from NCHW weights load into NHWC ones element for element (a fused AdamW step
    pairs a parameter's and its moments' memory, not their indices)."""
    from n3d_ros.tools.train_compact import _load_optimizer, _save_optimizer
    conv = torch.nn.Conv2d(3, 4, 3)
    opt = torch.optim.AdamW(conv.parameters())
    conv(torch.randn(2, 3, 8, 8)).square().sum().backward()
    opt.step()
    _save_optimizer(opt, tmp_path / "opt.safetensors")
    saved = opt.state[conv.weight]["exp_avg"].clone()
    conv.to(memory_format=torch.channels_last)
    fresh = torch.optim.AdamW(conv.parameters())
    _load_optimizer(fresh, tmp_path / "opt.safetensors")
    loaded = fresh.state[conv.weight]["exp_avg"]
    assert loaded.stride() == conv.weight.stride() != saved.stride()
    torch.testing.assert_close(loaded, saved)


def test_wall_minutes_cut_the_training_budget_after_a_slow_setup():
    from n3d_ros.tools.train_compact import EXPORT_RESERVE_S, training_budget_s
    assert training_budget_s(TrainConfig(minutes=8.0), 300.0) == 480.0            # no wall limit
    assert training_budget_s(TrainConfig(minutes=8.0, wall_minutes=9.5), 30.0) == 480.0
    assert training_budget_s(TrainConfig(minutes=8.0, wall_minutes=9.5), 150.0) == 570 - 150 - EXPORT_RESERVE_S
    with pytest.raises(RuntimeError, match="no time left"):
        training_budget_s(TrainConfig(minutes=8.0, wall_minutes=2.0), 100.0)
    with pytest.raises(ValueError, match="wall_minutes"):
        TrainConfig(wall_minutes=-1)


def test_two_lr_spans_make_one_cosine():
    from n3d_ros.tools.train_compact import learning_rate
    whole = TrainConfig(lr=1e-3, warmup_steps=0)
    first = replace(whole, lr_span_end=0.5)
    second = replace(whole, lr_span_start=0.5)
    for f in (0.0, 0.3, 0.7, 1.0):
        assert learning_rate(first, 1000, f) == pytest.approx(learning_rate(whole, 1000, f / 2))
        assert learning_rate(second, 1000, f) == pytest.approx(learning_rate(whole, 1000, 0.5 + f / 2))
    assert learning_rate(first, 1000, 1.0) == pytest.approx(learning_rate(second, 0, 0.0)) == pytest.approx(5e-4)
    assert learning_rate(whole, 1000, 1.0) == pytest.approx(0.0, abs=1e-12)
    warm = replace(whole, warmup_steps=100)
    assert learning_rate(warm, 9, 0.0) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="lr_span"):
        TrainConfig(lr_span_start=0.5, lr_span_end=0.5)


def test_a_resumed_stage_continues_with_the_saved_optimizer_state(tmp_path):
    out = tmp_path / "model"
    base = TrainConfig(out=str(out), device="cpu", minutes=0.03, scenes=4, workers=1, render_batch=4,
                       images_per_step=2, questions_per_image=2, questions_per_scene=3, warmup_steps=1,
                       export_onnx=False)
    train(replace(base, save_optimizer=True, lr_span_end=0.5, grid_width=256, grid_height=192, f0=192.0))
    saved = out / "optimizer.safetensors"
    assert saved.is_file()
    from safetensors.torch import load_file
    steps_1 = {k: float(v) for k, v in load_file(str(saved)).items() if k.endswith(".step")}
    assert steps_1 and min(steps_1.values()) >= 1
    meta = train(replace(base, resume=str(out), save_optimizer=True, lr_span_start=0.5, warmup_steps=0))
    steps_2 = {k: float(v) for k, v in load_file(str(saved)).items() if k.endswith(".step")}
    # AdamW's step count went on from stage 1's: its moments were loaded, not started afresh.
    assert steps_2.keys() == steps_1.keys()
    assert all(steps_2[k] == meta["state"]["step"] for k in steps_2)
    assert meta["state"]["step"] > max(steps_1.values())
    # The resumed stage trained the saved 256x192 model; its record says so, not its default flags.
    resumed = meta["state"]["runs"][1]["config"]
    assert (resumed["grid_width"], resumed["grid_height"], resumed["f0"]) == (256, 192, 192.0)
    # The last stage saves no optimizer state: a stale one must not stay beside its weights.
    train(replace(base, resume=str(out), lr_span_start=0.5, warmup_steps=0))
    assert not saved.exists()


def test_weight_average_follows_its_decays():
    from n3d_ros.tools.train_compact import WeightEMA, parse_ema_decays
    lin = torch.nn.Linear(3, 2)
    start = lin.weight.detach().clone()
    ema = WeightEMA({"m": lin}, (0.9, 0.5))
    expected = {d: start.clone() for d in ema.decays}
    for n in range(30):
        with torch.no_grad():
            lin.weight.add_(1.0)
        ema.update()
        for d in ema.decays:
            rate = min(d, (1 + n) / (10 + n))          # the ramp over the first updates, then the decay
            expected[d] = rate * expected[d] + (1 - rate) * lin.weight.detach()
    for d in ema.decays:
        torch.testing.assert_close(ema.shadows[d]["m"]["weight"], expected[d])
        assert ema.updates[d] == 30
    # The slower average lags further behind the moving weights.
    lag = {d: float((lin.weight.detach() - ema.shadows[d]["m"]["weight"]).mean()) for d in ema.decays}
    assert lag[0.9] > lag[0.5] > 0
    fresh = torch.nn.Linear(3, 2)
    ema.copy_to(0.5, {"m": fresh})
    torch.testing.assert_close(fresh.weight, ema.shadows[0.5]["m"]["weight"])
    assert parse_ema_decays("") == () and parse_ema_decays("0.9995, 0.9998") == (0.9995, 0.9998)
    for bad in ("1.0", "0.9,0.9", "x"):
        with pytest.raises(ValueError, match="ema_decays"):
            TrainConfig(ema_decays=bad)


def test_weight_averages_are_model_folders_a_resumed_stage_continues(tmp_path):
    from safetensors.torch import load_file
    from n3d_ros.tools.train_compact import ema_folder
    from n3d_ros.vlm.compact_backend import CompactSpatialVLM
    out = tmp_path / "model"
    base = TrainConfig(out=str(out), device="cpu", minutes=0.03, scenes=4, workers=1, render_batch=4,
                       images_per_step=2, questions_per_image=2, questions_per_scene=3, warmup_steps=1,
                       export_onnx=False, ema_decays="0.5,0.99")
    first = train(replace(base, save_optimizer=True, lr_span_end=0.5, grid_width=256, grid_height=192, f0=192.0))
    steps_1 = first["state"]["step"]
    fast, slow = ema_folder(out, 0.5), ema_folder(out, 0.99)
    assert fast.name == "ema_0.5" and slow.name == "ema_0.99"
    raw = load_file(str(out / "decoder.safetensors"))
    for folder in (fast, slow):
        avg = load_file(str(folder / "decoder.safetensors"))
        assert avg.keys() == raw.keys() and any(not torch.equal(avg[k], raw[k]) for k in raw)
        record = json.loads((folder / "training_state.json").read_text())
        assert record["weights"]["ema_updates"] == steps_1
        assert json.loads((folder / "config.json").read_text())["training"]["weights"]["ema_decay"] in (0.5, 0.99)
    slow_1 = load_file(str(slow / "decoder.safetensors"))
    # Stage 2 keeps only the slow average, continued from stage 1's (its count goes on).
    second = train(replace(base, resume=str(out), lr_span_start=0.5, warmup_steps=0, ema_decays="0.99"))
    assert not fast.exists()                          # a stale average is not left beside the new weights
    record = json.loads((slow / "training_state.json").read_text())
    assert record["weights"]["ema_updates"] == second["state"]["step"] > steps_1
    slow_2 = load_file(str(slow / "decoder.safetensors"))
    # After the few stage-2 steps, a 0.99 average (ramp: ~0.5-0.6) is still near stage 1's average, not
    # restarted at the resumed raw weights.
    k = "lm_head.weight"
    raw_2 = load_file(str(out / "decoder.safetensors"))[k]
    assert (slow_2[k] - slow_1[k]).abs().mean() < (raw_2 - slow_1[k]).abs().mean()
    vlm = CompactSpatialVLM(slow, device="cpu")       # an average is a model folder the backend loads
    assert vlm.decoder.lm_head.weight.dtype == torch.float32


def _mirrored_job(job):
    """A question job (render_scenes) of the same scene reflected in the camera's y-z plane."""
    from n3d_ros.core.box import Box3D
    from n3d_ros.core.camera import CameraModel
    scene, cam, *rest = job
    M = np.diag([-1.0, 1.0, 1.0])
    objects = tuple(replace(o, box=Box3D(M @ o.box.center, o.box.size, M @ o.box.rotation @ M, o.box.frame))
                    for o in scene.objects)
    K = cam.K
    cam_m = CameraModel.from_intrinsics(K[0, 0], K[1, 1], cam.width - 1 - K[0, 2], K[1, 2], cam.width, cam.height)
    return (replace(scene, objects=objects, up=M @ scene.up), cam_m, *rest)


def test_mirrored_batch_is_the_batch_of_the_mirrored_scenes(tmp_path):
    """mirror_batch on the GPU must give exactly the targets the workers would have made for the
    mirrored scenes (pointer patches and boxes, <obj> regions, heat maps, dense positives with
    their neighbours), and mirror_images the rays of the mirrored camera."""
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig
    from n3d_ros.tools.train_compact import (build_tokenizer, collate, mirror_batch, question_records,
                                             mirror_images, new_decoder_config, render_scenes)
    from n3d_ros.vlm.compact_tokenizer import CompactTokenizer

    tok = build_tokenizer(n_scenes=20)
    tok.save(tmp_path / "tok.json")
    enc_cfg = CompactEncoderConfig()
    dec_cfg = new_decoder_config(tok, enc_cfg, dense_head=True)
    cfg = TrainConfig(device="cpu", scenes=4, workers=1, render_batch=4, questions_per_scene=6,
                      images_per_step=4, questions_per_image=6, dense_head=True, mirror=True)
    ds = GpuDataset(cfg, enc_cfg, dec_cfg, str(tmp_path / "tok.json"), _log)
    try:
        from n3d_ros.sim.world import generate_scene
        jobs = render_scenes([generate_scene(s) for s in range(4)], enc_cfg, dec_cfg, str(tmp_path / "tok.json"),
                             cfg, "cpu").jobs
        n_obj = 0
        for slot, job in enumerate(jobs):
            ds.questions[slot], ds.heat[slot], ds.positives[slot] = question_records(job)
        batch = collate(ds, np.random.default_rng(3), cfg, dec_cfg, CompactTokenizer.load(tmp_path / "tok.json"))
        for slot, job in enumerate(jobs):
            ds.questions[slot], ds.heat[slot], ds.positives[slot] = question_records(_mirrored_job(job))
            n_obj += len(ds.positives[slot])
        expected = collate(ds, np.random.default_rng(3), cfg, dec_cfg, CompactTokenizer.load(tmp_path / "tok.json"))
        assert n_obj > 4 and len(batch[7]) > 4          # objects and grounded phrases to compare
        flip = torch.ones(4, dtype=torch.bool)
        got = mirror_batch(batch, flip, dec_cfg.grid_w, dec_cfg.grid_h)
        # The generator orders a yes/no pair by the answer it wants ("is A left of B" or "is B left of
        # A"), so a mirrored scene may ask the other order: compare the questions asked the same way.
        same = (batch[2] == expected[2]).all(1) & (batch[4] == expected[4]).all(1)
        assert same.float().mean() > 0.7
        for k in (0, 1, 2, 3, 4, 5):
            torch.testing.assert_close(got[k], expected[k] if k in (0, 1) else batch[k])
        torch.testing.assert_close(got[6][same], expected[6][same])
        g_same = same[batch[7]]
        assert g_same.sum() > 4
        for k in (9, 10):
            torch.testing.assert_close(got[k][g_same], expected[k][same[expected[7]]], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[11][0], expected[11][0])   # heat maps
        # Dense positives, one row per supervised patch (the neighbours come in another order).
        def rows_of(dense):
            r = torch.cat([dense[1].float(), dense[2][:, None], dense[3]], dim=1)
            return r[np.lexsort(r.numpy().round(4).T[::-1])]
        assert len(got[11][1]) > 4 * 4
        torch.testing.assert_close(rows_of(got[11]), rows_of(expected[11]), atol=1e-5, rtol=0)
        assert not torch.equal(got[9], batch[9])        # the patches did move
        # Half flipped: the others keep their targets.
        half = torch.tensor([True, False, True, False])
        mixed = mirror_batch(batch, half, dec_cfg.grid_w, dec_cfg.grid_h)
        rows = half[batch[1]]
        torch.testing.assert_close(mixed[6][rows & same], expected[6][rows & same])
        torch.testing.assert_close(mixed[6][~rows], batch[6][~rows])
        torch.testing.assert_close(mixed[11][0][half], expected[11][0][half])
        torch.testing.assert_close(mixed[11][0][~half], batch[11][0][~half])

        # Rays of the mirrored image are the mirrored camera's rays.
        idx = batch[0]
        image = ds.rgb[idx].permute(0, 3, 1, 2).float()
        _, rays_m, _, up_m = mirror_images(flip, image, ds.rays(idx), ds.depth[idx].float()[:, None], ds.up[idx])
        for k, i in enumerate(idx.tolist()):
            cam_m = _mirrored_job(jobs[i])[1]
            u = torch.arange(cam_m.width, dtype=torch.float32)
            torch.testing.assert_close(rays_m[k, 0, 0], (u - float(cam_m.K[0, 2])) / float(cam_m.K[0, 0]))
            torch.testing.assert_close(up_m[k], torch.as_tensor(_mirrored_job(jobs[i])[0].up, dtype=torch.float32))
    finally:
        ds.close()


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_measured_fraction_sets_which_images_give_the_decoder_measured_geometry(tmp_path, fraction):
    """The decoder sees the measured points (ground-truth depth along the rays) on `fraction` of the images
    and the encoder's own estimate on the rest; 0 and 1 leave no room for chance."""
    from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
    from n3d_ros.tools.train_compact import build_tokenizer, collate, compile_for_training, new_decoder_config, \
        decoder_pass, step_losses
    from n3d_ros.vlm.compact_model import CompactSpatialDecoder
    from n3d_ros.vlm.compact_tokenizer import CompactTokenizer

    tok = build_tokenizer(n_scenes=20)
    tok.save(tmp_path / "tok.json")
    enc_cfg = CompactEncoderConfig()
    dec_cfg = new_decoder_config(tok, enc_cfg, dense_head=True)
    cfg = TrainConfig(device="cpu", scenes=3, workers=1, render_batch=3, questions_per_scene=4, images_per_step=3,
                      questions_per_image=2, dense_head=True)
    ds = GpuDataset(cfg, enc_cfg, dec_cfg, str(tmp_path / "tok.json"), _log)
    try:
        torch.manual_seed(0)
        enc, dec = CompactGeometryEncoder(enc_cfg), CompactSpatialDecoder(dec_cfg)
        passes = compile_for_training(enc, dec, "none")
        seen = {}

        def spy(dec, features, points, valid, *rest):
            seen["points"], seen["measured"] = points.detach(), rest[-1]
            return decoder_pass(dec, features, points, valid, *rest)

        passes.decoder = spy
        batch = collate(ds, np.random.default_rng(1), cfg, dec_cfg, CompactTokenizer.load(tmp_path / "tok.json"))
        step_losses(passes, ds, batch, torch.Generator().manual_seed(2), dec_cfg, measured_fraction=fraction)
        img_idx = batch[0]
        depth = ds.depth[img_idx].float()
        assert seen["measured"].tolist() == [fraction == 1.0] * len(img_idx)
        hit = depth > 0.05
        rel = ((seen["points"][:, 2] - depth).abs() / depth.clamp_min(0.05))[hit]
        assert (float(rel.median()) < 0.02) == (fraction == 1.0)    # measured: 1 % noise; untrained estimate
    finally:
        ds.close()
    with pytest.raises(ValueError, match="measured_fraction"):
        TrainConfig(measured_fraction=1.5)


def test_mirror_needs_the_dense_head():
    with pytest.raises(ValueError, match="dense head"):
        TrainConfig(device="cpu", mirror=True, dense_head=False)


def _script_flags(text: str) -> dict[str, str]:
    """--flag value pairs of a shell snippet (value-less flags are not used by the recipe)."""
    tokens = re.findall(r"--([a-z-]+)\s+\"?([^\s\"\\)]+)", text)
    return {k.replace("-", "_"): v for k, v in tokens}


@pytest.mark.parametrize("folder", ["n3d_compact", "n3d_compact/member_b"])
def test_shipped_model_was_trained_by_the_committed_recipe(folder):
    """The shipped weights' training record (the model's and its ensemble member's) must show the recipe
    script's settings, stage by stage (a weight file from another command would make the model card's
    command wrong)."""
    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "train_builtin_model.sh").read_text()
    common = _script_flags(script.split("common=(", 1)[1].split(")\ncase", 1)[0])
    stages = {"1": _script_flags(script.split("  1) ", 1)[1].split(";;", 1)[0]),
              "2": _script_flags(script.split("  2) ", 1)[1].split(";;", 1)[0])}
    runs = json.loads((root / "models" / folder / "training_state.json").read_text())["state"]["runs"]
    assert len(runs) == 2
    for run, stage in zip(runs, ("1", "2")):
        cfg = run["config"]
        for key, value in {**common, **stages[stage]}.items():
            if key in ("out", "resume", "workers", "minutes", "wall_minutes") or value.startswith("$"):
                continue                                   # paths and host/time knobs the script takes from env
            if key == "ema_decays":
                # The record may keep more averages than the script (v13 kept three, the same weights under
                # the ramp); the member (v12) was trained before the averages existed and ships raw weights.
                kept = parse_ema_decays(cfg.get(key, ""))
                assert set(parse_ema_decays(value)) <= set(kept) or (folder.endswith("member_b") and not kept)
                continue
            got = cfg[key]
            want = type(got)(value.lower() in ("1", "true", "yes")) if isinstance(got, bool) else type(got)(value)
            assert got == want, f"stage {stage}: {key} = {got!r} in the training record, {value!r} in the script"
        assert cfg["device"] == "cuda"
    assert runs[0]["config"]["resume"] == "" and runs[1]["config"]["resume"] == runs[0]["config"]["out"]
    # The model's weights are the script's weight average, not the raw weights beside it.
    weights = json.loads((root / "models" / folder / "config.json").read_text())["training"].get("weights")
    if folder.endswith("member_b"):
        assert weights is None
    else:
        assert weights["ema_decay"] in parse_ema_decays(common["ema_decays"])
        assert weights["ema_updates"] == json.loads((root / "models" / folder / "config.json").read_text())[
            "training"]["steps"]


def _pool_owner(pids) -> None:
    """A process that owns a training worker pool, reports its worker's pid and waits to be killed."""
    import os as _os
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp
    from n3d_ros.tools.train_compact import _worker_init
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    pids.put(pool.submit(_os.getpid).result())
    time.sleep(600)


def test_workers_exit_when_their_pool_owner_is_killed():
    import multiprocessing as mp
    import os
    import signal
    ctx = mp.get_context("spawn")
    pids = ctx.Queue()
    owner = ctx.Process(target=_pool_owner, args=(pids,))
    owner.start()
    try:
        worker = pids.get(timeout=120)
        os.kill(owner.pid, signal.SIGKILL)          # no clean-up of its pool
        owner.join(timeout=10)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = Path(f"/proc/{worker}").exists()
        if alive:
            os.kill(worker, signal.SIGKILL)
        assert not alive, "the orphaned worker kept waiting for jobs"
    finally:
        if owner.is_alive():
            owner.kill()
