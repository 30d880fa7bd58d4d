"""RNNT hypotheses as text and words, as NeMo's SentencePiece decoding and word offsets make them (the greedy
search itself: `mtasr.rnnt`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

WORD_BOUNDARY = "\u2581"  # SentencePiece '▁'
UNK_SURFACE = " \u2047 "  # what SentencePiece decodes <unk> to (' ⁇ ')


@dataclass(frozen=True)
class Word:
    """A decoded word: text, frame indices of its first and last token, and its token index range."""

    text: str
    first_frame: int
    last_frame: int  # NeMo's word ``end_offset`` is ``last_frame + 1``
    first_token: int
    last_token: int


def _piece_text(piece: str) -> str:
    if piece.startswith("<") and piece.endswith(">") and len(piece) > 2:  # special pieces
        return UNK_SURFACE if piece == "<unk>" else ""
    return piece.replace(WORD_BOUNDARY, " ")


def tokens_to_text(tokens: Sequence[int], vocab: Sequence[str]) -> str:
    """SentencePiece ``decode_ids``: join pieces with '▁' -> space, minus the first piece's leading '▁'."""
    text = "".join(_piece_text(vocab[t]) for t in tokens)
    return text[1:] if tokens and vocab[tokens[0]].startswith(WORD_BOUNDARY) else text


def _is_punctuation(piece: str) -> bool:
    core = piece[1:] if piece.startswith(WORD_BOUNDARY) else piece
    return len(core) == 1 and unicodedata.category(core).startswith("P")


def tokens_to_words(tokens: Sequence[int], frames: Sequence[int], vocab: Sequence[str]) -> list[Word]:
    """Group tokens into words like NeMo's RNNT word offsets (``get_words_offsets``, BPE tokenizer).

    A piece whose text differs from the piece (it starts with '▁', or is special such as <unk>) starts a word,
    other pieces continue it; a piece that is one punctuation mark (with or without '▁') joins the current word.
    Word text is the detokenised pieces (as NeMo: not stripped); frames are those of its first and last token.
    """
    words: list[Word] = []
    start: int | None = None  # first token of the word being built

    def close(end: int) -> None:
        if start is not None:
            text = tokens_to_text(tokens[start : end + 1], vocab)
            words.append(Word(text, int(frames[start]), int(frames[end]), start, end))

    for i, tok in enumerate(tokens):
        piece = vocab[tok]
        if start is None or (_piece_text(piece) != piece and not _is_punctuation(piece)):
            close(i - 1)
            start = i
    close(len(tokens) - 1)
    return words
