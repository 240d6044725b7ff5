"""Load a local Qwen2.5-VL / Qwen3-VL family checkpoint folder, and feed it chat inputs.

Loading is offline and code-free by construction: `local_files_only=True` (nothing is ever
downloaded; HF_HUB_OFFLINE is honoured as well), `trust_remote_code=False`, safetensors only.
The folder is validated BEFORE transformers sees it, so a missing file gives a ModelLoadError
naming that file and what to do, not a stack trace from deep inside transformers.

The image processor is built directly (`Qwen2VLImageProcessorPil`) instead of through
AutoProcessor: the stock processors also build a video processor that needs torchvision, which
this package does not depend on. Prompts are formatted here with the models' ChatML template.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .contract import ModelLoadError

# model_type in config.json -> transformers class name (both ship with transformers >= 4.57).
ARCHITECTURES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
DTYPES = ("bf16", "fp16", "fp32")
IMAGE_PLACEHOLDER = "<image>"  # one per image in a user text; expanded to the vision tokens
DEFAULT_SYSTEM = "You are a helpful assistant."
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_TOKENIZER_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


@dataclass(frozen=True)
class CheckpointFiles:
    """What `validate_checkpoint_dir` found (all paths inside `root`)."""

    root: Path
    model_type: str
    weights: tuple[Path, ...]
    config: dict[str, Any] = field(repr=False, default_factory=dict)


def _fail(root: Path, what: str, todo: str) -> ModelLoadError:
    return ModelLoadError(f"checkpoint folder {root}: {what}. {todo}")


def validate_checkpoint_dir(path: str | Path, *, expect_model_type: str | Sequence[str] | None = None
                            ) -> CheckpointFiles:
    """Check a local checkpoint folder; raise ModelLoadError naming exactly what is missing.

    Needs: config.json; model.safetensors or model.safetensors.index.json plus every shard it
    lists; a tokenizer (tokenizer.json, or vocab.json + merges.txt); preprocessor_config.json.
    Pickle weights (.bin/.pt/...) are refused even when present next to safetensors is fine.
    """
    root = Path(path).expanduser()
    get = ("Download the checkpoint on a machine with network access (e.g. `hf download "
           "<repo> --local-dir DIR`) and copy the folder here; nothing is downloaded at run time")
    if not root.exists():
        raise _fail(root, "does not exist", f"Set model_dir to a local folder. {get}")
    if not root.is_dir():
        raise _fail(root, "is a file, expected a folder", "Point model_dir at the folder itself")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise _fail(root, "config.json is missing", f"Copy the complete checkpoint folder. {get}")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(root, f"config.json is not valid JSON ({exc})", "Re-copy the file") from exc
    model_type = str(config.get("model_type", ""))
    wanted = (expect_model_type,) if isinstance(expect_model_type, str) else expect_model_type
    if wanted and model_type not in wanted:
        raise _fail(root, f"config.json says model_type={model_type!r}, expected one of "
                          f"{list(wanted)}", "Use the backend that matches this checkpoint")

    weights: list[Path] = []
    index = root / "model.safetensors.index.json"
    single = root / "model.safetensors"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise _fail(root, f"model.safetensors.index.json is unreadable ({exc})",
                        "Re-copy it from the checkpoint") from exc
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise _fail(root, f"{len(missing)} of {len(shards)} weight shards listed in "
                              f"model.safetensors.index.json are missing: {missing}",
                        "Copy the missing shard files")
        weights = [root / s for s in shards]
    elif single.is_file():
        weights = [single]
    else:
        loose = sorted(root.glob("*.safetensors"))
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if loose:
            weights = loose
        elif pickles:
            raise _fail(root, f"holds only pickle weights {pickles}; pickles can execute code "
                              "when loaded and are refused",
                        "Convert them once, on a trusted machine, to safetensors "
                        "(load, then `model.save_pretrained(dir, safe_serialization=True)`)")
        else:
            raise _fail(root, "has no weights (expected model.safetensors or "
                              "model.safetensors.index.json + shards)", get)

    if not any(all((root / f).is_file() for f in fs) for fs in _TOKENIZER_SETS):
        raise _fail(root, "has no tokenizer (expected tokenizer.json, or vocab.json + merges.txt)",
                    "Copy the tokenizer files of the checkpoint")
    if not (root / "preprocessor_config.json").is_file():
        raise _fail(root, "preprocessor_config.json is missing (the image processor settings)",
                    "Copy it from the checkpoint")
    return CheckpointFiles(root=root, model_type=model_type, weights=tuple(weights), config=config)


def resolve_dtype(name: str) -> Any:
    """'bf16' | 'fp16' | 'fp32' -> torch dtype."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return table[name]


