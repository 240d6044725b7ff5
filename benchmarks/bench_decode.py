"""Batch-1 greedy decode speed: plain `model.generate` vs `n3d_ros.vlm.fast_decode.FastDecoder`.

GPU (default): a random-init Qwen2.5-VL-7B-shaped model (bf16, built directly on the GPU), one
640x448 image + a 30-token question, 128 new tokens forced (min_new_tokens). Prints ONE markdown
table and writes the same numbers as JSON to --out.
    python benchmarks/bench_decode.py --out bench_decode.json
CPU smoke test of the script (tiny config, < 60 s):
    python benchmarks/bench_decode.py --tiny --out /tmp/bench_tiny.json

The weights are random (no checkpoint is read), so the generated text is meaningless; speed and
memory do not depend on the weight values. Token ids of the prompt are arbitrary except the
vision special tokens.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from n3d_ros.vlm.fast_decode import DecodeConfig, FastDecoder  # noqa: E402
from n3d_ros.vlm.hf_loading import qwen_vl_config  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench_decode {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(preset: str, device: torch.device, dtype: torch.dtype):
    """Random-init Qwen2.5-VL built directly on `device` (never materialized on the CPU for GPU runs)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    # The tiny vocabulary (512) must hold the special tokens; 7b uses the real Qwen ids.
    ids = ({"image_token_id": 500, "video_token_id": 501, "vision_start_token_id": 502,
            "vision_end_token_id": 503, "eos_token_id": 504, "bos_token_id": 505}
           if preset == "tiny" else None)
    config = qwen_vl_config("qwen2_5_vl", preset, token_ids=ids)
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # deterministic, sane-scale random weights, initialized on the device
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            elif "norm" in name or name.endswith("ln_q.weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    model.generation_config.eos_token_id = [config.text_config.eos_token_id]
    model.generation_config.pad_token_id = config.text_config.bos_token_id
    return model.eval(), config


def build_inputs(config, device: torch.device, dtype: torch.dtype, width: int, height: int,
                 question_tokens: int, seed: int = 0) -> dict:
    """ChatML-shaped prompt: 20 'system/user' ids, the image, a question of `question_tokens` ids."""
    from transformers import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    proc = Qwen2VLImageProcessorPil(patch_size=config.vision_config.patch_size, merge_size=2,
                                    temporal_patch_size=2, min_pixels=56 * 56,
                                    max_pixels=16384 * 28 * 28)
    vis = proc(images=[image], return_tensors="pt")
    n_img = int(vis["image_grid_thw"][0].prod()) // 4
    vocab = config.text_config.vocab_size
    special = {config.image_token_id, config.video_token_id, config.vision_start_token_id,
               config.vision_end_token_id, config.text_config.eos_token_id}
    text = [int(t) for t in rng.integers(0, vocab, 20 + question_tokens + 5) if int(t) not in special]
    ids = (text[:20] + [config.vision_start_token_id] + [config.image_token_id] * n_img
           + [config.vision_end_token_id] + text[20:20 + question_tokens])
    input_ids = torch.tensor([ids], device=device)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == config.image_token_id).to(torch.int32),
        "pixel_values": vis["pixel_values"].to(device, dtype),
        "image_grid_thw": vis["image_grid_thw"].to(device),
    }


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 10) -> float:
    """Measured device-to-device copy bandwidth, bytes/s (each copy reads and writes nbytes)."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    sync(device)
    dt = time.perf_counter() - t
    del a, b
    return 2 * nbytes * reps / dt


def text_weight_bytes(model) -> int:
    """Bytes read per decoded token: decoder layers + final norm + lm_head (one embedding row only)."""
    lm = model.model.language_model
    n = sum(p.numel() * p.element_size() for name, p in lm.named_parameters()
            if not name.startswith("embed_tokens"))
    return n + sum(p.numel() * p.element_size() for p in model.lm_head.parameters())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny config on the CPU (tests the script)")
    ap.add_argument("--out", type=Path, required=True, help="JSON result file")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--image", default="640x448", help="WxH of the image")
    ap.add_argument("--question-tokens", type=int, default=30)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--no-cuda-graph", action="store_true")
    ap.add_argument("--no-compile", action="store_true",
                    help="do not torch.compile the step before CUDA-graph capture (saves ~50 s)")
    ap.add_argument("--skip-generate", action="store_true", help="do not time plain model.generate")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    if args.tiny:
        device, dtype, preset = torch.device("cpu"), torch.float32, "tiny"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
        device, dtype, preset = torch.device("cuda"), torch.bfloat16, "7b"
        torch.backends.cuda.matmul.allow_tf32 = True
    width, height = (int(v) for v in args.image.lower().split("x"))
    log(f"building random {preset} Qwen2.5-VL on {device} ({dtype})")
    model, config = build_model(preset, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model ready: {n_params / 1e9:.2f} B params in {time.perf_counter() - t_start:.1f} s")
    inputs = build_inputs(config, device, dtype, width, height, args.question_tokens)
    prompt_len = int(inputs["input_ids"].shape[1])
    n_img = int((inputs["input_ids"] == config.image_token_id).sum())
    log(f"prompt: {prompt_len} tokens ({n_img} image tokens, grid {inputs['image_grid_thw'][0].tolist()})")

    wbytes = text_weight_bytes(model)
    bw = copy_bandwidth(device, 1 << 30 if device.type == "cuda" else 1 << 26)
    floor_s = wbytes / bw
    log(f"text weights read per token {wbytes / 1e9:.2f} GB; copy bandwidth {bw / 1e12:.3f} TB/s; "
        f"floor {floor_s * 1e3:.2f} ms/token")

    N = args.new_tokens
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu")
    result: dict = {"device": name,
                    "torch": torch.__version__, "preset": preset, "dtype": str(dtype),
                    "params_b": n_params / 1e9, "prompt_tokens": prompt_len, "image_tokens": n_img,
                    "image": f"{width}x{height}", "new_tokens": N,
                    "text_weight_gb": wbytes / 1e9, "copy_bandwidth_tb_s": bw / 1e12,
                    "floor_ms_per_token": floor_s * 1e3, "floor_tok_s": 1.0 / floor_s}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    ref_tokens: list[int] = []
    if not args.skip_generate:
        with torch.no_grad():
            model.generate(**inputs, do_sample=False, max_new_tokens=4, min_new_tokens=4)  # warm-up
            sync(device)
            t = time.perf_counter()
            out = model.generate(**inputs, do_sample=False, max_new_tokens=N, min_new_tokens=N)
            sync(device)
            gen_s = time.perf_counter() - t
        ref_tokens = out[0, prompt_len:].tolist()
        result.update(generate_s=gen_s, generate_tok_s=N / gen_s)
        log(f"model.generate: {N} tokens in {gen_s:.2f} s ({N / gen_s:.1f} tok/s end to end)")

    dec = FastDecoder(model, eos_token_ids=model.generation_config.eos_token_id,
                      config=DecodeConfig(max_seq_len=args.max_seq_len,
                                          use_cuda_graph=not args.no_cuda_graph,
                                          compile_step=not args.no_compile))
    log("fast decoder: warm-up (allocates the cache, captures the CUDA graph)")
    dec.generate(inputs, max_new_tokens=8, min_new_tokens=8)
    res = dec.generate(inputs, max_new_tokens=N, min_new_tokens=N)
    log(f"fast decoder: prefill {res.prefill_s * 1e3:.1f} ms, {N - 1} decode steps in "
        f"{res.decode_s:.3f} s ({res.decode_tok_per_s:.1f} tok/s)")
    # The reasoning pass shares the image prefix: only the new question suffix is prefilled.
    dec.generate(inputs, max_new_tokens=2, prefix_key="img")
    suffix = dict(inputs)
    extra = inputs["input_ids"][:, -args.question_tokens:].flip(1)
    suffix["input_ids"] = torch.cat([inputs["input_ids"][:, :-args.question_tokens], extra], dim=1)
    reuse = dec.generate(suffix, max_new_tokens=2, prefix_key="img")
    log(f"prefix reuse: {reuse.reused_prefix} prompt tokens reused, suffix prefill "
        f"{reuse.prefill_s * 1e3:.1f} ms")
    match = 0
    for a, b in zip(res.tokens, ref_tokens):
        if a != b:
            break
        match += 1
    result.update(fast_prefill_ms=res.prefill_s * 1e3, fast_decode_tok_s=res.decode_tok_per_s,
                  fast_end_to_end_tok_s=N / (res.prefill_s + res.decode_s),
                  reuse_prefill_ms=reuse.prefill_s * 1e3, reused_tokens=reuse.reused_prefix,
                  greedy_prefix_match=match if ref_tokens else None,
                  cuda_graph=device.type == "cuda" and not args.no_cuda_graph,
                  compiled_step=bool(not args.no_compile and device.type == "cuda"))
    if "generate_s" in result:
        result["generate_decode_tok_s"] = (N - 1) / max(result["generate_s"] - res.prefill_s, 1e-9)
    result["peak_memory_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30
                                 if device.type == "cuda" else None)
    result["total_s"] = time.perf_counter() - t_start

    def fmt(key: str, spec: str = ".1f") -> str:
        v = result.get(key)
        return "n/a" if v is None else format(v, spec)

    rows = [
        ("plain `model.generate`, end to end (prefill + 128 tokens)", f"{fmt('generate_tok_s')} tok/s"),
        ("plain `model.generate`, decode only (prefill subtracted)", f"{fmt('generate_decode_tok_s')} tok/s"),
        ("FastDecoder, decode" + (" (CUDA graph)" if result["cuda_graph"] else " (eager)")
         + (" + torch.compile" if result["compiled_step"] else ""),
         f"{fmt('fast_decode_tok_s')} tok/s"),
        ("FastDecoder, end to end", f"{fmt('fast_end_to_end_tok_s')} tok/s"),
        ("memory-bandwidth floor (text weights / copy bandwidth)",
         f"{fmt('floor_tok_s')} tok/s ({fmt('floor_ms_per_token', '.2f')} ms/token, "
         f"{fmt('text_weight_gb', '.2f')} GB at {fmt('copy_bandwidth_tb_s', '.2f')} TB/s)"),
        (f"prefill, {width}x{height} image + {args.question_tokens}-token question ({prompt_len} tokens)",
         f"{fmt('fast_prefill_ms')} ms"),
        ("second-pass prefill with the image prefix reused", f"{fmt('reuse_prefill_ms')} ms "
                                                            f"({reuse.reused_prefix} tokens reused)"),
        ("greedy tokens identical to `model.generate` (prefix)",
         f"{match}/{N}" if ref_tokens else "n/a"),
        ("peak GPU memory", "n/a (CPU)" if result["peak_memory_gib"] is None
         else f"{result['peak_memory_gib']:.1f} GiB"),
    ]
    print(f"\n### Decode benchmark: {result['device']}, {preset} ({result['params_b']:.2f} B params, "
          f"{dtype}), torch {torch.__version__}\n", flush=True)
    print("| measurement | value |\n| --- | --- |", flush=True)
    for name, val in rows:
        print(f"| {name} | {val} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    log(f"wrote {args.out} (total {result['total_s']:.1f} s)")
    return result


if __name__ == "__main__":
    main()
