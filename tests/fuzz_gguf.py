"""Fuzz harness for model loading: mutated GGUF files must give a working model or a typed error.

    python tests/fuzz_gguf.py --cases 100000 --seed 1 --jobs 2 --out /tmp/fuzz_out

Each case takes a seed file (tests/data/fuzz_corpus/*.gguf.gz, small valid models), applies one to
four mutations and runs what a user would: load_model_description -> LLM(path, n_ctx=64,
n_threads=1) -> logits on a few tokens -> tokenize/detokenize -> chat template render (or, where the
file does not load, LLM(path, vocab_only=True)). A case passes when it ends in a working model or in a
SelfExtError (GGUFError, ArgumentError, TemplateError, ...). Findings, each saved with its input
under --out: a crash (the worker died by a signal), a hang (no answer within --timeout seconds), an
untyped exception (KeyError, a bare ValueError, MemoryError other than our OutOfMemoryError, ...).

Mutations know the format (gguf/gguf_reader.py): the header (magic, version, tensor and kv counts),
each key/value (length-prefixed key, type id, value; arrays carry a sub-type and a count) and each
tensor info (name, n_dims, dims in ggml order, type id, data offset relative to the aligned data
section). Structured mutations edit those fields and re-serialize the file; raw mutations overwrite
the recorded field positions of the seed in place, flip bits or truncate.

Crashes are counted without an interpreter per case: this process imports everything once (no native
kernel runs here, so no thread exists), then forks one worker per batch of cases; a worker reports
"start i" / "done i outcome" lines over a pipe, runs under RLIMIT_AS, and a worker that dies or
stops answering is replaced, the batch resuming after the case that killed it. Case i is a pure
function of (--seed, i), so the parent rebuilds its bytes to save them.
"""
from __future__ import annotations

import os

# Before numpy is imported: no BLAS thread pool in the fork server.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import collections
import gzip
import json
import math
import random
import resource
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
CORPUS_DIR = HERE / "data" / "fuzz_corpus"

# --- GGUF format ----------------------------------------------------------------------------------

# Value type ids (gguf.constants.GGUFValueType) and the size of each scalar.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
              U64: "<Q", I64: "<q", F64: "<d"}
INT_TYPES = (U8, I8, U16, I16, U32, I32, U64, I64)
QTYPE_IDS = list(range(0, 42))  # every id ggml ever assigned, supported or not, and a few beyond


class ParseError(Exception):
    pass


@dataclass
class KV:
    key: bytes
    vtype: int
    raw: bytes          # the value's encoding (for arrays: sub-type, count, items)


@dataclass
class TensorEntry:
    name: bytes
    dims: list          # ggml order: dims[0] is the row length
    qtype: int
    offset: int         # relative to the data section


@dataclass
class Parsed:
    version: int
    kvs: list
    tensors: list
    data: bytes         # the data section (from the aligned data offset to the end)
    alignment: int
    data_offset: int
    # (position, size, kind) of every header field in the original bytes, for raw overwrites
    fields: list = field(default_factory=list)


class _Buf:
    def __init__(self, b: bytes):
        self.b, self.pos, self.fields = b, 0, []

    def take(self, fmt: str, kind: Optional[str] = None):
        n = struct.calcsize(fmt)
        if self.pos + n > len(self.b):
            raise ParseError("short read")
        if kind:
            self.fields.append((self.pos, n, kind))
        v = struct.unpack_from(fmt, self.b, self.pos)[0]
        self.pos += n
        return v

    def string(self, kind: str) -> bytes:
        n = self.take("<Q", kind)
        if self.pos + n > len(self.b):
            raise ParseError("short string")
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, vtype: int, depth: int = 0) -> None:
        if vtype == STRING:
            self.string("strlen")
        elif vtype == ARRAY:
            sub = self.take("<I", "subtype")
            count = self.take("<Q", "arrcount")
            for _ in range(count):
                self.value(sub, depth + 1)
        elif vtype in SCALAR_FMT:
            self.take(SCALAR_FMT[vtype], "scalar" if depth == 0 else None)
        else:
            raise ParseError(f"value type {vtype}")


def parse(b: bytes) -> Parsed:
    """Parse a well-formed GGUF file (the seeds), recording where each header field sits."""
    r = _Buf(b)
    if b[:4] != b"GGUF":
        raise ParseError("magic")
    r.pos = 4
    version = r.take("<I", "version")
    n_tensors = r.take("<Q", "n_tensors")
    n_kv = r.take("<Q", "n_kv")
    kvs, alignment = [], 32
    for _ in range(n_kv):
        key = r.string("keylen")
        vtype = r.take("<I", "vtype")
        start = r.pos
        r.value(vtype)
        kvs.append(KV(key, vtype, b[start:r.pos]))
        if key == b"general.alignment" and vtype == U32:
            alignment = struct.unpack_from("<I", b, start)[0]
    tensors = []
    for _ in range(n_tensors):
        name = r.string("namelen")
        nd = r.take("<I", "n_dims")
        dims = [r.take("<Q", "dim") for _ in range(nd)]
        qtype = r.take("<I", "ttype")
        off = r.take("<Q", "toffset")
        tensors.append(TensorEntry(name, dims, qtype, off))
    data_offset = (r.pos + alignment - 1) // alignment * alignment
    return Parsed(version, kvs, tensors, b[data_offset:], alignment, data_offset, r.fields)


def serialize(p: Parsed, n_tensors: Optional[int] = None, n_kv: Optional[int] = None) -> bytes:
    out = bytearray(b"GGUF" + struct.pack("<IQQ", p.version, len(p.tensors) if n_tensors is None else n_tensors,
                                          len(p.kvs) if n_kv is None else n_kv))
    for kv in p.kvs:
        out += struct.pack("<Q", len(kv.key)) + kv.key + struct.pack("<I", kv.vtype) + kv.raw
    for t in p.tensors:
        out += struct.pack("<Q", len(t.name)) + t.name + struct.pack("<I", len(t.dims))
        out += b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.dims)
        out += struct.pack("<IQ", t.qtype & 0xFFFFFFFF, t.offset & (2**64 - 1))
    align = p.alignment if p.alignment > 0 else 32
    out += bytes((-len(out)) % align)
    return bytes(out) + p.data