@dataclass
class QwenVLCheckpoint:
    """A loaded model + tokenizer + image processor, and the ChatML input builder they share."""

    model: Any
    tokenizer: Any
    image_processor: Any
    model_type: str
    path: Path
    device: str
    system_prompt: str | None = DEFAULT_SYSTEM

    def generate_greedy(self, inputs: dict, max_new_tokens: int, *, decoder: Any | None = None,
                        prefix_key: str | None = None) -> str:
        """Greedy continuation of `inputs` (from `encode`) as text: through the fast decoder when
        given (static cache, CUDA graphs, prefix reuse under `prefix_key`), else `model.generate`."""
        import torch

        if decoder is not None:
            tokens = decoder.generate(inputs, max_new_tokens=max_new_tokens, prefix_key=prefix_key).tokens
        else:
            with torch.no_grad():
                out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
            tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
        return self.decode(tokens)

    def release(self) -> None:
        """Drop the model so its GPU memory can be reused (node deactivation)."""
        model, self.model = self.model, None
        if model is not None and str(self.device).startswith("cuda"):
            import torch

            del model
            torch.cuda.empty_cache()

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def eos_token_ids(self) -> tuple[int, ...]:
        """Token ids that end an answer (generation_config, else <|im_end|> and the tokenizer's)."""
        ids: list[int] = []
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if eos is not None:
            ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
        for tok in ("<|im_end|>", self.tokenizer.eos_token):
            tid = self.tokenizer.convert_tokens_to_ids(tok) if tok else None
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.append(tid)
        return tuple(dict.fromkeys(int(i) for i in ids))

    def chat_text(self, user_text: str) -> str:
        """ChatML of one user turn, ending where the assistant's answer starts ('<image>' kept)."""
        system = (f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n"
                  if self.system_prompt else "")
        return f"{system}<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"

    def encode(self, user_text: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
        """Model inputs for one user turn; each '<image>' in `user_text` takes the next image.

        images: (H, W, 3) uint8 RGB, already at the size the model should see (the processor may
        still snap it to a multiple of patch*merge pixels). Returns tensors on `self.device`:
        input_ids (1, L), attention_mask (1, L), mm_token_type_ids (1, L), pixel_values,
        image_grid_thw (n_images, 3).
        """
        import torch

        n_slots = user_text.count(IMAGE_PLACEHOLDER)
        if n_slots != len(images):
            raise ValueError(f"the text has {n_slots} '{IMAGE_PLACEHOLDER}' placeholders but "
                             f"{len(images)} images were given")
        text = self.chat_text(user_text)
        out: dict[str, Any] = {}
        if images:
            vis = self.image_processor(images=[np.asarray(im) for im in images],
                                       return_tensors="pt")
            grid = vis["image_grid_thw"]
            merge = int(self.image_processor.merge_size) ** 2
            for thw in grid:
                n_tok = int(thw.prod()) // merge
                text = text.replace(IMAGE_PLACEHOLDER,
                                    "<|vision_start|>" + "<|image_pad|>" * n_tok + "<|vision_end|>", 1)
            out["pixel_values"] = vis["pixel_values"].to(self.device, self.model.dtype)
            out["image_grid_thw"] = grid.to(self.device)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_pad = int((ids == self.image_token_id).sum())
        expected = sum(int(t.prod()) // int(self.image_processor.merge_size) ** 2
                       for t in out.get("image_grid_thw", []))
        if n_pad != expected:
            raise ValueError(f"tokenizer produced {n_pad} image tokens, expected {expected}: "
                             "the tokenizer does not know <|image_pad|> as one special token")
        out["input_ids"] = ids.to(self.device)
        out["attention_mask"] = torch.ones_like(out["input_ids"])
        out["mm_token_type_ids"] = (out["input_ids"] == self.image_token_id).to(torch.int32)
        return out

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)


