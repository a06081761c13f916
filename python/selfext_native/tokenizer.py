"""Tokenizer built from a GGUF file's metadata, giving the token ids llama.cpp gives.

Two engines, chosen by `tokenizer.ggml.model`:
- "gpt2": byte-level BPE. The text is split by the pre-tokenizer regexes named by `tokenizer.ggml.pre`
  (applied in sequence; both the matches and the text between them become pieces), each piece's UTF-8
  bytes are mapped to printable characters (GPT-2's byte table) and merged by merge rank. The HF
  `tokenizers` library runs this part (regex split, byte mapping, rank merges) at native speed.
- "llama": SentencePiece BPE with scores: spaces become "▁", adjacent symbols whose concatenation is a
  vocabulary entry are merged highest score first (leftmost on ties), and characters that never became
  a token are written as byte tokens "<0xNN>". Written here in Python: prompts are short, and the
  algorithm must match llama.cpp's (HF's merge-list emulation breaks score ties differently).

Special tokens (control, user-defined, unknown) are cut out of the text before either engine runs,
longest first, as llama.cpp's partition does: user-defined tokens always, control and unknown tokens
only with `parse_special=True`.
"""

from __future__ import annotations

import codecs
import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from .errors import ArgumentError, GGUFError

# --- token types (tokenizer.ggml.token_type) -----------------------------------------------------
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6
_TOKEN_TYPES = frozenset(range(0, 7))  # 0 = undefined

SUPPORTED_MODELS = ("gpt2", "llama")

# --- pre-tokenizer regexes, by tokenizer.ggml.pre -------------------------------------------------
# The regexes are llama.cpp's (llama-vocab.cpp), which adapt each model's tokenizer.json. They run
# one after another; every stage splits the pieces of the previous one.

