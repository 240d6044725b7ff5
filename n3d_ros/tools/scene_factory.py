"""The scene factory: a process that makes training scenes while the model trains.

It owns the worker processes and hands finished batches (model-grid images, cameras, question
records) to the training process, which only names seeds. Two ways to make a batch:
- on the device (the first fill, before training): workers generate the scenes, the factory renders
  them on the training GPU (~2 ms a scene against ~110 ms on one of a lent H100 host's cores), workers
  question the rendered batches;
- in the workers (while training): one job generates, renders on the worker's CPU and questions. A
  GPU render beside the training loop, from this process, halved the loop's step rate on a lent H100
  (two CUDA contexts take turns on the GPU): 8.7 steps/s with ~100 fresh scenes a second and 3.4 with
  ~350, against 15 with none (benchmarks/results/scene_factory_h100.md).
The factory also takes the unpickling of the workers' results off the training process: images reach
it as CPU tensors through torch.multiprocessing (shared memory: only a handle is pickled).
"""
from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass

import torch
import torch.multiprocessing as tmp

from ..geometry.compact_encoder import CompactEncoderConfig
from ..vlm.compact_model import CompactVLMConfig
from .train_data import fresh_scenes, make_scenes, question_batch, render_scenes, worker_init

JOB_SCENES = 8   # scenes per worker job: small enough to spread a render batch over all workers


@dataclass
class SceneBatch:
    """Finished scenes, in seed order: model-grid images and the arguments' question records."""
    seeds: list[int]
    rgb: torch.Tensor      # (B,H,W,3) uint8, CPU
    depth: torch.Tensor    # (B,H,W) float16 metres, 0 where nothing was hit
    K: torch.Tensor        # (B,4) fx, fy, cx, cy of the grid camera
    up: torch.Tensor       # (B,3) gravity up, optical frame
    records: list          # per scene: train_data.question_records' result

    def __len__(self) -> int:
        return len(self.seeds)


class SceneFactory:
    """Makes the scenes of the seeds it is asked for, in the background; `poll` hands over the
    batches finished so far (in any order), `get` waits for one."""

    def __init__(self, cfg, enc_cfg: CompactEncoderConfig, dec_cfg: CompactVLMConfig, tok_path: str) -> None:
        # Spawned, not forked: this process has CUDA and OpenMP state that a fork would copy.
        ctx = tmp.get_context("spawn")
        self._requests = ctx.Queue()
        self._results = ctx.Queue()
        self._proc = ctx.Process(target=_serve, args=(cfg, enc_cfg, dec_cfg, tok_path, self._requests,
                                                      self._results), name="n3d-scene-factory")
        self._proc.start()
        self.pending = 0   # scenes asked for and not yet handed over

    def request(self, seeds: list[int], *, on_device: bool = False) -> None:
        """Ask for the scenes of `seeds`, rendered on the training device by the factory
        (`on_device`: only while the device is not training) or on the workers' CPUs."""
        if seeds:
            self._requests.put((list(seeds), on_device))
            self.pending += len(seeds)

    def poll(self) -> list[SceneBatch]:
        out = []
        while True:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return out
            out.append(self._take(item))

    def get(self, timeout_s: float = 600.0) -> SceneBatch:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._take(self._results.get(timeout=1.0))
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(f"the scene factory exited (code {self._proc.exitcode})") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no scenes from the factory within {timeout_s:.0f} s") from None

    def _take(self, item) -> SceneBatch:
        if isinstance(item, str):
            raise RuntimeError(f"the scene factory failed:\n{item}")
        self.pending -= len(item)
        return item

    def close(self) -> None:
        if self._proc.is_alive():
            self._requests.put(None)
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)


def _serve(cfg, enc_cfg, dec_cfg, tok_path: str, requests, results) -> None:
    """The factory process. On-device requests: generation jobs go to the workers in request order,
    generated scenes are rendered here in batches of `cfg.render_batch` (a smaller one when nothing
    else is being generated), and each rendered job's questions go back to the workers. Other
    requests: whole jobs (train_data.fresh_scenes) in the workers."""
    parent = multiprocessing.parent_process()
    pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=worker_init)
    generating: deque = deque()    # futures of make_scenes, in request order
    generated: list = []           # scenes waiting for a render, in seed order
    questioning: dict = {}         # future of question_batch -> (seeds, rgb, depth, K, up)
    making: set = set()            # futures of fresh_scenes
    try:
        while True:
            busy = list(generating) + list(questioning) + list(making)
            if busy:
                wait(busy, timeout=0.01, return_when=FIRST_COMPLETED)
            try:
                request = requests.get(timeout=0.001 if busy else 0.5)
            except queue.Empty:
                request = ((), False)
            if request is None:
                return
            seeds, on_device = request
            for i in range(0, len(seeds), JOB_SCENES):
                job = seeds[i:i + JOB_SCENES]
                if on_device:
                    generating.append(pool.submit(make_scenes, job))
                else:
                    making.add(pool.submit(fresh_scenes, job, enc_cfg, dec_cfg, tok_path, cfg))
            while generating and generating[0].done():
                generated.extend(generating.popleft().result())
            if generated and (len(generated) >= cfg.render_batch or not generating):
                chunk, generated = generated[:cfg.render_batch], generated[cfg.render_batch:]
                r = render_scenes(chunk, enc_cfg, dec_cfg, tok_path, cfg, cfg.device)
                rgb, depth = r.rgb.cpu(), r.depth.cpu()
                for i in range(0, len(chunk), JOB_SCENES):
                    part = slice(i, i + JOB_SCENES)
                    f = pool.submit(question_batch, r.jobs[part])
                    questioning[f] = ([sc.seed for sc in chunk[part]], rgb[part].clone(), depth[part].clone(),
                                      r.K[part].clone(), r.up[part].clone())
            for f in [f for f in questioning if f.done()]:
                seeds_, rgb, depth, K, up = questioning.pop(f)
                results.put(SceneBatch(seeds_, rgb, depth, K, up, f.result()))
            for f in [f for f in making if f.done()]:
                making.discard(f)
                results.put(SceneBatch(*f.result()))
            if parent is not None and not parent.is_alive():
                return
    except BaseException:  # noqa: BLE001 - reported to the training process, which raises it
        results.put(traceback.format_exc())
    finally:
        # Waits for the running jobs: this process ends with os._exit, which skips the executor's own
        # clean-up, and workers not told to stop would be left behind.
        pool.shutdown(wait=True, cancel_futures=True)