def load_qwen_vl(path: str | Path, *, device: str = "cpu", dtype: str = "bf16",
                 expect_model_type: str | Sequence[str] | None = None,
                 trust_remote_code: bool = False, attn_implementation: str = "sdpa",
                 system_prompt: str | None = DEFAULT_SYSTEM) -> QwenVLCheckpoint:
    """Validate, then load a local checkpoint folder onto `device` in `dtype`.

    trust_remote_code stays False unless the caller explicitly opts in; even then only
    safetensors are read. Raises ModelLoadError for any problem with the folder.
    """
    files = validate_checkpoint_dir(path, expect_model_type=expect_model_type)
    torch_dtype = resolve_dtype(dtype)
    if files.model_type not in ARCHITECTURES:
        raise _fail(files.root, f"model_type {files.model_type!r} is not supported",
                    f"Supported: {sorted(ARCHITECTURES)}")
    import transformers
    from transformers import AutoTokenizer

    cls = getattr(transformers, ARCHITECTURES[files.model_type])
    try:
        model = cls.from_pretrained(str(files.root), local_files_only=True, use_safetensors=True,
                                    trust_remote_code=trust_remote_code, dtype=torch_dtype,
                                    attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(str(files.root), local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise _fail(files.root, f"transformers could not load it ({type(exc).__name__}: {exc})",
                    "Check that the folder is a complete, uncorrupted checkpoint") from exc
    model = model.to(device).eval()
    image_processor = load_image_processor(files.root)
    return QwenVLCheckpoint(model=model, tokenizer=tokenizer, image_processor=image_processor,
                            model_type=files.model_type, path=files.root, device=str(device),
                            system_prompt=system_prompt)


def load_image_processor(root: Path) -> Any:
    """The Qwen-VL image processor from preprocessor_config.json (PIL backend, no torchvision)."""
    from transformers import Qwen2VLImageProcessorPil

    try:
        return Qwen2VLImageProcessorPil.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(root, f"preprocessor_config.json could not be read ({exc})",
                    "Re-copy it from the checkpoint") from exc


# ------------------------------------------------------------------------------------------
# Random-weight checkpoints of the real architectures, for tests and the decode benchmark.
# They hold NO trained weights of any model: a small BPE is trained on a few sentences so the
# folder has a real tokenizer with the special tokens the Qwen-VL inputs need.
_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_TOKENIZER_CORPUS = (
    "How far is the mug from the laptop? What is the distance between the chair and the table?",
    "bbox_0=Bbox(chair,512,300,410,500,120,200,90)\nbbox_1=Bbox(cup,120,640,233,498,20,31,22)",
    "<think>The vector is [0.31, -0.02, 0.57]; its norm is 0.65 m.</think> About 0.65 metres.",
    " First locate the bbox of the aforementioned object(s). The reference code is as followed: ",
    '[{"bbox_3d":[0.1,0.2,1.5,0.3,0.4,0.3,0.0,0.1,0.0],"label":"mug"}] Locate the objects.',
    "Is the lamp left or right of the sofa? Which object is closest to the camera? 0123456789",
)


def qwen_vl_config(model_type: str, preset: str = "tiny", *, vocab_size: int | None = None,
                   token_ids: dict[str, int] | None = None) -> Any:
    """A transformers config of `model_type` ('qwen2_5_vl' | 'qwen3_vl').

    preset 'tiny': 2 vision blocks (width 64) + 2 text layers (width 64), for CPU tests.
    preset '7b' (qwen2_5_vl only): Qwen2.5-VL-7B shapes (text 3584 x 28 layers, 28 heads,
    4 KV heads, MLP 18944, vocab 152064; vision 32 blocks, width 1280).
    token_ids: image_token_id, video_token_id, vision_start_token_id, vision_end_token_id,
    eos_token_id, bos_token_id (defaults: the real Qwen ids).
    """
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    ids = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
           "vision_end_token_id": 151653, "eos_token_id": 151645, "bos_token_id": 151643}
    ids.update(token_ids or {})
    special = {k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                   "vision_end_token_id")}
    if model_type == "qwen2_5_vl":
        if preset == "tiny":
            vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                          out_hidden_size=64, fullatt_block_indexes=[1], window_size=112,
                          tokens_per_second=2)
            text = dict(vocab_size=vocab_size or 512, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=4096,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                         "mrope_section": [2, 3, 3]})
        elif preset == "7b":
            vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                          out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31],
                          window_size=112, tokens_per_second=2)
            text = dict(vocab_size=vocab_size or 152064, hidden_size=3584, intermediate_size=18944,
                        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        max_position_embeddings=128000, rms_norm_eps=1e-6,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                         "mrope_section": [16, 24, 24]})
        else:
            raise ValueError(f"preset must be 'tiny' or '7b' for qwen2_5_vl, got {preset!r}")
        text.update(bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
        return Qwen2_5_VLConfig(vision_config=vision, text_config=text, **special)
    if model_type == "qwen3_vl":
        if preset != "tiny":
            raise ValueError(f"preset must be 'tiny' for qwen3_vl, got {preset!r}")
        vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                      out_hidden_size=64, num_position_embeddings=256,
                      deepstack_visual_indexes=[0])
        text = dict(vocab_size=vocab_size or 512, hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                     "mrope_section": [2, 3, 3], "mrope_interleaved": True},
                    bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
        return Qwen3VLConfig(vision_config=vision, text_config=text, **special)
    raise ValueError(f"model_type must be one of {sorted(ARCHITECTURES)}, got {model_type!r}")