# GPT-2's split: contractions, letters, numbers, other symbols, each with an optional leading space;
# whitespace runs give their last space to the word that follows.
_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Llama 3: case-insensitive contractions (spelled out: llama.cpp's engines lack (?i:)), any one
# non-letter glued to a word, numbers in groups of up to three digits, newlines kept together.
_RE_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
              r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2: Llama 3's split with single digits.
_RE_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
             r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """How a named pre-tokenizer splits text, and the llama.cpp defaults that come with the name."""
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is itself a vocabulary entry is taken whole
    add_bos: bool = False        # default when tokenizer.ggml.add_bos_token is absent


_LLAMA3 = PreTokenizer((_RE_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((_RE_QWEN2,))
_GPT2 = PreTokenizer((_RE_GPT2,))
# StarCoder-style: every digit is its own piece, then GPT-2's split.
_DIGITS_THEN_GPT2 = PreTokenizer((r"\p{N}", _RE_GPT2))
# llama.cpp's fallback for BPE vocabularies that name "default".
_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "falcon3": _LLAMA3,
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "megrez": _QWEN2, "stablelm2": _QWEN2,
    "gpt-2": _GPT2, "phi-2": _GPT2, "mpt": _GPT2, "olmo": _GPT2,
    "smollm": _DIGITS_THEN_GPT2, "starcoder": _DIGITS_THEN_GPT2, "refact": _DIGITS_THEN_GPT2,
}

# Tokens that end a generation even when the file does not name them (llama.cpp matches the same
# texts: converters often leave eot/eom unset).
_EOG_TEXTS = frozenset({"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                        "<|eom_id|>", "<EOT>", "<|end_of_text|>"})

_SPM_SPACE = "\u2581"  # "▁"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _gpt2_byte_table() -> dict[int, str]:
    """GPT-2's byte -> character map: printable bytes stand for themselves, the other 68 bytes are
    shifted to U+0100.. so that every byte is a visible, non-space character in the vocabulary."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


_BYTE_TO_CHAR = _gpt2_byte_table()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


# --- reading GGUF fields ---------------------------------------------------------------------------

def read_gguf_fields(reader: Any, prefix: Sequence[str] | str = ("tokenizer.", "general.")) -> dict[str, Any]:
    """Plain Python values of the `reader`'s (a `gguf.GGUFReader`) fields whose key starts with `prefix`.

    Strings become `str`, numbers `int`/`float`/`bool`, arrays `list`s of those. A field whose bytes
    do not match its declared type (or a string that is not UTF-8) raises GGUFError naming the key.
    """
    from gguf.constants import GGUFValueType  # the caller already has gguf: it made the reader

    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    scalar_kinds = {
        GGUFValueType.UINT8: int, GGUFValueType.INT8: int, GGUFValueType.UINT16: int,
        GGUFValueType.INT16: int, GGUFValueType.UINT32: int, GGUFValueType.INT32: int,
        GGUFValueType.UINT64: int, GGUFValueType.INT64: int,
        GGUFValueType.FLOAT32: float, GGUFValueType.FLOAT64: float, GGUFValueType.BOOL: bool,
    }

    def as_str(key: str, part: Any) -> str:
        try:
            return bytes(part).decode("utf-8")
        except (UnicodeDecodeError, TypeError) as e:
            raise GGUFError(f"GGUF field {key!r}: string is not valid UTF-8 ({e})") from None

    def as_scalar(key: str, vtype: Any, part: Any) -> Any:
        kind = scalar_kinds.get(vtype)
        if kind is None:
            raise GGUFError(f"GGUF field {key!r}: unsupported value type {vtype!r}")
        try:
            values = part.tolist()
        except AttributeError:
            raise GGUFError(f"GGUF field {key!r}: value of type {vtype.name} is unreadable") from None
        if not isinstance(values, list) or len(values) != 1:
            raise GGUFError(f"GGUF field {key!r}: expected one {vtype.name}, found {values!r}")
        return kind(values[0])

    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not key.startswith(prefixes):
            continue
        types = list(getattr(field, "types", []) or [])
        if not types:
            raise GGUFError(f"GGUF field {key!r}: no value type")
        try:
            if types[0] == GGUFValueType.ARRAY:
                if len(types) != 2:  # nested arrays: no tokenizer or general key uses them
                    raise GGUFError(f"GGUF field {key!r}: nested arrays are not supported")
                sub = types[1]
                if sub == GGUFValueType.STRING:
                    out[key] = [as_str(key, field.parts[i]) for i in field.data]
                else:
                    out[key] = [as_scalar(key, sub, field.parts[i]) for i in field.data]
            elif types[0] == GGUFValueType.STRING:
                out[key] = as_str(key, field.parts[field.data[0]])
            else:
                out[key] = as_scalar(key, types[0], field.parts[field.data[0]])
        except GGUFError:
            raise
        except (IndexError, ValueError, TypeError, AttributeError) as e:
            raise GGUFError(f"GGUF field {key!r} is malformed: {e}") from None
    return out


# --- validation of the field dict ------------------------------------------------------------------

def _str_list(fields: Mapping[str, Any], key: str, required: bool) -> Optional[list[str]]:
    v = fields.get(key)
    if v is None:
        if required:
            raise GGUFError(f"required tokenizer key {key!r} is missing")
        return None
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise GGUFError(f"tokenizer key {key!r} must be an array of strings")
    return list(v)


def _num_list(fields: Mapping[str, Any], key: str, n: int, kind: type) -> Optional[list]:
    v = fields.get(key)
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        raise GGUFError(f"tokenizer key {key!r} must be an array, got {type(v).__name__}")
    if len(v) != n:
        raise GGUFError(f"tokenizer key {key!r} has {len(v)} entries, but the vocabulary has {n} tokens")
    ok = (lambda x: isinstance(x, int) and not isinstance(x, bool)) if kind is int else \
         (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool))
    if not all(ok(x) for x in v):
        raise GGUFError(f"tokenizer key {key!r} must be an array of {kind.__name__}s")
    return [kind(x) for x in v]


def _token_id(fields: Mapping[str, Any], key: str, n: int, default: Optional[int]) -> Optional[int]:
    v = fields.get(key)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
        raise GGUFError(f"tokenizer key {key!r} = {v!r} is not a token id in [0, {n})")
    return v


def _flag(fields: Mapping[str, Any], key: str, default: bool) -> bool:
    v = fields.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise GGUFError(f"tokenizer key {key!r} must be a bool, got {v!r}")
    return v


# --- engines ----------------------------------------------------------------------------------------

class _BpeEngine:
    """Byte-level BPE over pre-tokenizer pieces, run by HF `tokenizers`."""

    def __init__(self, tokens: list[str], merges: list[str], pre: PreTokenizer):
        try:
            from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("the gpt2 (BPE) tokenizer needs the 'tokenizers' package") from e
        vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            vocab[t] = i  # a duplicated text maps to its last id, as in llama.cpp
        pairs = []
        for i, m in enumerate(merges):
            # The separator is the first space after the first character: llama.cpp's rule.
            cut = m.find(" ", 1)
            if cut < 0:
                raise GGUFError(f"tokenizer.ggml.merges[{i}] = {m!r} is not two tokens separated by a space")
            pairs.append((m[:cut], m[cut + 1:]))
        try:
            model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre.ignore_merges)
        except Exception as e:  # tokenizers raises plain Exception for merges naming unknown tokens
            raise GGUFError(f"tokenizer.ggml.merges is inconsistent with tokenizer.ggml.tokens: {e}") from None
        hf = HFTokenizer(model)
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._hf = hf

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids


class _SpmEngine:
    """SentencePiece BPE with scores and byte fallback, step for step as llama.cpp runs it."""

    def __init__(self, text_to_id: dict[str, int], scores: list[float], byte_ids: dict[int, int],
                 unk_id: Optional[int]):
        self._text_to_id = text_to_id
        self._scores = scores
        self._byte_ids = byte_ids  # byte value -> id of "<0xNN>" (or of the one-character token)
        self._unk_id = unk_id

    def encode(self, text: str) -> list[int]:
        """`text` has its spaces already replaced by "▁"."""
        n = len(text)
        if n == 0:
            return []
        # Symbols are runs text[start[i] : start[i] + size[i]]; merged-away symbols have size 0.
        start = list(range(n))
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]
        heap: list[tuple[float, int, int, int]] = []
        vocab, scores = self._text_to_id, self._scores
        import heapq

        def try_pair(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            s = text[start[left]:start[left] + size[left] + size[right]]
            tid = vocab.get(s)
            if tid is not None:
                # Highest score first; on a tie, the leftmost pair.
                heapq.heappush(heap, (-scores[tid], left, right, size[left] + size[right]))

        for i in range(1, n):
            try_pair(i - 1, i)
        while heap:
            _, left, right, total = heapq.heappop(heap)
            # Stale entry: one side has been merged into something else since it was pushed.
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != total:
                continue
            size[left] = total
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            try_pair(prev[left], left)
            try_pair(left, nxt[left])

        out: list[int] = []
        i = 0
        while i != -1:
            s = text[start[i]:start[i] + size[i]]
            tid = vocab.get(s)
            if tid is not None:
                out.append(tid)
            else:
                # Only single characters can be missing (every merge result is in the vocabulary):
                # write their UTF-8 bytes as byte tokens.
                for b in s.encode("utf-8"):
                    bid = self._byte_ids.get(b, self._unk_id)
                    if bid is None:
                        raise ArgumentError(
                            f"text: character {s!r} has no token and the vocabulary has neither a byte "
                            f"token <0x{b:02X}> nor an unknown token")
                    out.append(bid)
            i = nxt[i]
        return out


# --- the tokenizer -----------------------------------------------------------------------------------

class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary. Build with `from_gguf_fields` or `from_gguf`."""

    def __init__(self, *, model: str, pre: Optional[str], tokens: list[str], token_types: list[int],
                 scores: Optional[list[float]], merges: Optional[list[str]], bos_id: Optional[int],
                 eos_id: Optional[int], eot_id: Optional[int], eom_id: Optional[int],
                 unk_id: Optional[int], pad_id: Optional[int], add_bos: bool, add_eos: bool,
                 add_space_prefix: bool, chat_template: Optional[str]):
        self.model = model
        self.pre = pre
        self._tokens = tokens
        self._types = token_types
        self.bos_id, self.eos_id, self.eot_id, self.eom_id = bos_id, eos_id, eot_id, eom_id
        self.unk_id, self.pad_id = unk_id, pad_id
        self.add_bos, self.add_eos = add_bos, add_eos
        self.add_space_prefix = add_space_prefix
        self.chat_template = chat_template

        self._text_to_id: dict[str, int] = {}
        for i, t in enumerate(tokens):
            self._text_to_id[t] = i

        eog = {i for i in (eos_id, eot_id, eom_id) if i is not None}
        eog.update(self._text_to_id[t] for t in _EOG_TEXTS if t in self._text_to_id)
        self.eog_ids: frozenset[int] = frozenset(eog)

        # Special tokens, longest text first: a longer token wins over one of its substrings.
        special = [i for i, t in enumerate(token_types)
                   if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN) and tokens[i]]
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        self._special_ids = special

        if model == "gpt2":
            assert merges is not None and pre is not None
            self._engine: Any = _BpeEngine(tokens, merges, PRE_TOKENIZERS[pre])
        else:
            assert scores is not None
            byte_ids: dict[int, int] = {}
            for i, t in enumerate(tokens):
                m = _BYTE_TOKEN.fullmatch(t)
                if m and token_types[i] == TOKEN_BYTE:
                    byte_ids.setdefault(int(m.group(1), 16), i)
            for b in range(0x80):  # llama.cpp's second choice: the byte's own one-character token
                if b not in byte_ids and chr(b) in self._text_to_id:
                    byte_ids[b] = self._text_to_id[chr(b)]
            self._engine = _SpmEngine(self._text_to_id, scores, byte_ids, unk_id)
        self._pieces: list[Optional[bytes]] = [None] * len(tokens)

    # --- construction ---

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any]) -> "Tokenizer":
        """Build from GGUF metadata as plain Python values (see `read_gguf_fields`).

        Raises GGUFError naming the key for a missing, mistyped or inconsistent field, an unsupported
        `tokenizer.ggml.model`, or a `tokenizer.ggml.pre` this module does not know.
        """
        model = fields.get("tokenizer.ggml.model")
        if model not in SUPPORTED_MODELS:
            raise GGUFError(f"tokenizer.ggml.model = {model!r} is not supported; "
                            f"supported: {', '.join(SUPPORTED_MODELS)}")
        tokens = _str_list(fields, "tokenizer.ggml.tokens", required=True)
        assert tokens is not None
        n = len(tokens)
        if n == 0:
            raise GGUFError("tokenizer.ggml.tokens is empty")
        types = _num_list(fields, "tokenizer.ggml.token_type", n, int) or [TOKEN_NORMAL] * n
        bad = next((i for i, t in enumerate(types) if t not in _TOKEN_TYPES), None)
        if bad is not None:
            raise GGUFError(f"tokenizer.ggml.token_type[{bad}] = {types[bad]} is not a token type (0..6)")
        scores = _num_list(fields, "tokenizer.ggml.scores", n, float)

        pre = None
        merges = None
        if model == "gpt2":
            merges = _str_list(fields, "tokenizer.ggml.merges", required=True)
            pre = fields.get("tokenizer.ggml.pre", "default")  # absent in old files: llama.cpp's default
            if pre not in PRE_TOKENIZERS:
                raise GGUFError(f"tokenizer.ggml.pre = {pre!r} is not a supported pre-tokenizer; "
                                f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
            default_ids = (None, None, None)
            default_add_bos = PRE_TOKENIZERS[pre].add_bos
            default_space_prefix = False
        else:
            scores = scores if scores is not None else [0.0] * n
            default_ids = (1, 2, 0)  # SentencePiece's <s>, </s>, <unk>
            default_add_bos = True
            default_space_prefix = True
        d_bos, d_eos, d_unk = (i if i is not None and i < n else None for i in default_ids)

        template = fields.get("tokenizer.chat_template")
        if template is not None and not isinstance(template, str):
            raise GGUFError("tokenizer.chat_template must be a string")
        return cls(
            model=model, pre=pre, tokens=tokens, token_types=types, scores=scores, merges=merges,
            bos_id=_token_id(fields, "tokenizer.ggml.bos_token_id", n, d_bos),
            eos_id=_token_id(fields, "tokenizer.ggml.eos_token_id", n, d_eos),
            eot_id=_token_id(fields, "tokenizer.ggml.eot_token_id", n, None),
            eom_id=_token_id(fields, "tokenizer.ggml.eom_token_id", n, None),
            unk_id=_token_id(fields, "tokenizer.ggml.unknown_token_id", n, d_unk),
            pad_id=_token_id(fields, "tokenizer.ggml.padding_token_id", n, None),
            add_bos=_flag(fields, "tokenizer.ggml.add_bos_token", default_add_bos),
            add_eos=_flag(fields, "tokenizer.ggml.add_eos_token", False),
            add_space_prefix=_flag(fields, "tokenizer.ggml.add_space_prefix", default_space_prefix),
            chat_template=template)

    @classmethod
    def from_gguf(cls, path: str) -> "Tokenizer":
        """Build from the metadata of the GGUF file at `path`."""
        from .gguf_model import _open  # the reader that checks every count and length against the file
        reader = _open(path)
        return cls.from_gguf_fields(read_gguf_fields(reader, ("tokenizer.",)))

    # --- properties ---

    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end a generation (eos, eot, eom and the usual end-of-turn texts)."""
        return self.eog_ids

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry as stored in the file (byte-level or "▁" form)."""
        return self._tokens[self._check_id(token_id, "token_id")]

    def token_type(self, token_id: int) -> int:
        return self._types[self._check_id(token_id, "token_id")]

    # --- encoding ---

    def encode(self, text: str, add_bos: Optional[bool] = None, parse_special: bool = True,
               add_eos: Optional[bool] = None) -> list[int]:
        """Token ids of `text`.

        add_bos / add_eos: None follows the file (`tokenizer.ggml.add_bos_token`, `add_eos_token`).
        parse_special: control tokens written in the text (e.g. "<|im_start|>") become their ids;
        False encodes them as plain text. User-defined tokens are always taken whole.
        """
        if not isinstance(text, str):
            raise ArgumentError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates (fuzz: a chat template can produce them)
            raise ArgumentError(f"text holds {text[e.start:e.end]!r} at position {e.start}, which is not "
                                f"valid Unicode (a lone surrogate); it cannot be tokenized") from None
        add_bos = self.add_bos if add_bos is None else add_bos
        add_eos = self.add_eos if add_eos is None else add_eos
        out: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise ArgumentError("add_bos=True, but the vocabulary has no BOS token")
            out.append(self.bos_id)
        prev_special = True  # SentencePiece puts a space before the first text and after a special token
        for piece in self._partition(text, parse_special):
            if isinstance(piece, int):
                out.append(piece)
                prev_special = True
                continue
            if self.model == "llama":
                if self.add_space_prefix and prev_special:
                    piece = " " + piece
                out.extend(self._engine.encode(piece.replace(" ", _SPM_SPACE)))
            else:
                out.extend(self._engine.encode(piece))
            prev_special = False
        if add_eos:
            if self.eos_id is None:
                raise ArgumentError("add_eos=True, but the vocabulary has no EOS token")
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list:
        """`text` cut into plain strings and special-token ids, each token's occurrences taken
        left to right, longest tokens first."""
        parts: list = [text] if text else []
        for tid in self._special_ids:
            if not parse_special and self._types[tid] != TOKEN_USER_DEFINED:
                continue
            tok = self._tokens[tid]
            if not any(isinstance(p, str) and tok in p for p in parts):
                continue
            new: list = []
            for p in parts:
                if not isinstance(p, str) or tok not in p:
                    new.append(p)
                    continue
                chunks = p.split(tok)
                for k, c in enumerate(chunks):
                    if k:
                        new.append(tid)
                    if c:
                        new.append(c)
            parts = new
        return parts

    # --- decoding ---

    def _check_id(self, token_id: Any, what: str) -> int:
        try:
            i = operator.index(token_id)
        except TypeError:
            raise ArgumentError(f"{what} must be an integer token id, got {token_id!r}") from None
        if not 0 <= i < len(self._tokens):
            raise ArgumentError(f"{what} = {i} is out of range for a vocabulary of {len(self._tokens)} tokens")
        return i

    def _piece(self, i: int) -> bytes:
        p = self._pieces[i]
        if p is None:
            t, kind = self._tokens[i], self._types[i]
            if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
                p = t.encode("utf-8")
            elif kind in (TOKEN_UNUSED, 0):
                p = b""  # llama.cpp prints nothing for unused and undefined tokens
            elif self.model == "gpt2":
                # Characters outside GPT-2's byte table stand for themselves.
                p = b"".join(bytes([_CHAR_TO_BYTE[c]]) if c in _CHAR_TO_BYTE else c.encode("utf-8")
                             for c in t)
            elif kind == TOKEN_BYTE:
                m = _BYTE_TOKEN.fullmatch(t)
                p = bytes([int(m.group(1), 16)]) if m else t.encode("utf-8")
            else:
                p = t.replace(_SPM_SPACE, " ").encode("utf-8")
            self._pieces[i] = p
        return p

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """The bytes one token stands for. A piece may be part of a UTF-8 character (byte tokens,
        byte-level BPE), so streamed output must go through `StreamDecoder`.
        special=False prints control and unknown tokens as nothing."""
        i = self._check_id(token_id, "token_id")
        if not special and self._types[i] in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return b""
        return self._piece(i)

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD.

        For SentencePiece vocabularies with add_space_prefix, the space that encode() put in front
        of the text is removed from the first token, so decode(encode(s, add_bos=False)) == s."""
        pieces = []
        for k, t in enumerate(ids):
            i = self._check_id(t, f"ids[{k}]")
            pieces.append(self.token_to_piece(i, special))
        if pieces and self.model == "llama" and self.add_space_prefix and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, special=special)


class StreamDecoder:
    """Turns token ids, one at a time, into text, emitting only complete UTF-8 characters.

    A byte-level token can end in the middle of a character (an emoji is often 2-4 tokens); the
    incomplete bytes are held until the following tokens complete them. special=False (the default
    for generated text) prints control tokens as nothing.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self._tok = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """The text completed by this token (possibly "")."""
        return self._utf8.decode(self._tok.token_to_piece(token_id, self._special))

    def feed_many(self, ids: Iterable[int]) -> str:
        return "".join(self.feed(t) for t in ids)

    def flush(self) -> str:
        """Text of any bytes still held (an unfinished character becomes U+FFFD); resets the decoder."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out
