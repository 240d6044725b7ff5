"""Word-level tokenizer of the built-in compact model (a `tokenizers` WordLevel model on disk).

The compact model reads questions and writes only a question-kind token, label phrases and
grounding tokens, so a closed word vocabulary (built from the synthetic world's templates) is
enough; unknown words map to <unk> rather than failing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from ..core.questions import QuestionKind

PAD, UNK, BOS, SEP, EOS, OBJ, SET = "<pad>", "<unk>", "<bos>", "<sep>", "<eos>", "<obj>", "<set>"
SPECIAL_TOKENS = (PAD, UNK, BOS, SEP, EOS, OBJ, SET)


def kind_token(kind: QuestionKind) -> str:
    return f"<k:{QuestionKind(kind).value}>"


KIND_TOKENS = tuple(kind_token(k) for k in QuestionKind)


class CompactTokenizer:
    """Thin wrapper over `tokenizers.Tokenizer` with the ids the model needs by name."""

    def __init__(self, tokenizer) -> None:  # tokenizers.Tokenizer
        self._tok = tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS + KIND_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.vocab_size = tokenizer.get_vocab_size()
        self.pad_id, self.unk_id, self.bos_id, self.sep_id, self.eos_id, self.obj_id, self.set_id = (
            vocab[t] for t in SPECIAL_TOKENS)
        self.kind_ids = {QuestionKind(t[3:-1]): vocab[t] for t in KIND_TOKENS}
        self.id_to_kind = {v: k for k, v in self.kind_ids.items()}
        self._id_to_token = {v: k for k, v in vocab.items()}
        # Plain words (no special or kind token), each with its plural: named_word_ids reads a question by them.
        from ..core.question_parser import pluralize
        special = {vocab[t] for t in SPECIAL_TOKENS + KIND_TOKENS}
        self._word_forms = {i: (w, pluralize(w)) for i, w in self._id_to_token.items() if i not in special}

    # ------------------------------------------------------------------ build / io
    @classmethod
    def build(cls, texts: Iterable[str]) -> "CompactTokenizer":
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordLevel

        probe = Tokenizer(WordLevel({UNK: 0}, unk_token=UNK))
        probe.normalizer = normalizers.Lowercase()
        probe.pre_tokenizer = pre_tokenizers.Whitespace()
        words: set[str] = set()
        for text in texts:
            words.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(text.lower()))
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + KIND_TOKENS)}
        for w in sorted(words):
            vocab.setdefault(w, len(vocab))
        tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.add_special_tokens(list(SPECIAL_TOKENS + KIND_TOKENS))
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "CompactTokenizer":
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    # ------------------------------------------------------------------ use
    def encode_words(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def token(self, token_id: int) -> str:
        return self._id_to_token.get(int(token_id), UNK)

    def decode_words(self, ids: Sequence[int]) -> str:
        return " ".join(self.token(i) for i in ids)

    def named_word_ids(self, text: str) -> set[int]:
        """Ids of the words `text` names, each also in its singular form ("how many chairs" names
        "chair"): the words a set question's class phrase may use."""
        said = {self.token(i) for i in self.encode_words(text) if i != self.unk_id}
        return {i for i, (w, plural) in self._word_forms.items() if w in said or plural in said}

    def unknown_fraction(self, text: str) -> float:
        ids = self.encode_words(text)
        return sum(i == self.unk_id for i in ids) / max(1, len(ids))
