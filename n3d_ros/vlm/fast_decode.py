"""Fast batch-1 greedy decoding for Qwen2.5-VL / Qwen3-VL checkpoints (gpt-fast style).

- KV cache: one static (1, kv_heads, max_seq_len, head_dim) buffer pair per layer, allocated
  once per decoder and reused by every call.
- Prefill: the image + prompt go through the model's own forward ONCE (vision tower, 3D PE
  hooks, M-RoPE positions, Qwen3-VL deepstack all as transformers does them); its keys and
  values are copied into the static cache.
- Decode: a hand-written step over the model's own submodules (norms, projections, MLPs,
  rotary embedding) that writes the new key/value in place and attends over the static cache
  with a position mask, so every step has the same shapes and buffers. On CUDA one step is
  captured into a CUDA graph and replayed (the next token, the cache index and an output slot
  are updated inside the graph, so the host only replays and checks EOS every few tokens). On
  CPU the same step runs eagerly.
- Prefix reuse: the cache remembers the token ids it holds and a caller-given key of the images
  they were computed for. A new prompt with the same key keeps the longest common prefix
  (provided it covers every image token) and prefills only the rest with the eager step code.
  Text tokens after the last image have equal t/h/w M-RoPE positions (index + rope delta), so
  the 1-D rotary path is exact for them.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


@dataclass(frozen=True)
class DecodeConfig:
    max_seq_len: int = 4096        # tokens the static cache holds (prompt + all answers)
    use_cuda_graph: bool = True    # capture the decode step on CUDA devices
    check_eos_every: int = 8       # decode steps between host syncs to look for EOS (CUDA graph)
    graph_warmup_steps: int = 3    # eager runs on a side stream before capture
    compile_step: bool = False     # torch.compile (inductor, no cudagraphs) the step before capture


@dataclass
class DecodeResult:
    tokens: list[int]              # generated ids, EOS included when it was produced
    prompt_len: int
    reused_prefix: int = 0         # prompt tokens taken from the cache instead of recomputed
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stopped_on_eos: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def decode_tok_per_s(self) -> float:
        n = max(len(self.tokens) - 1, 0)  # the first token comes from the prefill
        return n / self.decode_s if self.decode_s > 0 else 0.0


def _text_parts(model: Any) -> tuple[Any, Any]:
    lm = getattr(getattr(model, "model", None), "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise TypeError(f"{type(model).__name__} has no model.language_model with layers; "
                        "expected a Qwen2.5-VL or Qwen3-VL ForConditionalGeneration model")
    return lm, model.lm_head


class FastDecoder:
    """Greedy decoder bound to one model; not thread safe (one generation at a time)."""

    def __init__(self, model: Any, *, eos_token_ids: Sequence[int],
                 config: DecodeConfig = DecodeConfig()) -> None:
        self.model = model
        self.config = config
        self.eos = frozenset(int(i) for i in eos_token_ids)
        self.lm, self.lm_head = _text_parts(model)
        self.layers = list(self.lm.layers)
        attn0 = self.layers[0].self_attn
        self.head_dim = int(attn0.head_dim)
        tcfg = model.config.get_text_config()
        self.n_heads = int(tcfg.num_attention_heads)
        self.n_kv = int(tcfg.num_key_value_heads)
        self.scale = float(attn0.scaling)
        self._apply_rope: Callable = sys.modules[type(attn0).__module__].apply_rotary_pos_emb
        self.device = next(model.parameters()).device
        self.dtype = next(self.lm.parameters()).dtype
        L = int(config.max_seq_len)
        shape = (1, self.n_kv, L, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self._key_idx = torch.arange(L, device=self.device)
        # Static step buffers (graph inputs/outputs).
        self._tok = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self._delta = torch.zeros(1, dtype=torch.long, device=self.device)
        self._step = torch.zeros(1, dtype=torch.long, device=self.device)
        self._out = torch.zeros(L, dtype=torch.long, device=self.device)
        self._graph: Any = None
        self._step_fn: Callable[[], None] = self._step_inplace
        if config.compile_step and self.device.type == "cuda":
            # Fuses norms, RoPE and residual adds; the CUDA graph then removes launch overhead.
            self._step_fn = torch.compile(self._step_inplace, mode="max-autotune-no-cudagraphs",
                                          dynamic=False)
        self._cached_ids: list[int] = []
        self._cached_key: str | None = None

    # ------------------------------------------------------------------ core math
    def _forward_tokens(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (1, S) at cache indices pos (S,) -> (1, vocab) logits of the last token.

        Writes the S keys/values into the static cache; attends to every index <= its own.
        """
        S = ids.shape[1]
        h = self.lm.embed_tokens(ids)
        rope_pos = (pos + self._delta).view(1, 1, S).expand(3, 1, S)
        cos, sin = self.lm.rotary_emb(h, rope_pos)
        mask = self._key_idx[None, :] <= pos[:, None]              # (S, L)
        G = self.n_heads // self.n_kv
        mask_g = mask.repeat(G, 1)                                  # (G*S, L), row g*S + s
        for layer, kc, vc in zip(self.layers, self.k_cache, self.v_cache):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(1, S, -1, self.head_dim)
            k = attn.k_proj(x).view(1, S, -1, self.head_dim)
            v = attn.v_proj(x).view(1, S, -1, self.head_dim).transpose(1, 2)
            if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = self._apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            kc.index_copy_(2, pos, k.to(kc.dtype))
            vc.index_copy_(2, pos, v.to(vc.dtype))
            # Grouped-query attention without repeating K/V: fold the G query heads of each
            # KV head into the row dimension.
            qg = q.reshape(1, self.n_kv, G * S, self.head_dim)
            scores = torch.matmul(qg, kc.transpose(-1, -2)).float() * self.scale
            scores = scores.masked_fill(~mask_g, float("-inf"))
            probs = torch.softmax(scores, dim=-1).to(vc.dtype)
            o = torch.matmul(probs, vc).reshape(1, self.n_heads, S, self.head_dim)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(1, S, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = self.lm.norm(h[:, -1:])
        return self.lm_head(h)[:, -1]

    def _step_inplace(self) -> None:
        """One decode step on the static buffers (the body of the CUDA graph)."""
        logits = self._forward_tokens(self._tok, self._pos)
        nxt = torch.argmax(logits, dim=-1)                          # (1,)
        self._out.index_copy_(0, self._step, nxt)
        self._tok.copy_(nxt.view(1, 1))
        self._pos.add_(1)
        self._step.add_(1)

    # ------------------------------------------------------------------ prefill
    def _prefill_full(self, inputs: dict[str, Any]) -> torch.Tensor:
        from transformers import DynamicCache

        base = self.model.model
        base.rope_deltas = None  # force fresh M-RoPE positions for this prompt
        cache = DynamicCache(config=self.model.config)
        out = self.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        n = inputs["input_ids"].shape[1]
        for i, layer in enumerate(cache.layers):
            self.k_cache[i][:, :, :n].copy_(layer.keys)
            self.v_cache[i][:, :, :n].copy_(layer.values)
        deltas = getattr(base, "rope_deltas", None)
        self._delta.fill_(int(deltas.reshape(-1)[0]) if deltas is not None else 0)
        return out.logits[:, -1]

    def _reusable_prefix(self, ids: list[int], key: str | None, image_token_id: int | None) -> int:
        if key is None or key != self._cached_key:
            return 0
        n = 0
        for a, b in zip(self._cached_ids, ids):
            if a != b:
                break
            n += 1
        last_image = max((i for i, t in enumerate(ids) if t == image_token_id), default=-1)
        if n <= last_image:
            return 0  # the cached image tokens differ or are cut: recompute everything
        return min(n, len(ids) - 1)  # at least one token must run to produce logits

    # ------------------------------------------------------------------ CUDA graph
    def _ensure_graph(self) -> None:
        if self._graph is not None:
            return
        L = self.config.max_seq_len
        # Warm up on a scratch cache slot (the last one): it is overwritten before it is read.
        self._tok.zero_()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.config.graph_warmup_steps):
                self._pos.fill_(L - 1)
                self._step.fill_(L - 1)
                self._step_fn()
        torch.cuda.current_stream().wait_stream(stream)
        self._pos.fill_(L - 1)
        self._step.fill_(L - 1)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_fn()
        self._graph = graph

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, inputs: dict[str, Any], *, max_new_tokens: int, min_new_tokens: int = 0,
                 prefix_key: str | None = None) -> DecodeResult:
        """Greedy tokens after the prompt in `inputs` (from QwenVLCheckpoint.encode, batch 1).

        prefix_key: identity of the images in the prompt (e.g. a hash of pixel values and
        point map); pass the same key to let a later prompt reuse the cached prefix.
        """
        ids_t = inputs["input_ids"]
        if ids_t.ndim != 2 or ids_t.shape[0] != 1:
            raise ValueError(f"batch-1 input_ids (1, L) expected, got {tuple(ids_t.shape)}")
        ids = [int(t) for t in ids_t[0].tolist()]
        n = len(ids)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if n + max_new_tokens > self.config.max_seq_len:
            raise ValueError(f"prompt ({n}) + max_new_tokens ({max_new_tokens}) exceeds the cache "
                             f"(max_seq_len={self.config.max_seq_len})")
        cuda = self.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        image_token_id = getattr(self.model.config, "image_token_id", None)
        t0 = time.perf_counter()
        reuse = self._reusable_prefix(ids, prefix_key, image_token_id)
        self._cached_key = None  # the cache is being rewritten; valid again only on success
        if reuse > 0:
            pos = torch.arange(reuse, n, device=self.device)
            logits = self._forward_tokens(ids_t[:, reuse:], pos)
        else:
            logits = self._prefill_full(inputs)
        first = torch.argmax(logits, dim=-1)
        sync()
        t1 = time.perf_counter()

        self._tok.copy_(first.view(1, 1))
        self._pos.fill_(n)
        self._out[0] = first[0]
        self._step.fill_(1)
        produced = 1
        use_graph = cuda and self.config.use_cuda_graph
        if use_graph:
            self._ensure_graph()
            self._tok.copy_(first.view(1, 1))
            self._pos.fill_(n)
            self._step.fill_(1)
        every = max(1, self.config.check_eos_every) if use_graph else 1
        stop_at = None
        if int(first) in self.eos and min_new_tokens <= 1:
            stop_at = 1
        while stop_at is None and produced < max_new_tokens:
            todo = min(every, max_new_tokens - produced)
            for _ in range(todo):
                if use_graph:
                    self._graph.replay()
                else:
                    self._step_inplace()
            lo = produced
            produced += todo
            new = self._out[lo:produced].tolist()
            for j, t in enumerate(new):
                if t in self.eos and lo + j + 1 >= max(min_new_tokens, 1):
                    stop_at = lo + j + 1
                    break
        sync()
        t2 = time.perf_counter()
        count = stop_at if stop_at is not None else produced
        tokens = [int(t) for t in self._out[:count].tolist()]
        # Keys/values exist for the prompt and every generated token that was fed back (all but
        # the newest one computed).
        self._cached_ids = ids + tokens[:min(count, produced - 1)]
        self._cached_key = prefix_key
        return DecodeResult(tokens=tokens, prompt_len=n, reused_prefix=reuse, prefill_s=t1 - t0,
                            decode_s=t2 - t1, stopped_on_eos=stop_at is not None)

    def reset(self) -> None:
        """Forget the cached prefix (the buffers and the captured graph are kept)."""
        self._cached_ids = []
        self._cached_key = None
