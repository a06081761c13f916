"""Export a trained `Decoder` to GGUF (docs/cope_gguf.md), and read such a file back into torch.

CoPE models get general.architecture "selfext-cope" (runtimes that do not know it refuse the file).
RoPE models are written as plain "llama" files, with the Q/K rows permuted exactly as llama.cpp's
convert_hf_to_gguf.py `LlamaModel.permute` does: our torch model rotates HF-style half-split pairs
(i, i + D/2), GGUF llama rotates adjacent pairs (2i, 2i + 1), so row i of each head must land at 2i
and row i + D/2 at 2i + 1. Any llama runtime (ours included) then runs the twin unchanged.

    python -m selfext_native.train.export RUN_DIR --outtype f32 --out model.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import require_torch
from .tasks import BOS, EOS, MERGE_TOKEN, SPECIALS, Task, get_task

COPE_ARCH = "selfext-cope"
OUTTYPES = ("f32", "f16", "q8_0")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split rows -> GGUF llama adjacent-pair rows, per head (llama.cpp's `permute`).
    w: (n_head * D, n_in)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(torch_name: str) -> str:
    """Torch parameter name -> GGUF tensor name."""
    fixed = {"tok_emb.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "output.weight": "output.weight"}
    if torch_name in fixed:
        return fixed[torch_name]
    parts = torch_name.split(".")  # blocks.N.<module path>
    if parts[0] != "blocks":
        raise KeyError(torch_name)
    layer, rest = parts[1], ".".join(parts[2:])
    short = {"attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
             "attn.wq.weight": "attn_q.weight", "attn.wk.weight": "attn_k.weight",
             "attn.wv.weight": "attn_v.weight", "attn.wo.weight": "attn_output.weight",
             "ffn.w_gate.weight": "ffn_gate.weight", "ffn.w_up.weight": "ffn_up.weight",
             "ffn.w_down.weight": "ffn_down.weight", "attn.cope_pos": "cope_pos.weight"}[rest]
    return f"blk.{layer}.{short}"


def gguf_tensors(model) -> dict:
    """GGUF name -> float32 numpy array (row-major, GGUF layout: Q/K permuted for the llama twin)."""
    cfg = model.cfg
    out = {}
    for name, p in model.state_dict().items():
        w = p.detach().cpu().numpy().astype(np.float32)
        g = _gguf_name(name)
        if cfg.pos == "rope" and g.endswith("attn_q.weight"):
            w = permute_qk(w, cfg.n_head)
        elif cfg.pos == "rope" and g.endswith("attn_k.weight"):
            w = permute_qk(w, cfg.n_head_kv)
        out[g] = np.ascontiguousarray(w)
    return out


def _is_matrix(name: str, w: np.ndarray) -> bool:
    """Tensors the exporter may store as F16/Q8_0: 2-D weight matrices; norms and cope_pos stay F32."""
    return w.ndim == 2 and "cope_pos" not in name


def export_gguf(model, task: Task, path, outtype: str = "f32") -> Path:
    """Write `model` (trained on `task`) to `path` in the convention of docs/cope_gguf.md."""
    import gguf
    from gguf.constants import GGMLQuantizationType as QT

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype = {outtype!r}, expected one of {OUTTYPES}")
    cfg = model.cfg
    if task.n_vocab != cfg.n_vocab:
        raise ValueError(f"task {task.name!r} has {task.n_vocab} tokens, the model {cfg.n_vocab}")
    arch = COPE_ARCH if cfg.pos == "cope" else "llama"
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"{task.name}-{cfg.pos}")
    w.add_file_type({"f32": 0, "f16": 1, "q8_0": 7}[outtype])   # llama.cpp's LlamaFileType
    w.add_uint32(f"{arch}.block_count", cfg.n_layer)
    w.add_uint32(f"{arch}.context_length", cfg.context_length)
    w.add_uint32(f"{arch}.embedding_length", cfg.n_embd)
    w.add_uint32(f"{arch}.feed_forward_length", cfg.n_ff)
    w.add_uint32(f"{arch}.attention.head_count", cfg.n_head)
    w.add_uint32(f"{arch}.attention.head_count_kv", cfg.n_head_kv)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.norm_eps)
    w.add_uint32(f"{arch}.attention.key_length", cfg.head_dim)
    w.add_uint32(f"{arch}.attention.value_length", cfg.head_dim)
    w.add_uint32(f"{arch}.vocab_size", cfg.n_vocab)
    w.add_uint32(f"{arch}.rope.dimension_count", cfg.rope_dim)
    w.add_float32(f"{arch}.rope.freq_base", cfg.rope_base)
    if cfg.pos == "cope":
        w.add_uint32(f"{arch}.cope.npos_max", cfg.npos_max)
        w.add_bool(f"{arch}.cope.scale_pos_logits", cfg.scale_pos_logits)
        w.add_bool(f"{arch}.cope.per_head", cfg.cope_per_head)

    vocab = task.vocab
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([TOKEN_CONTROL if t in (BOS, EOS) else TOKEN_UNUSED if t == MERGE_TOKEN
                       else TOKEN_NORMAL for t in vocab])
    w.add_token_merges([f"{BOS} {EOS}"])  # see tasks.MERGE_TOKEN: an empty list cannot be written
    w.add_bos_token_id(vocab.index(BOS))
    w.add_eos_token_id(vocab.index(EOS))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    for name, arr in gguf_tensors(model).items():
        if outtype == "f32" or not _is_matrix(name, arr):
            w.add_tensor(name, arr)
        elif outtype == "f16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            if arr.shape[-1] % 32:
                raise ValueError(f"{name}: rows of {arr.shape[-1]} values cannot be split into Q8_0 blocks of 32")
            w.add_tensor(name, gguf.quants.quantize(arr, QT.Q8_0), raw_dtype=QT.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def read_gguf(path) -> tuple[dict, dict]:
    """(keys, tensors) of a file written by `export_gguf`: scalar/str keys as Python values (arrays
    skipped), tensors dequantized to float32 in GGUF layout (numpy row-major shapes)."""
    import gguf
    from gguf.constants import GGUFValueType as VT

    r = gguf.GGUFReader(str(path))
    keys = {}
    for k, f in r.fields.items():
        if f.types and f.types[0] == VT.STRING:
            keys[k] = bytes(f.parts[f.data[0]]).decode()
        elif f.types and f.types[0] != VT.ARRAY:
            keys[k] = f.parts[f.data[0]].tolist()[0]
    tensors = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    return keys, tensors


def load_gguf(path):
    """A torch `Decoder` with the weights of a file written by `export_gguf` (dequantized; the llama
    twin's Q/K rows un-permuted), and the task name. The reference for runtime-vs-torch checks."""
    torch = require_torch()
    from .model import Decoder, ModelConfig

    keys, tensors = read_gguf(path)
    arch = keys["general.architecture"]
    if arch not in (COPE_ARCH, "llama"):
        raise ValueError(f"{path}: general.architecture = {arch!r}, expected {COPE_ARCH!r} or 'llama'")
    a = arch + "."
    cope = arch == COPE_ARCH
    cfg = ModelConfig(
        n_vocab=keys[a + "vocab_size"], n_embd=keys[a + "embedding_length"], n_layer=keys[a + "block_count"],
        n_head=keys[a + "attention.head_count"], n_head_kv=keys[a + "attention.head_count_kv"],
        n_ff=keys[a + "feed_forward_length"], norm_eps=keys[a + "attention.layer_norm_rms_epsilon"],
        pos="cope" if cope else "rope", rope_dim=keys[a + "rope.dimension_count"],
        rope_base=keys[a + "rope.freq_base"], npos_max=keys.get(a + "cope.npos_max", 64),
        scale_pos_logits=bool(keys.get(a + "cope.scale_pos_logits", False)),
        cope_per_head=bool(keys.get(a + "cope.per_head", False)), tied="output.weight" not in tensors,
        context_length=keys[a + "context_length"])
    model = Decoder(cfg)
    state = {}
    for name in model.state_dict():
        arr = tensors[_gguf_name(name)]
        if not cope and name.endswith("attn.wq.weight"):
            arr = unpermute_qk(arr, cfg.n_head)
        elif not cope and name.endswith("attn.wk.weight"):
            arr = unpermute_qk(arr, cfg.n_head_kv)
        state[name] = torch.from_numpy(np.ascontiguousarray(arr))
    model.load_state_dict(state)
    model.eval()
    return model, keys["general.name"].rsplit("-", 1)[0]


def load_run(run_dir):
    """(model, task) saved by the trainer in `run_dir`/model.pt."""
    torch = require_torch()
    from .model import Decoder, ModelConfig

    ckpt = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)
    model = Decoder(ModelConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, get_task(ckpt["task"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selfext_native.train.export",
                                description="Export a trained run directory to GGUF (docs/cope_gguf.md).")
    p.add_argument("run_dir")
    p.add_argument("--outtype", choices=OUTTYPES, default="f32")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    model, task = load_run(args.run_dir)
    print(export_gguf(model, task, args.out, args.outtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