def enc_scalar(vtype: int, v) -> bytes:
    fmt = SCALAR_FMT[vtype]
    if vtype in (F32, F64):
        v = float(v)
        if vtype == F32 and math.isfinite(v) and abs(v) > 3.4e38:
            v = math.copysign(math.inf, v)  # what a float32 writer would store
        return struct.pack(fmt, v)
    bits = struct.calcsize(fmt) * 8
    v = int(v) % (1 << bits)
    if fmt[1].islower() and v >= 1 << (bits - 1):
        v -= 1 << bits
    return struct.pack(fmt, v)


def enc_string(s) -> bytes:
    b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def enc_array(sub: int, items: list) -> bytes:
    body = b"".join(enc_string(x) if sub == STRING else enc_scalar(sub, x) for x in items)
    return struct.pack("<IQ", sub, len(items)) + body


def dec_array(raw: bytes) -> tuple[int, list]:
    sub, n = struct.unpack_from("<IQ", raw, 0)
    pos, items = 12, []
    for _ in range(n):
        if sub == STRING:
            (ln,) = struct.unpack_from("<Q", raw, pos)
            items.append(raw[pos + 8:pos + 8 + ln])
            pos += 8 + ln
        else:
            fmt = SCALAR_FMT[sub]
            items.append(struct.unpack_from(fmt, raw, pos)[0])
            pos += struct.calcsize(fmt)
    return sub, items


def dec_string(raw: bytes) -> bytes:
    return raw[8:]


# --- ggml type facts needed to find scales in the data ---------------------------------------------

# type id -> (elements per block, bytes per block, byte offsets of float16 scales in a block)
QTYPE_LAYOUT = {0: (1, 4, ()), 1: (1, 2, ()), 30: (1, 2, ()), 2: (32, 18, (0,)), 3: (32, 20, (0, 2)),
                6: (32, 22, (0,)), 7: (32, 24, (0, 2)), 8: (32, 34, (0,)), 10: (256, 84, (80, 82)),
                11: (256, 110, (108,)), 12: (256, 144, (0, 2)), 13: (256, 176, (0, 2)), 14: (256, 210, (208,))}


def tensor_nbytes(t: TensorEntry) -> Optional[int]:
    lay = QTYPE_LAYOUT.get(t.qtype)
    if lay is None:
        return None
    return math.prod(t.dims) // lay[0] * lay[1]


# --- Mutations ----------------------------------------------------------------------------------------

INTERESTING_U64 = [0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64, 127, 128, 255, 256, 257, 4095, 4096, 0x7FFF,
                   0x8000, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**48,
                   2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
INTERESTING_F = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 1e-38, 1e-10, 1e10, 3.4e38, 1e300, float("nan"),
                 float("inf"), float("-inf"), 65504.0, 6e-8]
INTERESTING_F16 = [0x7C00, 0xFC00, 0x7E00, 0x7FFF, 0x7BFF, 0xFBFF, 0x0001, 0x0000, 0x8000, 0x3C00]
INTERESTING_F32 = [struct.pack("<f", x) for x in INTERESTING_F if not abs(x) > 3.4e38] + [b"\x00\x00\x80\x7f"] + [b"\xff\xff\xff\x7f", b"\x01\x00\x80\x7f"]

HYPER_KEYS = ["block_count", "embedding_length", "feed_forward_length", "context_length", "attention.head_count",
              "attention.head_count_kv", "attention.key_length", "attention.value_length", "vocab_size",
              "rope.dimension_count", "cope.npos_max", "rope.scaling.original_context_length"]
FLOAT_KEYS = ["attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.scaling.factor", "rope.scale_linear",
              "rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow", "rope.scaling.yarn_ext_factor",
              "rope.scaling.attn_factor", "rope.scaling.yarn_attn_factor"]
TOKEN_ID_KEYS = ["bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id", "unknown_token_id",
                 "padding_token_id"]
ARCHES = [b"llama", b"qwen2", b"selfext-cope", b"mamba", b"", b"llama\x00", b"\xff\xfe"]

HOSTILE_TEMPLATES = [
    # sandbox escapes (jinja2 SSTI payloads; llama-cpp-python's CVE-2024-34359 used the first kind)
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch /tmp/selfext_pwned') }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{{ self._TemplateReference__context }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ (messages|first).__class__ }}",
    "{{ messages[0]|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "{{ '{0[0].__class__}'.format(messages) }}",
    "{{ messages.append(1) }}{{ messages.pop() }}",
    "{% set x = messages.clear() %}{{ messages }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{% import 'os' as os %}{{ os }}",
    "{% include '/etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{{ range.__call__ }}",
    "{{ dict(a=1).items().__iter__ }}",
    # resource bombs
    "{{ 'x' * 10**9 }}",
    "{{ 'x' * 1000000 * 1000 }}",
    "{{ [1] * 100000000 }}",
    "{{ 10 ** 100000 }}",
    "{{ ((2 ** 999) ** 999) ** 999 }}",
    "{{ range(10**9)|list|length }}",
    "{{ 'a'.ljust(3000000000) }}",
    "{{ 'a'.center(10**10) }}",
    "{{ 'a'.zfill(2**31) }}",
    "{{ '\\t'.expandtabs(2**31) }}",
    "{{ ('x' * 1000000).replace('x', 'x' * 1000000) }}",
    "{{ '%2000000000s'|format(1) }}",
    "{{ '{:>2000000000}'.format(1) }}",
    "{{ messages|tojson(indent=2000000000) }}",
    "{{ lipsum(10**7) }}",
    "{{ 'ab'|indent(2**31, true) }}",
    "{{ 'a b'|wordwrap(2**62) }}",
    "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set s = 'x' * 1000000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
    "{{ strftime_now('%Y' * 1000000) }}",
    "{{ strftime_now(none) }}",
    # errors a template can throw
    "{{ raise_exception('refused') }}",
    "{{ 1 / 0 }}",
    "{{ messages[99] }}{{ messages[0]['nope'] }}",
    "{{ messages[0].content.nope.deeper }}",
    "{{ 'x' + 1 }}",
    "{{ undefined_thing() }}",
    "{% for %}",
    "{% if %}{% endif",
    "{{",
    "{% raw %}",
    "{{ 'abc'|int + [] }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ messages|sort(attribute='__class__') }}",
    "{{ messages|groupby('__class__') }}",
    "{{ '\\udcff' }}",
    "",
    "\x00\xff{{ bos_token }}",
]