def train_tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE Qwen2Tokenizer trained on a few sentences, with the Qwen special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(_TOKENIZER_CORPUS) * 4, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    vocab = dict(state["vocab"])
    vocab.setdefault("<|endoftext|>", len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", unk_token=None)
    tok.add_special_tokens({"additional_special_tokens": list(_SPECIAL_TOKENS[1:])})
    return tok


def write_random_checkpoint(folder: str | Path, model_type: str, *, seed: int = 0) -> Path:
    """Write a tiny random-weight checkpoint folder (safetensors + tokenizer + preprocessor).

    Used by the tests and `bench_decode.py --tiny`; loads through `load_qwen_vl` like a real one.
    """
    import torch
    import transformers
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer()
    tid = tok.convert_tokens_to_ids
    ids = {"image_token_id": tid("<|image_pad|>"), "video_token_id": tid("<|video_pad|>"),
           "vision_start_token_id": tid("<|vision_start|>"),
           "vision_end_token_id": tid("<|vision_end|>"),
           "eos_token_id": tid("<|im_end|>"), "bos_token_id": tid("<|endoftext|>")}
    config = qwen_vl_config(model_type, "tiny", vocab_size=len(tok), token_ids=ids)
    torch.manual_seed(seed)
    model = getattr(transformers, ARCHITECTURES[model_type])(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["eos_token_id"], ids["bos_token_id"]], pad_token_id=ids["bos_token_id"])
    model.save_pretrained(str(root), safe_serialization=True)
    tok.save_pretrained(str(root))
    patch = 14 if model_type == "qwen2_5_vl" else 16
    mean_std = ({} if model_type == "qwen2_5_vl"
                else {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                             min_pixels=(2 * patch) ** 2, max_pixels=1280 * (2 * patch) ** 2,
                             **mean_std).save_pretrained(str(root))
    return root
