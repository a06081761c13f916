"""The user-facing API: `LLM` loads a GGUF model and generates text, with SelfExtend past the trained
context. Python owns files, tokens and sampling; each prefill chunk and decode step is one native call.

    from selfext_native import LLM
    llm = LLM(n_ctx=16384, self_extend="auto")       # the default model, SelfExtend chosen for 16k
    print(llm.generate("The capital of France is", max_tokens=16, temperature=0))
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from . import _native
from . import selfextend as _se
from .chat_template import ChatTemplate
from .default_model import default_model_path
from .errors import ArgumentError, ContextOverflowError, GGUFError, OutOfMemoryError
from .memory import available_bytes
from .gguf_model import ModelDescription, load_model_description
from .rope import ROPE_SCALING_TYPES, RopeConfig, rope_inv_freq
from .sampling import Sampler, SamplingParams, StopMatcher
from .tokenizer import Tokenizer

SelfExtendArg = Union[None, str, tuple]

_F32, _F16, _BF16 = 0, 1, 30


@dataclass
class Timings:
    """Wall-clock figures of the last generation, like llama.cpp's summary."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    cached_tokens: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    finish_reason: str = ""

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0


def _float_vector(t) -> np.ndarray:
    """A norm or bias tensor as contiguous float32 (files store them as F32, sometimes F16/BF16)."""
    raw = t.data
    if t.qtype == _F32:
        return np.ascontiguousarray(raw.view(np.float32).reshape(-1))
    if t.qtype == _F16:
        return raw.view(np.float16).astype(np.float32).reshape(-1)
    if t.qtype == _BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1)
    raise GGUFError(f"tensor {t.name!r} has type {t.qtype_name}; element-wise tensors must be F32, F16 or BF16")


def _matrix(t) -> tuple:
    rows, cols = t.shape
    return (t.data, int(t.qtype), int(rows), int(cols))