JINJA_PIECES = ["{{", "}}", "{%", "%}", "{#", "#}", " for m in messages ", " endfor ", " if ", " endif ", " set x = ",
                "messages", "m['content']", "|tojson", "|join", "~", "*", "**", "(", ")", "[", "]", "'", '"',
                ".__class__", "loop.index", "range(", "namespace(", "raise_exception(", "\\", "\n", "-"]


class Mutator:
    """The mutations of one case, drawn from rng (a pure function of the case's seed)."""

    def __init__(self, rng: random.Random, seed_bytes: bytes, parsed: Parsed):
        self.rng, self.seed, self.p = rng, seed_bytes, parsed
        self.log: list[str] = []

    # helpers
    def pick_int(self, orig: Optional[int] = None) -> int:
        r = self.rng.random()
        if orig is not None and r < 0.3:
            # Wrapped to 64 bits: every caller packs the result as an unsigned 64-bit field.
            return self.rng.choice([orig + 1, orig - 1, orig * 2, orig // 2, orig + (1 << 32), -orig,
                                    orig * 3 // 4]) & 0xFFFFFFFFFFFFFFFF
        if r < 0.85:
            return self.rng.choice(INTERESTING_U64)
        return self.rng.getrandbits(self.rng.choice([8, 16, 32, 64]))

    def find_kv(self, suffix: str) -> Optional[KV]:
        s = suffix.encode()
        cands = [kv for kv in self.p.kvs if kv.key.endswith(s)]
        return self.rng.choice(cands) if cands else None

    def arch(self) -> bytes:
        kv = self.find_kv("general.architecture")
        return dec_string(kv.raw) if kv and kv.vtype == STRING else b"llama"

    def set_kv(self, key: bytes, vtype: int, raw: bytes) -> None:
        for kv in self.p.kvs:
            if kv.key == key:
                kv.vtype, kv.raw = vtype, raw
                return
        self.p.kvs.insert(self.rng.randrange(len(self.p.kvs) + 1), KV(key, vtype, raw))

    # structured mutations (on self.p)
    def m_hyper(self):
        key = self.arch() + b"." + self.rng.choice(HYPER_KEYS).encode()
        kv = next((k for k in self.p.kvs if k.key == key), None)
        orig = struct.unpack(SCALAR_FMT[kv.vtype], kv.raw)[0] if kv and kv.vtype in INT_TYPES else None
        vtype = kv.vtype if kv and kv.vtype in INT_TYPES and self.rng.random() < 0.8 else self.rng.choice(INT_TYPES)
        v = self.pick_int(orig)
        self.set_kv(key, vtype, enc_scalar(vtype, v))
        self.log.append(f"hyper {key.decode(errors='replace')}={v} ({vtype})")

    def m_heads(self):
        """Zero heads, heads that do not divide the width, n_head_kv not dividing n_head, huge n_layer."""
        a = self.arch()
        choice = self.rng.randrange(5)
        pairs = [[(b"attention.head_count", 0)], [(b"attention.head_count", 3)],
                 [(b"attention.head_count", 4), (b"attention.head_count_kv", 3)],
                 [(b"block_count", self.rng.choice([0, 2, 1000, 2**31, 2**32 + 1]))],
                 [(b"attention.head_count", 8), (b"attention.key_length", 32), (b"attention.value_length", 32)]][choice]
        for k, v in pairs:
            self.set_kv(a + b"." + k, U32, enc_scalar(U32, v))
        self.log.append(f"heads {pairs}")

    def m_float_kv(self):
        key = self.arch() + b"." + self.rng.choice(FLOAT_KEYS).encode()
        v = self.rng.choice(INTERESTING_F)
        vt = self.rng.choice([F32, F32, F64, U32])
        self.set_kv(key, vt, enc_scalar(vt, v if vt != U32 else 0))
        if self.rng.random() < 0.5:
            self.set_kv(self.arch() + b".rope.scaling.type", STRING,
                        enc_string(self.rng.choice(["linear", "yarn", "none", "longrope", ""])))
        self.log.append(f"float {key.decode(errors='replace')}={v} ({vt})")

    def m_kv_type(self):
        kv = self.rng.choice(self.p.kvs)
        old = kv.vtype
        kv.vtype = self.rng.choice(list(range(14)) + [255, 2**31, 2**32 - 1])
        if self.rng.random() < 0.5 and kv.vtype in SCALAR_FMT:
            kv.raw = enc_scalar(kv.vtype, 1)
        elif self.rng.random() < 0.5 and kv.vtype == STRING:
            kv.raw = enc_string("7")
        self.log.append(f"kv type {kv.key[:60]!r} {old}->{kv.vtype}")

    def m_kv_structure(self):
        r = self.rng.randrange(4)
        i = self.rng.randrange(len(self.p.kvs))
        if r == 0:
            self.log.append(f"kv delete {self.p.kvs[i].key[:60]!r}")
            del self.p.kvs[i]
        elif r == 1:
            self.log.append(f"kv duplicate {self.p.kvs[i].key[:60]!r}")
            self.p.kvs.insert(self.rng.randrange(len(self.p.kvs) + 1), KV(self.p.kvs[i].key, self.p.kvs[i].vtype,
                                                                          self.p.kvs[i].raw))
        elif r == 2:
            kv = self.p.kvs[i]
            kv.key = self.rng.choice([b"", b"\xff\xfe", kv.key + b"\x00", kv.key.upper(), b"general.architecture",
                                      kv.key * 50])
            self.log.append(f"kv rename -> {kv.key[:60]!r}")
        else:  # array count / sub-type
            arrs = [kv for kv in self.p.kvs if kv.vtype == ARRAY]
            if arrs:
                kv = self.rng.choice(arrs)
                if self.rng.random() < 0.5:
                    kv.raw = kv.raw[:4] + struct.pack("<Q", self.pick_int(struct.unpack_from("<Q", kv.raw, 4)[0])) + kv.raw[12:]
                else:
                    kv.raw = struct.pack("<I", self.rng.choice(list(range(14)) + [2**32 - 1])) + kv.raw[4:]
                self.log.append(f"array header {kv.key[:60]!r}")

    def m_alignment(self):
        v = self.rng.choice([0, 1, 3, 8, 16, 31, 64, 4096, 2**31, 2**32 - 1])
        vt = self.rng.choice([U32, U32, U64, I32, STRING])
        self.set_kv(b"general.alignment", vt, enc_string(str(v)) if vt == STRING else enc_scalar(vt, v))
        if self.rng.random() < 0.5 and vt == U32 and v and not v & (v - 1):
            self.p.alignment = v  # lay the file out to match
        self.log.append(f"alignment {v} ({vt})")

    def m_arch(self):
        kv = self.find_kv("general.architecture")
        new = self.rng.choice(ARCHES)
        old = self.arch()
        if kv:
            kv.raw = enc_string(new)
        if self.rng.random() < 0.7 and new:
            for k in self.p.kvs:
                if k.key.startswith(old + b"."):
                    k.key = new + k.key[len(old):]
        self.log.append(f"arch {old!r}->{new!r}")

    def m_tokens(self):
        kv = next((k for k in self.p.kvs if k.key == b"tokenizer.ggml.tokens" and k.vtype == ARRAY), None)
        if kv is None:
            return
        sub, items = dec_array(kv.raw)
        r = self.rng.randrange(8)
        i = self.rng.randrange(len(items)) if items else 0
        if r == 0 and items:
            items[i] = b""
        elif r == 1 and items:
            items[i] = self.rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"<|im_start|>", b"\xe2\x96\x81"])
        elif r == 2 and items:
            items[i] = b"a" * self.rng.choice([1000, 100000])
        elif r == 3 and items:
            items[i] = items[(i + 1) % len(items)]
        elif r == 4:
            items = items[:self.rng.randrange(len(items) + 1)]
        elif r == 5:
            items = items + [b"extra"] * self.rng.randrange(1, 4)
        elif r == 6 and items:
            items[i] = b"<0x" + self.rng.choice([b"ZZ", b"1", b"100", b"-1"]) + b">"
        else:
            items = []
        kv.raw = enc_array(sub, items)
        self.log.append(f"tokens r={r} i={i} n={len(items)}")

    def m_tokenizer_other(self):
        r = self.rng.randrange(7)
        if r == 0:
            kv = next((k for k in self.p.kvs if k.key == b"tokenizer.ggml.merges" and k.vtype == ARRAY), None)
            if kv is not None:
                sub, items = dec_array(kv.raw)
                if items:
                    j = self.rng.randrange(len(items))
                    items[j] = self.rng.choice([b"", b"a", b"a b c", b"  ", b"\xff \xfe", b"zz qq", b" a"])
                kv.raw = enc_array(sub, items)
        elif r == 1:
            kv = next((k for k in self.p.kvs if k.key == b"tokenizer.ggml.token_type" and k.vtype == ARRAY), None)
            if kv is not None:
                sub, items = dec_array(kv.raw)
                if items:
                    items[self.rng.randrange(len(items))] = self.rng.choice([-1, 0, 3, 4, 5, 6, 7, 255, 2**31 - 1])
                kv.raw = enc_array(sub, items)
        elif r == 2:
            kv = next((k for k in self.p.kvs if k.key == b"tokenizer.ggml.scores" and k.vtype == ARRAY), None)
            if kv is not None:
                sub, items = dec_array(kv.raw)
                if items:
                    items[self.rng.randrange(len(items))] = self.rng.choice(INTERESTING_F)
                kv.raw = enc_array(sub, items)
        elif r == 3:
            key = b"tokenizer.ggml." + self.rng.choice(TOKEN_ID_KEYS).encode()
            vt = self.rng.choice([U32, I32, U64, STRING, F32])
            v = self.pick_int()
            self.set_kv(key, vt, enc_string(str(v)) if vt == STRING else enc_scalar(vt, v))
        elif r == 4:
            self.set_kv(b"tokenizer.ggml.model", STRING, enc_string(self.rng.choice(["gpt2", "llama", "bert", ""])))
        elif r == 5:
            self.set_kv(b"tokenizer.ggml.pre", STRING,
                        enc_string(self.rng.choice(["default", "gpt-2", "llama3", "qwen2", "smollm", "nope", ""])))
        else:
            key = b"tokenizer.ggml." + self.rng.choice([b"add_bos_token", b"add_eos_token", b"add_space_prefix"])
            vt = self.rng.choice([BOOL, U8, STRING])
            self.set_kv(key, vt, enc_string("true") if vt == STRING else enc_scalar(vt, self.rng.choice([0, 1, 2, 255])))
        self.log.append(f"tokenizer r={r}")

    def m_template(self):
        r = self.rng.random()
        if r < 0.6:
            t = self.rng.choice(HOSTILE_TEMPLATES)
        else:
            kv = next((k for k in self.p.kvs if k.key == b"tokenizer.chat_template"), None)
            t = dec_string(kv.raw).decode("utf-8", "replace") if kv and kv.vtype == STRING else ""
            for _ in range(self.rng.randrange(1, 4)):
                pos = self.rng.randrange(len(t) + 1)
                if self.rng.random() < 0.5:
                    t = t[:pos] + self.rng.choice(JINJA_PIECES) + t[pos:]
                else:
                    t = t[:pos] + t[pos + self.rng.randrange(1, 8):]
        self.set_kv(b"tokenizer.chat_template", STRING, enc_string(t.encode("utf-8", "surrogatepass")))
        self.log.append(f"template {t[:80]!r}")

    def m_tensor_dims(self):
        t = self.rng.choice(self.p.tensors)
        r = self.rng.randrange(4)
        if r == 0 and t.dims:
            j = self.rng.randrange(len(t.dims))
            t.dims[j] = self.pick_int(t.dims[j])
        elif r == 1:
            t.dims = t.dims + [self.rng.choice([1, 2, 2**32])] if self.rng.random() < 0.5 else t.dims[:-1]
        elif r == 2 and len(t.dims) == 2:  # same element count, another shape; overflowing products
            t.dims = self.rng.choice([[t.dims[1], t.dims[0]], [t.dims[0] * 2, t.dims[1] // 2],
                                      [2**32, 2**32], [2**63, 2], [t.dims[0], t.dims[1], 2**62]])
        else:
            t.dims = [self.pick_int() for _ in range(self.rng.choice([0, 1, 2, 3, 4, 5, 64]))]
        self.log.append(f"dims {t.name!r} -> {t.dims[:6]}")

    def m_tensor_type(self):
        t = self.rng.choice(self.p.tensors)
        t.qtype = self.rng.choice(QTYPE_IDS + [2**31, 2**32 - 1])
        self.log.append(f"type {t.name!r} -> {t.qtype}")

    def m_tensor_offset(self):
        t = self.rng.choice(self.p.tensors)
        other = self.rng.choice(self.p.tensors)
        r = self.rng.randrange(5)
        if r == 0:
            t.offset = other.offset                    # overlap
        elif r == 1:
            t.offset = other.offset + self.rng.choice([32, 64, 96])
        elif r == 2:
            t.offset += self.rng.choice([1, 3, 16, -32, -1])
        elif r == 3:
            t.offset = len(self.p.data) + self.rng.choice([-32, 0, 32])
        else:
            t.offset = self.pick_int(t.offset)
        self.log.append(f"offset {t.name!r} -> {t.offset}")

    def m_tensor_structure(self):
        r = self.rng.randrange(5)
        i = self.rng.randrange(len(self.p.tensors))
        t = self.p.tensors[i]
        if r == 0:
            del self.p.tensors[i]
        elif r == 1:
            self.p.tensors.append(TensorEntry(t.name, list(t.dims), t.qtype, t.offset))
        elif r == 2:
            j = self.rng.randrange(len(self.p.tensors))
            t.name, self.p.tensors[j].name = self.p.tensors[j].name, t.name
        elif r == 3:
            t.name = self.rng.choice([b"blk.99.attn_q.weight", b"blk.-1.attn_q.weight", b"", b"\xff",
                                      b"blk.0.attn_q.weight", b"output.weight", b"rope_freqs.weight", t.name * 100,
                                      b"blk.0.attn_q.bias", b"blk.0.cope_pos.weight"])
        else:
            self.p.tensors.insert(0, self.p.tensors.pop(i))
        self.log.append(f"tensor structure r={r} {t.name[:60]!r}")

    def m_data_values(self):
        """NaN/Inf/extremes into norm weights, biases, frequency factors, quant scales and F16 weights."""
        data = bytearray(self.p.data)
        cands = [t for t in self.p.tensors if t.qtype in QTYPE_LAYOUT]
        norms = [t for t in cands if t.qtype in (0, 1, 30)]
        pool = norms if norms and self.rng.random() < 0.5 else cands
        t = self.rng.choice(pool)
        nb = tensor_nbytes(t)
        blk, bsz, scales = QTYPE_LAYOUT[t.qtype]
        n_blocks = nb // bsz if nb else 0
        if not n_blocks or t.offset + nb > len(data):
            return
        for _ in range(self.rng.choice([1, 1, 4, 64, n_blocks])):
            b = self.rng.randrange(n_blocks)
            at = t.offset + b * bsz
            if t.qtype == 0:
                data[at:at + 4] = self.rng.choice(INTERESTING_F32)
            elif t.qtype in (1, 30) or not scales:
                data[at:at + 2] = struct.pack("<H", self.rng.choice(INTERESTING_F16))
            else:
                s = self.rng.choice(scales)
                data[at + s:at + s + 2] = struct.pack("<H", self.rng.choice(INTERESTING_F16))
        self.p.data = bytes(data)
        self.log.append(f"data values {t.name!r}")

    STRUCTURED = ["m_hyper", "m_heads", "m_float_kv", "m_kv_type", "m_kv_structure", "m_alignment", "m_arch",
                  "m_tokens", "m_tokenizer_other", "m_template", "m_tensor_dims", "m_tensor_type",
                  "m_tensor_offset", "m_tensor_structure", "m_data_values"]
    WEIGHTS = [4, 2, 3, 2, 3, 1, 1, 2, 3, 3, 4, 3, 4, 2, 4]

    # raw mutations (on bytes)
    def r_field(self, b: bytearray) -> None:
        pos, size, kind = self.rng.choice(self.p.fields)
        if pos + size > len(b):
            return
        if size == 8:
            v = self.pick_int(struct.unpack_from("<Q", b, pos)[0]) % 2**64
            struct.pack_into("<Q", b, pos, v)
        elif size == 4:
            v = self.pick_int(struct.unpack_from("<I", b, pos)[0]) % 2**32
            struct.pack_into("<I", b, pos, v)
        else:
            b[pos:pos + size] = bytes(self.rng.getrandbits(8) for _ in range(size))
        self.log.append(f"raw field {kind}@{pos}")

    def r_flip(self, b: bytearray) -> None:
        hi = self.p.data_offset if self.rng.random() < 0.8 else len(b)
        for _ in range(self.rng.choice([1, 1, 2, 4, 8, 32])):
            i = self.rng.randrange(max(1, hi))
            if i < len(b):
                b[i] ^= 1 << self.rng.randrange(8)
        self.log.append("raw bit flips")

    def r_bytes(self, b: bytearray) -> None:
        hi = self.p.data_offset if self.rng.random() < 0.8 else len(b)
        i = self.rng.randrange(max(1, hi))
        n = self.rng.choice([1, 2, 4, 8])
        val = self.rng.choice([b"\x00", b"\xff", b"\x7f", b"\x80"]) * n
        b[i:i + n] = val
        self.log.append(f"raw bytes @{i}")

    def r_truncate(self, b: bytearray) -> bytearray:
        if not b:  # already truncated to nothing by an earlier raw mutation
            self.log.append("truncate skipped (empty)")
            return b
        r = self.rng.random()
        if r < 0.5:
            n = self.rng.randrange(len(b))
        elif r < 0.8:
            n = self.rng.randrange(min(len(b), self.p.data_offset + 64))
        else:
            n = max(0, len(b) - self.rng.choice([1, 2, 31, 32, 33, 1000]))
        self.log.append(f"truncate {n}")
        return b[:n]

    def run(self) -> bytes:
        if self.rng.random() < 0.65:
            for _ in range(self.rng.choice([1, 1, 1, 2, 2, 3])):
                name = self.rng.choices(self.STRUCTURED, self.WEIGHTS)[0]
                try:
                    getattr(self, name)()
                except Exception as e:  # struct.error, IndexError, KeyError, ValueError, ...
                    # An earlier mutation can leave a field this one cannot decode: skip it (the case
                    # stays deterministic in (seed, index)); the harness must not die on its own input.
                    self.log.append(f"{name} skipped ({type(e).__name__})")
            nt = nk = None
            if self.rng.random() < 0.05:
                nt = self.pick_int(len(self.p.tensors))
                self.log.append(f"n_tensors={nt}")
            if self.rng.random() < 0.05:
                nk = self.pick_int(len(self.p.kvs))
                self.log.append(f"n_kv={nk}")
            if self.rng.random() < 0.03:
                self.p.version = self.rng.choice([0, 1, 2, 4, 2**31, 2**32 - 1, 0x03000000])
                self.log.append(f"version={self.p.version}")
            out = bytearray(serialize(self.p, nt % 2**64 if nt is not None else None,
                                      nk % 2**64 if nk is not None else None))
            if self.rng.random() < 0.15:
                self.r_flip(out)
            if self.rng.random() < 0.05:
                out = self.r_truncate(out)
            return bytes(out)
        out = bytearray(self.seed)
        for _ in range(self.rng.choice([1, 1, 2, 3])):
            r = self.rng.random()
            if r < 0.45:
                self.r_field(out)
            elif r < 0.7:
                self.r_flip(out)
            elif r < 0.85:
                self.r_bytes(out)
            else:
                out = self.r_truncate(out)
        return bytes(out)


# --- Seeds ----------------------------------------------------------------------------------------------

def load_seeds(corpus: Path = CORPUS_DIR) -> list[tuple[str, bytes]]:
    """The seed models: every *.gguf / *.gguf.gz under corpus whose name starts with 'seed-'."""
    out = []
    for p in sorted(corpus.glob("seed-*.gguf*")):
        b = p.read_bytes()
        out.append((p.name, gzip.decompress(b) if p.suffix == ".gz" else b))
    if not out:
        raise SystemExit(f"no seed files in {corpus}; run with --write-seeds {corpus}")
    return out


def _low_entropy(b: bytes) -> bytes:
    """The same file with each tensor's data replaced by its first rows repeated (still valid blocks:
    rows are whole blocks), so the seed compresses to a few KB."""
    p = parse(b)
    data = bytearray(p.data)
    for t in p.tensors:
        nb = tensor_nbytes(t)
        blk, bsz, _ = QTYPE_LAYOUT[t.qtype]
        row = t.dims[0] // blk * bsz
        period = row * min(2, nb // row) if len(t.dims) > 1 else nb
        chunk = bytes(data[t.offset:t.offset + period])
        data[t.offset:t.offset + nb] = (chunk * (nb // period + 1))[:nb]
    p.data = bytes(data)
    return serialize(p)


SEED_MODELS = {
    # name -> gguf_factory.write_model keywords (head_dim 64: the attention kernels' smallest)
    "seed-llama-gpt2-q8_0": dict(arch="llama", qtype="Q8_0", n_layer=1, tokenizer="gpt2"),
    "seed-qwen2-bias-q4_0-untied": dict(arch="qwen2", qtype="Q4_0", n_layer=1, tied=False, tokenizer="gpt2"),
    "seed-llama-spm-kquants-freqs": dict(arch="llama", n_layer=1, tokenizer="llama", rope_freqs=True,
                                         qtype={"default": "Q4_K", "attn_v": "Q6_K", "ffn_down": "Q5_K",
                                                "attn_k": "Q3_K", "attn_output": "Q2_K", "token_embd": "Q8_0"}),
    "seed-llama-yarn-f16-2layers": dict(arch="llama", qtype={"default": "F16", "ffn_up": "BF16", "ffn_gate": "Q5_0",
                                                             "ffn_down": "Q5_1", "attn_q": "Q4_1"},
                                        n_layer=2, tokenizer="gpt2",
                                        rope_scaling={"type": "yarn", "factor": 4, "original_context_length": 64}),
    "seed-cope-f32": dict(arch="selfext-cope", qtype="Q8_0", n_layer=1, tokenizer="gpt2", rope_dim=64,
                          cope={"npos_max": 16, "per_head": True}),
}


def write_seeds(out_dir: Path) -> None:
    import tempfile
    sys.path.insert(0, str(HERE))
    import gguf_factory
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in SEED_MODELS.items():
            kw = dict(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=300, n_ctx_train=256, **kw)
            path = gguf_factory.write_model(Path(tmp) / "m.gguf", seed=1, **kw)
            b = _low_entropy(Path(path).read_bytes())
            (out_dir / f"{name}.gguf.gz").write_bytes(gzip.compress(b, 9, mtime=0))
            print(f"{name}: {len(b)} bytes, {(out_dir / f'{name}.gguf.gz').stat().st_size} gzipped")


# --- One case ---------------------------------------------------------------------------------------------

def make_case(seed: int, i: int, seeds: list, parsed: list) -> tuple[bytes, list[str], str]:
    rng = random.Random(seed * 1_000_003 + i)
    k = rng.randrange(len(seeds))
    p = parsed[k]
    p2 = Parsed(p.version, [KV(kv.key, kv.vtype, kv.raw) for kv in p.kvs],
                [TensorEntry(t.name, list(t.dims), t.qtype, t.offset) for t in p.tensors], p.data, p.alignment,
                p.data_offset, p.fields)
    m = Mutator(rng, seeds[k][1], p2)
    data = m.run()
    return data, m.log, seeds[k][0]


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, wörld! <|im_end|>"}]


def _nonfinite_elementwise(desc) -> Optional[str]:
    """The first element-wise tensor (norm weight, bias, CoPE table, frequency factors: F32/F16/BF16,
    1-D or cope_pos) of a loaded description that holds NaN/Inf, or None. The loader must refuse those;
    decoded here on its own so a regression of the loader's check cannot hide itself."""
    import numpy as np
    for name, t in desc.tensors.items():
        if t.qtype not in (0, 1, 30) or not (len(t.shape) == 1 or name.endswith("cope_pos.weight")):
            continue
        raw = t.data
        v = (raw.view(np.float32) if t.qtype == 0 else raw.view(np.float16) if t.qtype == 1
             else (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32))
        if not np.all(np.isfinite(v)):
            return name
    return None


def run_case(path: str) -> str:
    """Load and use the model at `path`; the outcome: 'ok', 'ok-nonfinite', 'error:<Type>', or
    'silent:nonfinite-accepted:<tensor>' (a finding: the loader accepted NaN/Inf in a norm or bias).

    'ok-nonfinite' is a model that runs but gives NaN/Inf logits from values the loader does not scan:
    quantized block scales, F16/F32 matrix weights, or finite values large enough to overflow.
    Only SelfExtError subclasses are caught here: anything else propagates (the worker reports it
    as a finding)."""
    import numpy as np
    from selfext_native import LLM
    from selfext_native.errors import SelfExtError
    from selfext_native.gguf_model import load_model_description

    try:
        try:
            desc = load_model_description(path)
        except SelfExtError:
            # The tokenizer-only path reads the file on its own: it must refuse cleanly too.
            try:
                llm = LLM(path, vocab_only=True)
                llm.detokenize(llm.tokenize("Hello world"))
                llm._template.render(MESSAGES)
            except SelfExtError:
                pass
            raise
        bad = _nonfinite_elementwise(desc)
        if bad is not None:
            return f"silent:nonfinite-accepted:{bad}"
        llm = LLM(path, n_ctx=64, n_threads=1)
        n = llm.tokenizer.n_vocab
        ids = [0, 1, n - 1, n // 2] + llm.tokenize("Hello world, the cat", add_bos=False)[:8]
        out = llm.logits(ids)
        assert out.shape == (len(ids), desc.n_vocab), out.shape
        alloc = int(llm._model.allocated_bytes)
        text = llm._template.render(MESSAGES)
        llm.detokenize(llm.tokenize(text))
        finite = bool(np.all(np.isfinite(out)))
        return ("ok" if finite else "ok-nonfinite") + f" alloc={alloc}"
    except SelfExtError as e:
        return f"error:{type(e).__name__}"


# --- Fork server ------------------------------------------------------------------------------------------

def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading
        return threading.active_count()


def _sanitized() -> bool:
    return "asan" in os.environ.get("LD_PRELOAD", "")


def _worker(wfd: int, seed: int, idxs: list[int], seeds, parsed, mem_limit: int, tmpdir: str) -> None:
    if mem_limit and not _sanitized():  # ASan reserves terabytes of shadow address space
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    path = os.path.join(tmpdir, f"fuzz-{os.getpid()}.gguf")
    for i in idxs:
        os.write(wfd, f"S {i}\n".encode())
        try:
            data, _, _ = make_case(seed, i, seeds, parsed)
        except MemoryError:
            # Building the input itself outgrew RLIMIT_AS (an alignment of 2^31 pads the file by up to
            # 2 GiB): a limit of the harness, not a finding in the code under test.
            os.write(wfd, f"D {i} skip:input-too-large\n".encode())
            continue
        except Exception as e:
            # A bug of the mutator itself (seed 16, case 8068: a second truncation of an empty input):
            # counted apart, not as a crash of the code under test, and it must not end the campaign.
            os.write(wfd, f"D {i} harness:{type(e).__name__}:{str(e)[:100]}\n".encode())
            continue
        with open(path, "wb") as f:
            f.write(data)
        try:
            outcome = run_case(path)
        except MemoryError as e:
            outcome = f"finding:MemoryError:{str(e)[:100]}"
        except RecursionError as e:
            outcome = f"finding:RecursionError:{str(e)[:100]}"
        except Exception as e:
            tb = e.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
            outcome = f"finding:{type(e).__name__}@{where}:{str(e)[:100]}"
        outcome = outcome.replace("\n", " ")
        os.write(wfd, f"D {i} {outcome}\n".encode())
    try:
        os.unlink(path)
    except OSError:
        pass


@dataclass
class Worker:
    pid: int
    rfd: int
    todo: list          # case indices left in this batch (the first one may be running)
    buf: bytes = b""
    current: Optional[int] = None
    started: float = 0.0


class Campaign:
    def __init__(self, seed: int, seeds, out: Optional[Path], timeout: float, mem_limit: int, verbose: bool):
        self.seed, self.seeds, self.out, self.timeout, self.mem_limit = seed, seeds, out, timeout, mem_limit
        self.parsed = [parse(b) for _, b in seeds]
        self.verbose = verbose
        self.counts: collections.Counter = collections.Counter()
        self.findings: list[dict] = []
        self.max_alloc_ratio = 0.0
        self.max_case_s, self.slowest = 0.0, -1   # wall time of the slowest passing case (2 jobs share the CPUs)
        self.done = 0
        self.tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"

    def spawn(self, idxs: list[int]) -> Worker:
        n_threads = _thread_count()
        if n_threads != 1:
            raise RuntimeError(f"the fork server has {n_threads} threads; forking would copy locks held by them")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                os.close(r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _worker(w, self.seed, idxs, self.seeds, self.parsed, self.mem_limit, self.tmpdir)
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        os.close(w)
        return Worker(pid, r, list(idxs))

    def record(self, i: int, outcome: str) -> None:
        self.done += 1
        kind = outcome.split(" ")[0]
        if kind.startswith("ok"):
            alloc = int(outcome.split("alloc=")[1])
            size = len(make_case(self.seed, i, self.seeds, self.parsed)[0]) if alloc > 64 << 20 else 0
            if size:
                self.max_alloc_ratio = max(self.max_alloc_ratio, alloc / size)
        key = kind if not kind.startswith(("finding:", "silent:", "harness:")) else ":".join(kind.split(":")[:2])
        self.counts[key] += 1
        if kind.startswith(("finding", "crash", "hang", "silent", "harness")):
            self.save(i, outcome)

    def save(self, i: int, outcome: str) -> None:
        try:
            data, log, seed_name = make_case(self.seed, i, self.seeds, self.parsed)
        except Exception as e:  # the mutator failed on this case (a harness finding): keep going
            data, log, seed_name = b"", [f"make_case failed: {type(e).__name__}: {e}"], "?"
        entry = {"case": i, "seed": self.seed, "outcome": outcome, "seed_file": seed_name, "mutations": log}
        self.findings.append(entry)
        print(f"FINDING case {i}: {outcome} | {seed_name} | {log}", file=sys.stderr, flush=True)
        if self.out is not None:
            sig = outcome.split(" ")[0].split(":")[:2]
            d = self.out / "_".join(sig).replace("/", "_")[:80]
            d.mkdir(parents=True, exist_ok=True)
            if len(list(d.glob("*.gguf"))) < 20:  # a few inputs per kind of finding are enough
                (d / f"case-{i}.gguf").write_bytes(data)
                (d / f"case-{i}.json").write_text(json.dumps(entry, indent=1))

    def _reap(self, wk: Worker, killed_for_hang: bool) -> None:
        os.close(wk.rfd)
        _, status = os.waitpid(wk.pid, 0)
        if wk.current is not None:
            if killed_for_hang:
                self.record(wk.current, f"hang:>{self.timeout:g}s")
            elif os.WIFSIGNALED(status):
                self.record(wk.current, f"crash:{signal.Signals(os.WTERMSIG(status)).name}")
            else:
                self.record(wk.current, f"crash:exit{os.WEXITSTATUS(status)}")
            wk.todo = wk.todo[wk.todo.index(wk.current) + 1:]
        elif wk.todo:  # died between cases: blame the next one conservatively
            self.record(wk.todo[0], "crash:between-cases")
            wk.todo = wk.todo[1:]

    def run(self, cases: int, jobs: int, batch: int, start: int = 0) -> None:
        pending = collections.deque(list(range(i, min(i + batch, start + cases)))
                                    for i in range(start, start + cases, batch))
        workers: dict[int, Worker] = {}
        t0 = last = time.time()
        while pending or workers:
            while pending and len(workers) < jobs:
                wk = self.spawn(pending.popleft())
                workers[wk.rfd] = wk
            ready, _, _ = select.select(list(workers), [], [], 0.5)
            now = time.time()
            for fd in ready:
                wk = workers[fd]
                chunk = os.read(fd, 65536)
                if not chunk:  # the worker exited
                    del workers[fd]
                    self._reap(wk, False)
                    if wk.todo:
                        pending.appendleft(wk.todo)
                    continue
                wk.buf += chunk
                *lines, wk.buf = wk.buf.split(b"\n")
                for line in lines:
                    tag, idx, *rest = line.decode(errors="replace").split(" ", 2)
                    if tag == "S":
                        wk.current, wk.started = int(idx), now
                    else:
                        dt = now - wk.started
                        if dt > self.max_case_s:
                            self.max_case_s, self.slowest = dt, int(idx)
                        self.record(int(idx), rest[0] if rest else "")
                        wk.todo.remove(int(idx))
                        wk.current = None
            for fd, wk in list(workers.items()):
                if wk.current is not None and now - wk.started > self.timeout:
                    os.kill(wk.pid, signal.SIGKILL)
                    del workers[fd]
                    self._reap(wk, True)
                    if wk.todo:
                        pending.appendleft(wk.todo)
            if now - last > 30:
                last = now
                self.elapsed = now - t0
                if self.out is not None:  # partial figures of a long run
                    self.out.mkdir(parents=True, exist_ok=True)
                    (self.out / "progress.json").write_text(json.dumps(self.summary(), indent=1))
            if self.verbose and now == last:
                print(f"[{now - t0:7.0f}s] {self.done} cases, {self.done / (now - t0):.1f}/s, "
                      f"{dict(self.counts.most_common(8))}", file=sys.stderr, flush=True)
        self.elapsed = time.time() - t0

    def summary(self) -> dict:
        crashes = sum(v for k, v in self.counts.items() if k.startswith("crash"))
        hangs = sum(v for k, v in self.counts.items() if k.startswith("hang"))
        findings = sum(v for k, v in self.counts.items() if k.startswith("finding"))
        silent = sum(v for k, v in self.counts.items() if k.startswith("silent"))
        harness = sum(v for k, v in self.counts.items() if k.startswith("harness"))
        return {"cases": self.done, "seconds": round(self.elapsed, 1),
                "cases_per_s": round(self.done / max(self.elapsed, 1e-9), 1),
                "crashes": crashes, "hangs": hangs, "untyped_exceptions": findings,
                "nonfinite_accepted": silent, "harness_errors": harness,
                "max_alloc_over_file": round(self.max_alloc_ratio, 2),
                "slowest_case_s": round(self.max_case_s, 2), "slowest_case": self.slowest,
                "outcomes": dict(sorted(self.counts.items(), key=lambda kv: -kv[1]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index (to resume or replay)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=200, help="cases per forked worker")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds a case may take before it is a hang")
    ap.add_argument("--mem-limit-gb", type=float, default=4.0, help="RLIMIT_AS of each worker (0: none)")
    ap.add_argument("--out", type=Path, default=None, help="where findings are saved, with a summary.json")
    ap.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    ap.add_argument("--write-seeds", type=Path, default=None, help="write the seed models there and exit")
    ap.add_argument("--replay", type=Path, nargs="*", help="run these files in a worker each and print outcomes")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.write_seeds:
        write_seeds(a.write_seeds)
        return 0
    import selfext_native  # noqa: F401  (import once, before forking: the workers share it)
    import selfext_native.gguf_model  # noqa: F401
    import jinja2.sandbox  # noqa: F401
    if a.replay:
        return replay(a.replay, a.timeout, int(a.mem_limit_gb * 2**30))
    seeds = load_seeds(a.corpus)
    c = Campaign(a.seed, seeds, a.out, a.timeout, int(a.mem_limit_gb * 2**30), not a.quiet)
    c.run(a.cases, a.jobs, a.batch, a.start)
    s = c.summary()
    s.update(seed=a.seed, start=a.start, jobs=a.jobs, seeds=[n for n, _ in seeds],
             command=" ".join(["python", "tests/fuzz_gguf.py"] + (argv if argv is not None else sys.argv[1:])))
    print(json.dumps(s, indent=1))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "summary.json").write_text(json.dumps(s, indent=1))
    return 1 if s["crashes"] or s["hangs"] or s["untyped_exceptions"] or s["nonfinite_accepted"] or s["harness_errors"] else 0


def replay(paths: list[Path], timeout: float, mem_limit: int) -> int:
    """Run each file (.gguf or .gguf.gz) in a forked worker; print its outcome. Exit 1 on a finding."""
    import tempfile
    bad = 0
    for p in paths:
        b = p.read_bytes()
        if p.suffix == ".gz":
            b = gzip.decompress(b)
        with tempfile.NamedTemporaryFile(suffix=".gguf", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
            f.write(b)
            f.flush()
            outcome = replay_one(f.name, timeout, mem_limit)
        bad += not outcome.startswith(("ok", "error:"))
        print(f"{p.name}: {outcome}")
    return 1 if bad else 0


def replay_one(path: str, timeout: float, mem_limit: int) -> str:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if mem_limit and not _sanitized():
                resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
            try:
                outcome = run_case(path)
            except Exception as e:
                outcome = f"finding:{type(e).__name__}:{str(e)[:200]}"
            os.write(w, outcome.replace("\n", " ").encode())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.time() + timeout
    out = b""
    while True:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.time()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return f"hang:>{timeout:g}s"
        chunk = os.read(r, 65536)
        if not chunk:
            break
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"crash:{signal.Signals(os.WTERMSIG(status)).name}"
    return out.decode(errors="replace") or "crash:no-answer"


if __name__ == "__main__":
    sys.exit(main())
