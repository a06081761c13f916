"""Loading and validating a GGUF model file (llama and qwen2 families).

The file is untrusted input: before the native code sees a single pointer, every tensor's type, shape,
byte size and byte range is checked against the architecture and the file, and every hyper-parameter
against the others. Anything wrong raises `GGUFError` naming the tensor or key, never a crash later.

Weights are never copied: `TensorInfo.data` is a uint8 view over the read-only memory map that
`gguf.GGUFReader` opens, which the native Model wraps (or uploads to the GPU) as is.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .errors import ArgumentError, GGUFError
from .rope import ROPE_SCALING_TYPES, RopeConfig, rope_inv_freq

try:  # gguf is a runtime dependency; import lazily-failing so the error names what is missing
    import gguf
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
except ImportError as e:  # pragma: no cover - exercised only in broken installs
    raise ImportError("selfext_native needs the 'gguf' package to read model files") from e


# --- GGML types the native kernels implement ------------------------------------------------------

# id -> name; anything else (IQ*, TQ*, MXFP4, I8, F64, ...) is refused at load time, naming the tensor.
SUPPORTED_QTYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16",
}
# 1-D tensors (norm weights, biases, frequency factors) are added or multiplied element-wise, so the
# kernels expect plain floats there.
FLOAT_QTYPES = frozenset({0, 1, 30})
GGML_MAX_DIMS = 4
SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")


def qtype_name(qtype: int) -> str:
    try:
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return f"unknown GGML type id {qtype}"


def block_layout(qtype: int) -> tuple[int, int]:
    """(elements per block, bytes per block) of a supported GGML type."""
    return GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]


# --- Architecture table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    name: str                                   # GGUF name; "{i}" is the layer index
    shape: Callable[["HParams"], tuple]         # row-major (numpy) shape from the hyper-parameters
    optional: bool = False
    float_only: bool = False                    # must be F32/F16/BF16 (element-wise operand)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    rope_style: str                             # llama.cpp's choice per arch: "norm" or "neox"
    global_tensors: tuple[TensorSpec, ...]
    layer_tensors: tuple[TensorSpec, ...]
    cope: bool = False                          # contextual position encoding (docs/cope_gguf.md)


def _vec(attr: str) -> Callable[["HParams"], tuple]:
    return lambda h: (getattr(h, attr),)


_COMMON_GLOBAL = (
    TensorSpec("token_embd.weight", lambda h: (h.n_vocab, h.n_embd)),
    TensorSpec("output_norm.weight", _vec("n_embd"), float_only=True),
    TensorSpec("output.weight", lambda h: (h.n_vocab, h.n_embd), optional=True),  # absent: tied to token_embd
    TensorSpec("rope_freqs.weight", _vec("rope_half"), optional=True, float_only=True),  # Llama-3.1 factors
)
_COMMON_LAYER = (
    TensorSpec("blk.{i}.attn_norm.weight", _vec("n_embd"), float_only=True),
    TensorSpec("blk.{i}.attn_q.weight", lambda h: (h.n_q, h.n_embd)),
    TensorSpec("blk.{i}.attn_k.weight", lambda h: (h.n_kv, h.n_embd)),
    TensorSpec("blk.{i}.attn_v.weight", lambda h: (h.n_kv, h.n_embd)),
    TensorSpec("blk.{i}.attn_output.weight", lambda h: (h.n_embd, h.n_q)),
    TensorSpec("blk.{i}.ffn_norm.weight", _vec("n_embd"), float_only=True),
    TensorSpec("blk.{i}.ffn_gate.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("blk.{i}.ffn_up.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("blk.{i}.ffn_down.weight", lambda h: (h.n_embd, h.n_ff)),
)
_QKV_BIASES = (
    TensorSpec("blk.{i}.attn_q.bias", _vec("n_q"), float_only=True),
    TensorSpec("blk.{i}.attn_k.bias", _vec("n_kv"), float_only=True),
    TensorSpec("blk.{i}.attn_v.bias", _vec("n_kv"), float_only=True),
)

# Each layer's CoPE position table: shared by the heads, or one per head (selfext-cope.cope.per_head).
_COPE_POS = TensorSpec("blk.{i}.cope_pos.weight",
                       lambda h: (h.n_head, h.npos_max, h.head_dim) if h.cope_per_head else (h.npos_max, h.head_dim),
                       float_only=True)

# Adding an architecture of the same shape family is one entry here.
ARCHITECTURES: dict[str, ArchSpec] = {
    # llama.cpp's converter permutes llama's Q/K rows for adjacent-pair rotation, hence "norm".
    "llama": ArchSpec("llama", "norm", _COMMON_GLOBAL, _COMMON_LAYER),
    # qwen2 keeps HF's half-split rotation ("neox") and has Q/K/V biases.
    "qwen2": ArchSpec("qwen2", "neox", _COMMON_GLOBAL, _COMMON_LAYER + _QKV_BIASES),
    # Our own name for models trained with contextual position encoding, so runtimes that do not know
    # CoPE refuse the file; RoPE (optional, rope.dimension_count = 0 for none) rotates HF-style halves.
    "selfext-cope": ArchSpec("selfext-cope", "neox", _COMMON_GLOBAL, _COMMON_LAYER + (_COPE_POS,), cope=True),
}


# --- Description ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HParams:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    rope_dim: int
    npos_max: int = 0
    cope_per_head: bool = False

    @property
    def n_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_kv(self) -> int:
        return self.n_head_kv * self.head_dim

    @property
    def rope_half(self) -> int:
        return self.rope_dim // 2


@dataclass(frozen=True)
class CopeConfig:
    """Contextual position encoding settings of a selfext-cope file (docs/cope_gguf.md)."""
    npos_max: int               # positions 0 .. npos_max - 1; p is clamped to npos_max - 1
    scale_pos_logits: bool      # False: the paper's listing (z unscaled); True: the authors' code
    per_head: bool              # position tables (n_head, npos_max, hd) instead of (npos_max, hd)


@dataclass
class TensorInfo:
    name: str
    qtype: int                  # GGML type id
    shape: tuple[int, ...]      # row-major as numpy sees it: (rows, cols) = GGUF dims reversed
    offset: int                 # absolute byte offset in the file
    n_bytes: int
    data: np.ndarray            # (n_bytes,) uint8, zero-copy read-only view over the memory map

    @property
    def qtype_name(self) -> str:
        return qtype_name(self.qtype)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class ModelDescription:
    path: str
    file_size: int
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    rms_eps: float
    n_ctx_train: int
    rope: RopeConfig
    tensors: dict[str, TensorInfo]
    tied_output: bool           # no output.weight: the head reuses token_embd.weight
    has_qkv_bias: bool
    fields: dict[str, Any]      # plain Python values of every tokenizer.* and general.* key
    alignment: int
    data_offset: int            # absolute offset of the tensor data section
    cope: Optional[CopeConfig] = None  # set for contextual-position-encoding models

    def layer_tensor(self, layer: int, short: str) -> TensorInfo:
        """`layer_tensor(3, "attn_q.weight")` -> tensors["blk.3.attn_q.weight"]."""
        return self.tensors[f"blk.{layer}.{short}"]

    @property
    def output_tensor(self) -> TensorInfo:
        return self.tensors["token_embd.weight" if self.tied_output else "output.weight"]

    def rope_inv_freq(self) -> tuple[np.ndarray, float]:
        return rope_inv_freq(self.rope)


# --- Reading ------------------------------------------------------------------------------------------

class _CheckedReader(gguf.GGUFReader):
    """GGUFReader that refuses reads past the end of the file and leaves tensors to us.

    gguf's `_get` slices the memory map, and numpy silently shortens slices past the end, so a
    truncated file or an absurd array length would give short arrays (or loop over empty reads)
    instead of an error. Tensor views are built by `_tensor_infos` with full validation instead of
    gguf's `_build_tensors`, which raises context-free errors (no tensor name) or trusts offsets.
    """

    def _get(self, offset, dtype, count=1, override_order=None):
        count = int(count)
        end = int(offset) + np.dtype(dtype).itemsize * count
        if offset < 0 or count < 0 or end > self.data.size:
            raise GGUFError(f"header runs past the end of the file ({self.data.size} bytes): "
                            f"needs bytes {offset}..{end}")
        return super()._get(offset, dtype, count, override_order)

    # Smallest encodings: a key/value is a length-prefixed key (8+1), a type (4) and >= 1 byte of
    # value; a tensor info is a length-prefixed name (8+1), n_dims (4), one dim (8), type (4), offset (8).
    def _build_fields(self, offs, count):
        if int(count) * 14 > self.data.size - offs:
            raise GGUFError(f"kv_count = {int(count)} cannot fit in a file of {self.data.size} bytes")
        return super()._build_fields(offs, count)

    def _get_field_parts(self, orig_offs, raw_type):
        # An array's count must fit in the bytes left, as the counts above: gguf loops over the count
        # one element at a time, so 2^48 elements would otherwise spin through the whole file.
        if int(raw_type) == GGUFValueType.ARRAY:
            itype = int(self._get(orig_offs, np.uint32)[0])
            count = int(self._get(orig_offs + 4, np.uint64)[0])
            min_size = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}.get(itype)
            if min_size is None:
                nptype = self.gguf_scalar_to_np.get(GGUFValueType(itype))
                min_size = np.dtype(nptype).itemsize if nptype is not None else 1
            if count * min_size > self.data.size - orig_offs - 12:
                raise GGUFError(f"an array at byte {orig_offs} claims {count} elements, which would run past the end "
                                f"of the file ({self.data.size} bytes)")
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_tensor_info(self, offs, count):
        if int(count) * 33 > self.data.size - offs:
            raise GGUFError(f"tensor_count = {int(count)} cannot fit in a file of {self.data.size} bytes")
        return super()._build_tensor_info(offs, count)

    def _build_tensors(self, start_offs, fields):
        self.tensor_fields = fields
        self.tensors = []


def _open(path: str) -> _CheckedReader:
    try:
        return _CheckedReader(path, "r")
    except GGUFError as e:
        raise GGUFError(f"{path}: not a valid GGUF file: {e}") from e
    except Exception as e:  # anything gguf raises on malformed input (ValueError, KeyError, IndexError, ...)
        raise GGUFError(f"{path}: not a valid GGUF file: {type(e).__name__}: {e}") from e


_INT_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}


class _Keys:
    """Typed access to the key/value section; errors name the key."""

    def __init__(self, reader: _CheckedReader, path: str):
        self.fields = reader.fields
        self.path = path

    def _field(self, key: str, required: bool):
        f = self.fields.get(key)
        if f is None and required:
            raise GGUFError(f"{self.path}: required key {key!r} is missing")
        return f

    def get_int(self, key: str, default: Optional[int] = None, *, minimum: int = 0) -> Optional[int]:
        f = self._field(key, default is None)
        if f is None:
            return default
        if len(f.types) != 1 or f.types[0] not in _INT_TYPES:
            raise GGUFError(f"{self.path}: key {key!r} must be an integer, got {[t.name for t in f.types]}")
        v = int(f.contents())
        if v < minimum:
            raise GGUFError(f"{self.path}: key {key!r} = {v}, expected >= {minimum}")
        return v

    def get_float(self, key: str, default: Optional[float] = None) -> Optional[float]:
        f = self._field(key, default is None)
        if f is None:
            return default
        if len(f.types) != 1 or f.types[0] not in _FLOAT_TYPES | _INT_TYPES:
            raise GGUFError(f"{self.path}: key {key!r} must be a number, got {[t.name for t in f.types]}")
        v = float(f.contents())
        if not math.isfinite(v):
            raise GGUFError(f"{self.path}: key {key!r} = {v} is not finite")
        return v

    def get_bool(self, key: str, default: Optional[bool] = None) -> Optional[bool]:
        f = self._field(key, default is None)
        if f is None:
            return default
        if f.types != [GGUFValueType.BOOL]:
            raise GGUFError(f"{self.path}: key {key!r} must be a bool, got {[t.name for t in f.types]}")
        return bool(f.contents())

    def get_str(self, key: str, default: Optional[str] = None) -> Optional[str]:
        f = self._field(key, default is None)
        if f is None:
            return default
        if f.types != [GGUFValueType.STRING]:
            raise GGUFError(f"{self.path}: key {key!r} must be a string, got {[t.name for t in f.types]}")
        return self._decode(key, f)

    def value(self, key: str) -> Any:
        f = self.fields[key]
        return self._decode(key, f)

    def _decode(self, key: str, f) -> Any:
        try:
            v = f.contents()
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.path}: key {key!r} holds invalid UTF-8: {e}") from e
        return v


def _tensor_infos(reader: _CheckedReader, path: str, file_size: int) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    align = int(reader.alignment)
    for fld in reader.tensor_fields:
        _nlen, name_data, n_dims, dims, raw_type, rel_off = fld.parts
        try:
            name = bytes(name_data).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{path}: a tensor name is not valid UTF-8: {bytes(name_data)[:64]!r}") from None
        if name in out:
            raise GGUFError(f"{path}: tensor {name!r} appears twice")
        nd = int(n_dims[0])
        if not 1 <= nd <= GGML_MAX_DIMS:
            raise GGUFError(f"{path}: tensor {name!r} has {nd} dimensions, expected 1..{GGML_MAX_DIMS}")
        ne = [int(d) for d in dims]            # ggml order: ne[0] is the contiguous row length
        if any(d <= 0 for d in ne):
            raise GGUFError(f"{path}: tensor {name!r} has a zero dimension {ne}")
        qtype = int(raw_type[0])
        if qtype not in SUPPORTED_QTYPES:
            raise GGUFError(f"{path}: tensor {name!r} has type {qtype_name(qtype)}, which is not supported "
                            f"(supported: {', '.join(SUPPORTED_QTYPES.values())})")
        blk, type_size = block_layout(qtype)
        if ne[0] % blk:
            raise GGUFError(f"{path}: tensor {name!r} ({SUPPORTED_QTYPES[qtype]}) has rows of {ne[0]} "
                            f"elements, not a multiple of the block size {blk}")
        n_elem = math.prod(ne)
        n_bytes = n_elem // blk * type_size
        rel = int(rel_off[0])
        if rel % align:
            raise GGUFError(f"{path}: tensor {name!r} data offset {rel} is not aligned to {align} bytes")
        start = int(reader.data_offset) + rel  # Python ints: huge fuzzed dims must not overflow numpy
        if start + n_bytes > file_size:
            raise GGUFError(f"{path}: tensor {name!r} occupies bytes {start}..{start + n_bytes}, "
                            f"past the end of the file ({file_size} bytes); truncated file?")
        data = reader.data[start:start + n_bytes].view(np.ndarray)
        out[name] = TensorInfo(name, qtype, tuple(reversed(ne)), start, n_bytes, data)

    # Overlapping ranges would let one tensor's writes or quantization alias another's: refuse.
    by_start = sorted(out.values(), key=lambda t: t.offset)
    for a, b in zip(by_start, by_start[1:]):
        if b.offset < a.offset + a.n_bytes:
            raise GGUFError(f"{path}: tensors {a.name!r} and {b.name!r} overlap in the file")
    return out


def float_values(t: TensorInfo) -> np.ndarray:
    """The values of an F32/F16/BF16 tensor as a flat float32 array (a view for F32)."""
    raw = t.data
    if t.qtype == 0:
        return raw.view(np.float32).reshape(-1)
    if t.qtype == 1:
        return raw.view(np.float16).astype(np.float32).reshape(-1)
    if t.qtype == 30:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1)
    raise GGUFError(f"tensor {t.name!r} has type {t.qtype_name}, not F32, F16 or BF16")


def _check_finite(t: TensorInfo, path: str) -> None:
    """Refuse NaN/Inf in an element-wise tensor (norm weight, bias, CoPE table, frequency factors).

    They are small (n_embd-sized, or npos_max x head_dim), so checking them costs nothing, and one
    non-finite value would otherwise turn every logit into NaN without a word. Quantized matrices are
    not scanned (that would touch the whole file; llama.cpp checks them only on request either)."""
    v = float_values(t)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argmax(bad))
        raise GGUFError(f"{path}: tensor {t.name!r} holds {int(bad.sum())} non-finite value(s) "
                        f"(element {i} is {float(v[i])}); the file is corrupt")


def _rope_config(keys: _Keys, arch: str, spec: ArchSpec, head_dim: int, n_ctx_train: int,
                 tensors: dict[str, TensorInfo], path: str) -> RopeConfig:
    rope_dim = keys.get_int(f"{arch}.rope.dimension_count", head_dim, minimum=1)
    if rope_dim % 2 or rope_dim > head_dim:
        raise GGUFError(f"{path}: {arch}.rope.dimension_count = {rope_dim} must be even and <= head_dim {head_dim}")
    base = keys.get_float(f"{arch}.rope.freq_base", 10000.0)
    if not base > 1.0:
        raise GGUFError(f"{path}: {arch}.rope.freq_base = {base}, expected > 1")

    scaling = keys.get_str(f"{arch}.rope.scaling.type", "")
    factor = keys.get_float(f"{arch}.rope.scaling.factor", 0.0)
    if not scaling:
        # Older converters wrote only rope.scale_linear.
        linear = keys.get_float(f"{arch}.rope.scale_linear", 0.0)
        scaling, factor = ("linear", linear) if linear not in (0.0, 1.0) else ("none", 1.0)
    if scaling not in ROPE_SCALING_TYPES:
        raise GGUFError(f"{path}: {arch}.rope.scaling.type = {scaling!r} is not supported "
                        f"(supported: {', '.join(ROPE_SCALING_TYPES)})")
    if scaling == "none":
        factor = 1.0
    elif not factor > 0.0:
        raise GGUFError(f"{path}: {arch}.rope.scaling.factor = {factor}, expected > 0 for {scaling} scaling")
    if factor > 1024:
        raise GGUFError(f"{path}: {arch}.rope.scaling.factor = {factor} is absurd (> 1024)")
    orig_ctx = keys.get_int(f"{arch}.rope.scaling.original_context_length", n_ctx_train)
    attn = keys.get_float(f"{arch}.rope.scaling.yarn_attn_factor",
                      keys.get_float(f"{arch}.rope.scaling.attn_factor", 1.0))

    ff = None
    if "rope_freqs.weight" in tensors:
        t = tensors["rope_freqs.weight"]
        ff = gguf.quants.dequantize(t.data, GGMLQuantizationType(t.qtype)).astype(np.float64).reshape(-1)
        if not (np.all(np.isfinite(ff)) and np.all(ff > 0)):
            raise GGUFError(f"{path}: tensor 'rope_freqs.weight' must hold finite positive factors")
    cfg = RopeConfig(
        freq_base=base, dim=rope_dim, style=spec.rope_style, scaling_type=scaling, scaling_factor=factor,
        yarn_orig_ctx=orig_ctx,
        yarn_beta_fast=keys.get_float(f"{arch}.rope.scaling.yarn_beta_fast", 32.0),
        yarn_beta_slow=keys.get_float(f"{arch}.rope.scaling.yarn_beta_slow", 1.0),
        yarn_ext_factor=keys.get_float(f"{arch}.rope.scaling.yarn_ext_factor", 1.0),
        yarn_attn_factor=attn, freq_factors=ff)
    if scaling == "yarn" and (orig_ctx <= 0 or not cfg.yarn_beta_fast > cfg.yarn_beta_slow > 0):
        raise GGUFError(f"{path}: YaRN settings invalid: original_context_length={orig_ctx}, "
                        f"beta_fast={cfg.yarn_beta_fast}, beta_slow={cfg.yarn_beta_slow}")
    try:
        rope_inv_freq(cfg)  # one last consistency check of the combination
    except ValueError as e:
        raise GGUFError(f"{path}: rope settings invalid: {e}") from e
    return cfg


def _check_tokenizer(fields: dict[str, Any], n_vocab: int, path: str) -> None:
    model = fields.get("tokenizer.ggml.model")
    if model is None:
        raise GGUFError(f"{path}: required key 'tokenizer.ggml.model' is missing")
    if model not in SUPPORTED_TOKENIZER_MODELS:
        raise GGUFError(f"{path}: tokenizer.ggml.model = {model!r} is not supported "
                        f"(supported: {', '.join(SUPPORTED_TOKENIZER_MODELS)})")
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise GGUFError(f"{path}: required key 'tokenizer.ggml.tokens' is missing or not an array")
    if len(tokens) != n_vocab:
        raise GGUFError(f"{path}: tokenizer.ggml.tokens has {len(tokens)} entries but the model has "
                        f"n_vocab = {n_vocab}")
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        v = fields.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != n_vocab):
            raise GGUFError(f"{path}: {key} must be an array of {n_vocab} entries")
    for key, v in fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            if not isinstance(v, int) or not 0 <= v < n_vocab:
                raise GGUFError(f"{path}: {key} = {v!r} is not a token id below n_vocab = {n_vocab}")


def load_model_description(path: str | os.PathLike) -> ModelDescription:
    """Open `path` (memory-mapped, read-only), validate it, and describe the model in it."""
    path = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open model file: {e}") from e
    reader = _open(path)
    keys = _Keys(reader, path)

    arch = keys.get_str("general.architecture")
    spec = ARCHITECTURES.get(arch)
    if spec is None:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    tensors = _tensor_infos(reader, path, file_size)

    # --- hyper-parameters
    n_layer = keys.get_int(f"{arch}.block_count", minimum=1)
    # Every layer has len(layer_tensors) tensors (some optional); a count beyond what the file holds is
    # corrupt, and checking it first keeps a huge block_count from looping over missing names.
    n_required = sum(not s.optional for s in spec.layer_tensors)
    if n_layer * n_required > len(tensors):
        raise GGUFError(f"{path}: {arch}.block_count = {n_layer} needs at least {n_layer * n_required} "
                        f"tensors, the file has {len(tensors)}")
    n_embd = keys.get_int(f"{arch}.embedding_length", minimum=1)
    n_head = keys.get_int(f"{arch}.attention.head_count", minimum=1)
    n_head_kv = keys.get_int(f"{arch}.attention.head_count_kv", n_head, minimum=1)
    n_ff = keys.get_int(f"{arch}.feed_forward_length", minimum=1)
    n_ctx_train = keys.get_int(f"{arch}.context_length", minimum=1)
    if n_head % n_head_kv:
        raise GGUFError(f"{path}: {arch}.attention.head_count = {n_head} is not a multiple of "
                        f"head_count_kv = {n_head_kv}")
    if f"{arch}.attention.key_length" in reader.fields:
        head_dim = keys.get_int(f"{arch}.attention.key_length", minimum=1)
    else:
        if n_embd % n_head:
            raise GGUFError(f"{path}: {arch}.embedding_length = {n_embd} is not a multiple of "
                            f"head_count = {n_head} (and no attention.key_length is given)")
        head_dim = n_embd // n_head
    value_length = keys.get_int(f"{arch}.attention.value_length", head_dim)
    if value_length != head_dim:
        raise GGUFError(f"{path}: {arch}.attention.value_length = {value_length} differs from "
                        f"key_length = {head_dim}; not supported")
    if head_dim % 2:
        raise GGUFError(f"{path}: head_dim = {head_dim} must be even for RoPE")
    rms_eps = keys.get_float(f"{arch}.attention.layer_norm_rms_epsilon")
    if not rms_eps > 0.0:
        raise GGUFError(f"{path}: {arch}.attention.layer_norm_rms_epsilon = {rms_eps}, expected > 0")

    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{path}: required tensor 'token_embd.weight' is missing")
    n_vocab_embd = tensors["token_embd.weight"].shape[0]
    n_vocab = keys.get_int(f"{arch}.vocab_size", n_vocab_embd, minimum=1)

    cope = None
    if spec.cope:
        if head_dim not in (64, 80, 96, 128):
            raise GGUFError(f"{path}: {arch}.attention.key_length = {head_dim}; the CoPE kernels support "
                            f"head dims 64, 80, 96 and 128")
        cope = CopeConfig(npos_max=keys.get_int(f"{arch}.cope.npos_max", minimum=2),
                          scale_pos_logits=keys.get_bool(f"{arch}.cope.scale_pos_logits", False),
                          per_head=keys.get_bool(f"{arch}.cope.per_head", False))
        if cope.npos_max > 1 << 20:
            raise GGUFError(f"{path}: {arch}.cope.npos_max = {cope.npos_max} is absurd (> 2^20)")
    rope_dim = keys.get_int(f"{arch}.rope.dimension_count", 0 if spec.cope else head_dim,
                            minimum=0 if spec.cope else 1)
    hp = HParams(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, rope_dim,
                 npos_max=cope.npos_max if cope else 0, cope_per_head=cope.per_head if cope else False)

    # --- tensors against the architecture
    expected: dict[str, TensorSpec] = {}
    for s in spec.global_tensors:
        expected[s.name] = s
    for i in range(n_layer):
        for s in spec.layer_tensors:
            expected[s.name.format(i=i)] = s
    for name, s in expected.items():
        t = tensors.get(name)
        if t is None:
            if s.optional:
                continue
            raise GGUFError(f"{path}: required tensor {name!r} is missing")
        want = tuple(s.shape(hp))
        if t.shape != want:
            raise GGUFError(f"{path}: tensor {name!r} has shape {t.shape}, expected {want} for this {arch} model")
        if s.float_only:
            if t.qtype not in FLOAT_QTYPES:
                raise GGUFError(f"{path}: tensor {name!r} has type {t.qtype_name}; element-wise tensors must "
                                f"be F32, F16 or BF16")
            _check_finite(t, path)
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise GGUFError(f"{path}: unexpected tensor {unknown[0]!r} for architecture {arch}"
                        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))

    if spec.cope and rope_dim == 0:
        rope = RopeConfig(freq_base=keys.get_float(f"{arch}.rope.freq_base", 10000.0), dim=0, style=spec.rope_style)
    else:
        rope = _rope_config(keys, arch, spec, head_dim, n_ctx_train, tensors, path)

    fields = {k: keys.value(k) for k in reader.fields if k.startswith(("tokenizer.", "general."))}
    _check_tokenizer(fields, n_vocab, path)

    return ModelDescription(
        path=path, file_size=file_size, arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, n_ff=n_ff, n_vocab=n_vocab, rms_eps=rms_eps,
        n_ctx_train=n_ctx_train, rope=rope, tensors=tensors, tied_output="output.weight" not in tensors,
        has_qkv_bias="blk.0.attn_q.bias" in tensors, fields=fields, alignment=int(reader.alignment), cope=cope,
        data_offset=int(reader.data_offset))


# --- Summary for `selfext info` ------------------------------------------------------------------------

def selfextend_max_context(n_ctx_train: int, group: int, window: int) -> int:
    """Longest context SelfExtend keeps inside the trained positions.

    The largest query position, floor(i/G) + W - floor(W/G), must stay below L = n_ctx_train, so
    i < G * (L - W + floor(W/G)).
    """
    if group < 1 or window < 1 or window >= n_ctx_train:
        raise ArgumentError(f"need G >= 1 and 1 <= W < n_ctx_train ({n_ctx_train}), got G={group}, W={window}")
    return group * (n_ctx_train - window + window // group)


def describe(desc: ModelDescription, window: int = 1024,
             groups: tuple[int, ...] = (2, 4, 8, 16, 32, 64)) -> dict[str, Any]:
    """Plain-data summary of a loaded model (what `selfext info` prints)."""
    window = max(1, min(window, desc.n_ctx_train // 2))  # a wider window leaves little to extend
    quant = Counter(t.qtype_name for t in desc.tensors.values())
    return {
        "path": desc.path,
        "name": desc.fields.get("general.name", ""),
        "arch": desc.arch,
        "file_size": desc.file_size,
        "n_params": sum(t.n_elements for t in desc.tensors.values()),
        "quant_types": dict(quant.most_common()),
        "n_layer": desc.n_layer, "n_embd": desc.n_embd, "n_head": desc.n_head, "n_head_kv": desc.n_head_kv,
        "head_dim": desc.head_dim, "n_ff": desc.n_ff, "n_vocab": desc.n_vocab,
        "tied_output": desc.tied_output,
        "n_ctx_train": desc.n_ctx_train,
        "rope": {"freq_base": desc.rope.freq_base, "dim": desc.rope.dim, "style": desc.rope.style,
                 "scaling": desc.rope.scaling_type, "factor": desc.rope.scaling_factor,
                 "freq_factors": desc.rope.freq_factors is not None},
        "selfextend_window": window,
        "selfextend_max_ctx": {g: selfextend_max_context(desc.n_ctx_train, g, window) for g in groups},
    }