def _rope_override(desc: ModelDescription, scaling: Optional[str], scale: Optional[float],
                   freq_base: Optional[float]) -> RopeConfig:
    """The model's RopeConfig with llama.cpp-style overrides applied (see LLM's docstring)."""
    import math

    cfg = desc.rope
    if scaling is None and scale is None and freq_base is None:
        return cfg  # nothing to override (also for a CoPE model without RoPE, whose dim is 0)
    if cfg.dim == 0:
        raise ArgumentError("this model has no RoPE (contextual position encoding only): "
                            "rope_scaling, rope_scale and rope_freq_base do not apply")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise ArgumentError(f"rope_scaling must be one of {ROPE_SCALING_TYPES}, got {scaling!r}")
    for name, v, low in (("rope_scale", scale, 0.0), ("rope_freq_base", freq_base, 1.0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or not v > low):
            raise ArgumentError(f"{name} must be a finite number > {low:g}, got {v!r}")
    changes: dict = {}
    if freq_base is not None:
        changes["freq_base"] = float(freq_base)
    kind = scaling if scaling is not None else cfg.scaling_type
    if scale is not None and scaling is None and kind == "none":
        kind = "linear"  # llama.cpp: --rope-scale alone is linear interpolation (freq_scale = 1/F)
    if kind == "none":
        changes.update(scaling_type="none", scaling_factor=1.0)
    elif scaling is not None or scale is not None:
        factor = float(scale) if scale is not None else cfg.scaling_factor
        if kind != "none" and scale is None and cfg.scaling_type == "none":
            raise ArgumentError(f"rope_scaling={kind!r} needs rope_scale (the file has no scaling factor)")
        changes.update(scaling_type=kind, scaling_factor=factor,
                       yarn_orig_ctx=cfg.yarn_orig_ctx or desc.n_ctx_train)
    if not changes:
        return cfg
    out = replace(cfg, **changes)
    try:
        rope_inv_freq(out)
    except ValueError as e:
        raise ArgumentError(f"RoPE override invalid: {e}") from e
    return out


class LLM:
    """A GGUF language model, ready to generate.

    model_path: a .gguf file (llama or qwen2 architecture); None = the default model (SmolLM2-135M).
    n_ctx: the KV-cache length in tokens; None = the model's trained context (or SelfExtend's reach).
    device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when usable and the CUDA kernels take the model's
        head size, 64/80/96/128; the CPU otherwise). ``llm.device`` says which was chosen.
    n_threads: CPU threads (default: the CPUs this process may use).
    self_extend: None (off), "auto" (G and W chosen from n_ctx and the trained context, see
        selfext_native.selfextend), or (group, window).
    vocab_only: load only the tokenizer (llama-cpp-python's convention).
    kv_type: "f16" (default), "f32" (CPU only) or "bf16" (CUDA only) cache; n_batch: tokens per prefill chunk (bounds scratch memory).
    rope_scaling, rope_scale, rope_freq_base: override the file's RoPE settings, as llama.cpp's
        --rope-scaling / --rope-scale / --rope-freq-base do (the alternatives to SelfExtend):
        rope_scaling "none", "linear" or "yarn" (YaRN measured against the trained context);
        rope_scale F divides positions by F (alone, it keeps the file's scaling type, linear if none);
        rope_freq_base B replaces the base (NTK-aware scaling: B = base * F**(dim/(dim-2))).
    """

    def __init__(self, model_path: Optional[str] = None, *, n_ctx: Optional[int] = None, device: str = "auto",
                 n_threads: Optional[int] = None, self_extend: SelfExtendArg = None, vocab_only: bool = False,
                 kv_type: str = "f16", n_batch: int = 512, rope_scaling: Optional[str] = None,
                 rope_scale: Optional[float] = None, rope_freq_base: Optional[float] = None):
        self.model_path = os.fspath(model_path) if model_path is not None else default_model_path()
        cuda_index = 0
        if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
            device, cuda_index = "cuda", int(device[5:])
        if device not in ("auto", "cpu", "cuda"):
            raise ArgumentError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if n_threads is not None and (not isinstance(n_threads, int) or isinstance(n_threads, bool) or n_threads < 1):
            raise ArgumentError(f"n_threads must be a positive integer, got {n_threads!r}")
        if not isinstance(n_batch, int) or isinstance(n_batch, bool) or n_batch < 1:
            raise ArgumentError(f"n_batch must be a positive integer, got {n_batch!r}")
        if kv_type not in ("f16", "f32", "bf16"):
            raise ArgumentError(f"kv_type must be 'f16', 'f32' (CPU) or 'bf16' (CUDA), got {kv_type!r}")
        self._lock = threading.Lock()
        self._cache_tokens: list[int] = []
        self.last_timings = Timings()
        self.vocab_only = vocab_only
        if vocab_only:
            self.tokenizer = Tokenizer.from_gguf(self.model_path)
            self.desc: Optional[ModelDescription] = None
            self._model = None
            self.device = "cpu"
            self.n_ctx = 0
            self.group, self.window = 1, 1
            self._template = ChatTemplate.from_tokenizer(self.tokenizer)
            return

        desc = load_model_description(self.model_path)
        _rope_override(desc, rope_scaling, rope_scale, rope_freq_base)  # bad overrides fail before any work
        self.desc = desc
        self.tokenizer = Tokenizer.from_gguf_fields(desc.fields)
        if self.tokenizer.n_vocab != desc.n_vocab:
            raise GGUFError(f"{self.model_path}: the vocabulary has {self.tokenizer.n_vocab} tokens but "
                            f"token_embd has {desc.n_vocab} rows")
        self._template = ChatTemplate.from_tokenizer(self.tokenizer)
        L = desc.n_ctx_train

        # --- context and SelfExtend
        if self_extend == "auto":
            n_ctx = L if n_ctx is None else n_ctx
            self._check_n_ctx(n_ctx)
            group, window = _se.auto(L, n_ctx)
        elif self_extend is None:
            n_ctx = L if n_ctx is None else n_ctx
            self._check_n_ctx(n_ctx)
            group, window = 1, 1
        elif isinstance(self_extend, (tuple, list)) and len(self_extend) == 2:
            g, w = self_extend
            n_ctx = _se.max_context(L, g, w) if n_ctx is None and isinstance(g, int) and isinstance(w, int) and g > 1 and 0 < w < L else (L if n_ctx is None else n_ctx)
            self._check_n_ctx(n_ctx)
            group, window = _se.validate(g, w, L, n_ctx)
        else:
            raise ArgumentError(f"self_extend must be None, 'auto' or (group, window), got {self_extend!r}")
        self.n_ctx, self.group, self.window = int(n_ctx), int(group), int(window)

        # --- device
        cuda = _native.cuda_report()
        if device == "cuda" and not cuda["available"]:
            raise ArgumentError(f"device='cuda' but CUDA is not available: {cuda['reason']}")
        cuda_head_dims = (64, 80, 96, 128)  # what the CUDA attention kernels are instantiated for
        if device == "cuda" and desc.head_dim not in cuda_head_dims:
            raise ArgumentError(f"device='cuda': head size {desc.head_dim} is not supported by the CUDA attention "
                                f"kernels ({', '.join(map(str, cuda_head_dims))}); use device='cpu'")
        if device == "auto":
            device = "cuda" if cuda["available"] and desc.head_dim in cuda_head_dims and kv_type != "f32" else "cpu"
        if device == "cuda" and kv_type == "f32":
            raise ArgumentError("kv_type='f32' is CPU only; on CUDA use 'f16' or 'bf16'")
        if device == "cpu" and kv_type == "bf16":
            raise ArgumentError("kv_type='bf16' is CUDA only; on the CPU use 'f16' or 'f32'")
        self.device = device if device == "cpu" else f"cuda:{cuda_index}"

        self.rope = _rope_override(desc, rope_scaling, rope_scale, rope_freq_base)
        inv_freq, mscale = rope_inv_freq(self.rope)
        config = dict(
            n_layer=desc.n_layer, n_embd=desc.n_embd, n_head=desc.n_head, n_head_kv=desc.n_head_kv,
            head_dim=desc.head_dim, n_ff=desc.n_ff, n_vocab=desc.n_vocab, rms_eps=float(desc.rms_eps),
            rope_style=desc.rope.style, rope_dim=int(desc.rope.dim), inv_freq=[float(x) for x in inv_freq],
            mscale=float(mscale), n_ctx=self.n_ctx, group=self.group,
            window=self.window if self.group > 1 else self.n_ctx, kv_type=kv_type,
            n_batch=min(n_batch, self.n_ctx), n_threads=n_threads or _native.default_thread_count(),
            device=device, cuda_device=cuda_index)
        if desc.cope is not None:
            # Contextual position encoding: positions come from the content; SelfExtend does not apply.
            if self.group > 1:
                raise ArgumentError("self_extend does not apply to a model with contextual position encoding")
            config.update(cope_npos_max=desc.cope.npos_max, cope_per_head=desc.cope.per_head,
                          cope_scale_pos_logits=desc.cope.scale_pos_logits)
        tensors: dict[str, object] = {}
        for name, t in desc.tensors.items():
            key = name[:-len(".weight")] if name.endswith(".weight") else name
            if len(t.shape) == 2 and not name.endswith("cope_pos.weight"):
                tensors[key] = _matrix(t)
            else:
                tensors[key] = _float_vector(t)
        if device == "cpu":
            self._check_memory(config, desc)  # on CUDA the native constructor checks the device's free memory
        self._model = _native.Model(config, tensors)
        self.n_threads = config["n_threads"]
        self._n_batch = config["n_batch"]

    @staticmethod
    def _check_memory(config: dict, desc: ModelDescription) -> None:
        """Refuse a plan that cannot fit, before allocating: the KV cache and scratch are allocated;
        the weights stay in the memory-mapped file (the page cache can evict them, at a speed cost)."""
        need = int(_native.Model.plan_bytes(config))
        avail, where = available_bytes()
        if avail is not None and need > avail:
            raise OutOfMemoryError(
                f"n_ctx={config['n_ctx']} needs {need / 2**20:.0f} MiB for the KV cache and scratch "
                f"({config['kv_type']} cache) but only {avail / 2**20:.0f} MiB are available ({where}); "
                f"the weights map another {desc.file_size / 2**20:.0f} MiB. Lower n_ctx or n_batch.")

    def _check_n_ctx(self, n_ctx) -> None:
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1:
            raise ArgumentError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if n_ctx > 1 << 22:
            raise ArgumentError(f"n_ctx={n_ctx} is beyond the 4M tokens this build supports")

    # --- tokens -------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: Optional[bool] = None, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=special)

    def detokenize(self, ids: Sequence[int], special: bool = True) -> str:
        return self.tokenizer.decode(ids, special=special)

    @property
    def n_past(self) -> int:
        return 0 if self._model is None else self._model.n_past

    def reset(self) -> None:
        """Forget the KV cache."""
        self._require_model()
        self._model.truncate(0)
        self._cache_tokens = []

    # --- forward ------------------------------------------------------------------------------------

    def _require_model(self) -> None:
        if self._model is None:
            raise ArgumentError("this LLM was loaded with vocab_only=True: it has no weights to run")

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 logits (len(tokens), n_vocab) of a fresh run over `tokens` (the cache is reset)."""
        self._require_model()
        ids = self._ids(tokens)
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens exceed n_ctx={self.n_ctx}")
        with self._busy():
            self._model.truncate(0)
            self._cache_tokens = []
            return self._run(ids, True)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append `tokens` to the cache (after what it holds) and return their logits (last or all)."""
        self._require_model()
        ids = self._ids(tokens)
        if self.n_past + len(ids) > self.n_ctx:
            raise ContextOverflowError(f"the cache holds {self.n_past} tokens; {len(ids)} more exceed n_ctx={self.n_ctx}")
        with self._busy():
            return self._run(ids, all_logits)

    # Calls of at least this many tokens run in a worker thread so that Ctrl-C can reach them: Python
    # runs signal handlers only in the main thread between bytecodes, never while native code holds it.
    _INTERRUPTIBLE_TOKENS = 32

    def _run(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        """One native forward over `ids` (int32) appended to the cache; keeps `_cache_tokens` equal to
        what the cache holds, also when the call fails or is interrupted (the cache then keeps every
        complete chunk; the native side never publishes a partial one)."""
        start = self._model.n_past
        try:
            if len(ids) >= self._INTERRUPTIBLE_TOKENS and threading.current_thread() is threading.main_thread():
                out = self._run_interruptible(ids, all_logits)
            else:
                out = self._model.forward(ids, all_logits)
        except BaseException:
            done = self._model.n_past - start
            self._cache_tokens = self._cache_tokens[:start] + [int(t) for t in ids[:done]]
            raise
        self._cache_tokens.extend(int(t) for t in ids)
        return out

    def _run_interruptible(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        result: dict = {}
        done = threading.Event()  # not Thread.join: an interrupted join can report a live thread as ended

        def work():
            try:
                result["out"] = self._model.forward(ids, all_logits)
            except BaseException as e:  # handed to the main thread below
                result["error"] = e
            finally:
                done.set()

        threading.Thread(target=work, name="selfext-forward", daemon=True).start()
        try:
            while not done.wait(0.05):
                pass
        except KeyboardInterrupt:
            # Ask native code to stop between layers, wait until it has, then let the interrupt go on.
            self._model.cancel()
            while not done.wait(0.05):
                pass
            raise
        if "error" in result:
            raise result["error"]
        return result["out"]

    def _ids(self, tokens: Sequence[int]) -> np.ndarray:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ArgumentError("tokens must be a non-empty 1-D sequence of integer token ids")
        if ids.min() < 0 or ids.max() >= self.tokenizer.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= self.tokenizer.n_vocab)][0])
            raise ArgumentError(f"token id {bad} is outside the vocabulary [0, {self.tokenizer.n_vocab})")
        return np.ascontiguousarray(ids, dtype=np.int32)

    def _busy(self):
        lock = self._lock

        class _Guard:
            def __enter__(self_inner):
                if not lock.acquire(blocking=False):
                    raise ArgumentError("this LLM is in use by another thread; use one LLM object per thread")

            def __exit__(self_inner, *exc):
                lock.release()

        return _Guard()

    def _prefill(self, ids: list[int], progress=None) -> np.ndarray:
        """Make the cache hold exactly `ids`, reusing the longest cached prefix; logits of the last.

        Runs one native call per chunk of n_batch tokens, so a Ctrl-C lands between chunks and leaves
        the cache holding every complete chunk. progress(done, total) is called after each chunk."""
        common = 0
        for a, b in zip(self._cache_tokens, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token runs, to produce logits
        self._model.truncate(common)
        self._cache_tokens = self._cache_tokens[:common]
        self.last_timings.cached_tokens = common
        step = self._n_batch
        out = None
        for start in range(common, len(ids), step):
            chunk = ids[start:start + step]
            out = self._run(np.asarray(chunk, dtype=np.int32), False)
            if progress is not None:
                progress(start + len(chunk) - common, len(ids) - common)
        return out[0]

    # --- generation ---------------------------------------------------------------------------------

    def stream(self, prompt: Union[str, Sequence[int]], max_tokens: int = 256, *, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
               repeat_last_n: int = 64, seed: Optional[int] = None, stop: Sequence[str] = (),
               add_bos: Optional[bool] = None, progress=None, ignore_eos: bool = False) -> Iterator[str]:
        """Yield the generated text piece by piece (complete UTF-8 characters only)."""
        import time

        self._require_model()
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed,
                                max_tokens=max_tokens, stop=list(stop))
        ids = self.tokenize(prompt, add_bos=add_bos) if isinstance(prompt, str) else list(map(int, self._ids(prompt)))
        if not ids:
            raise ArgumentError("the prompt is empty (and the model adds no BOS token)")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but n_ctx is {self.n_ctx}; raise n_ctx"
                + ("" if self.group > 1 else " (with self_extend='auto' to go past the trained context)"))
        sampler = Sampler(params)
        stops = StopMatcher(list(stop))
        decoder = self.tokenizer.stream_decoder()
        t = self.last_timings = Timings()
        with self._busy():
            t0 = time.perf_counter()
            logits = self._prefill(ids, progress)
            t.prompt_tokens = len(ids) - t.cached_tokens
            t.prompt_seconds = time.perf_counter() - t0
            history = list(ids)
            t1 = time.perf_counter()
            reason = "length"
            for _ in range(max_tokens):
                tok = int(sampler.sample(logits, history))
                if self.tokenizer.is_eog(tok) and not ignore_eos:
                    reason = "stop"
                    break
                history.append(tok)
                t.generated_tokens += 1
                text = stops.push(decoder.feed(tok))
                if text:
                    yield text
                if stops.stopped:
                    reason = "stop"
                    break
                if self.n_past >= self.n_ctx:
                    reason = "context"
                    break
                logits = self._run(np.asarray([tok], dtype=np.int32), False)[0]
            if not stops.stopped:
                tail = stops.push(decoder.flush()) + stops.flush()
                if tail:
                    yield tail
            t.generate_seconds = time.perf_counter() - t1
            t.finish_reason = reason

    def generate(self, prompt: Union[str, Sequence[int]], max_tokens: int = 256, **kwargs) -> str:
        """The generated text (see `stream` for the sampling arguments)."""
        return "".join(self.stream(prompt, max_tokens, **kwargs))

    def chat(self, messages: Sequence[dict], max_tokens: int = 256, **kwargs) -> str:
        """Reply to a conversation (list of {"role", "content"}), rendered with the file's chat template.
        A continuing conversation reuses its cached prefix: each turn prefills only its new tokens."""
        prompt = self._template.render(messages, add_generation_prompt=True)
        return self.generate(self.tokenize(prompt, add_bos=False if self._template_has_bos(prompt) else None),
                             max_tokens, **kwargs)

    def _template_has_bos(self, rendered: str) -> bool:
        bos = self.tokenizer.bos_id
        return bos is not None and rendered.startswith(self.tokenizer.token_text(bos))
