"""A small llama-like decoder in torch, with contextual position encoding (CoPE) or RoPE.

Blocks: pre-norm RMSNorm -> attention -> residual, RMSNorm -> SwiGLU FFN -> residual; final RMSNorm and
an output head (tied to the token embedding unless `tied=False`). No absolute position embedding: the
only position information is CoPE's or RoPE's. The parameter names and layouts are what
`export.py` maps one to one onto the GGUF convention of docs/cope_gguf.md.

CoPE attention follows the paper's listing (arXiv 2405.18719, section 3 and its code listing), which
materializes T x T gates; that is fine at the lengths trained here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from . import require_torch

torch = require_torch()
nn = torch.nn
F = torch.nn.functional

SUPPORTED_HEAD_DIMS = (64, 80, 96, 128)  # the fused CoPE kernels' template instances


@dataclass
class ModelConfig:
    n_vocab: int
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 2
    n_head_kv: Optional[int] = None    # None: = n_head
    n_ff: int = 256
    norm_eps: float = 1e-5
    pos: str = "cope"                  # "cope" or "rope"
    rope_dim: int = 0                  # cope: 0 (no RoPE) or RoPE on q and k before the gates
    rope_base: float = 10000.0
    npos_max: int = 64
    scale_pos_logits: bool = False     # False: the paper's listing (z added unscaled)
    cope_per_head: bool = False
    tied: bool = True
    context_length: int = 128          # the trained sequence length (metadata)

    def __post_init__(self):
        if self.n_head_kv is None:
            self.n_head_kv = self.n_head
        if self.pos not in ("cope", "rope"):
            raise ValueError(f"pos = {self.pos!r}, expected 'cope' or 'rope'")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd = {self.n_embd} is not a multiple of n_head = {self.n_head}")
        if self.n_head % self.n_head_kv:
            raise ValueError(f"n_head = {self.n_head} is not a multiple of n_head_kv = {self.n_head_kv}")
        if self.head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"head_dim = n_embd / n_head = {self.head_dim}; the fused kernels support "
                             f"{SUPPORTED_HEAD_DIMS}")
        if self.pos == "rope" and self.rope_dim == 0:
            self.rope_dim = self.head_dim
        if self.rope_dim % 2 or not 0 <= self.rope_dim <= self.head_dim:
            raise ValueError(f"rope_dim = {self.rope_dim} must be even and in [0, head_dim]")
        if self.pos == "cope" and self.npos_max < 2:
            raise ValueError(f"npos_max = {self.npos_max}, expected >= 2")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_neox(x, base: float, rope_dim: int):
    """RoPE on the first `rope_dim` features of x (B, H, T, D), HF's half-split ("neox") pairs
    (i, i + rope_dim/2), frequency base^(-2i/rope_dim), positions 0..T-1."""
    T = x.shape[-2]
    half = rope_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64) * 2.0 / rope_dim)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]   # (T, half), double angles
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rope_dim], x[..., rope_dim:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def cope_logits(q, s, pos_emb, npos_max: int):
    """Position logits z (B, H, Tq, Tk) of CoPE, the paper's listing.

    q: (B, H, Tq, D); s: (B, H, Tq, Tk) scaled content logits with -inf where masked (gate 0);
    pos_emb: (npos_max, D) shared by the heads, or (H, npos_max, D)."""
    gates = torch.sigmoid(s)
    pos = gates.flip(-1).cumsum(-1).flip(-1)               # p_ij = sum_{t=j..i} g_it
    pos = pos.clamp(max=npos_max - 1)
    pos_ceil, pos_floor = pos.ceil().long(), pos.floor().long()
    if pos_emb.dim() == 2:
        logits_int = q @ pos_emb.t()                       # (B, H, Tq, npos_max): <q_i, e[p]>
    else:
        logits_int = q @ pos_emb.transpose(-1, -2).unsqueeze(0)
    w = pos - pos_floor
    return logits_int.gather(-1, pos_ceil) * w + logits_int.gather(-1, pos_floor) * (1 - w)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.n_embd, cfg.n_head * hd, bias=False)
        self.wk = nn.Linear(cfg.n_embd, cfg.n_head_kv * hd, bias=False)
        self.wv = nn.Linear(cfg.n_embd, cfg.n_head_kv * hd, bias=False)
        self.wo = nn.Linear(cfg.n_head * hd, cfg.n_embd, bias=False)
        if cfg.pos == "cope":
            shape = (cfg.n_head, cfg.npos_max, hd) if cfg.cope_per_head else (cfg.npos_max, hd)
            self.cope_pos = nn.Parameter(torch.zeros(shape))   # the paper initializes e to zero

    def forward(self, x):
        cfg = self.cfg
        B, T, _ = x.shape
        hd = cfg.head_dim
        q = self.wq(x).view(B, T, cfg.n_head, hd).transpose(1, 2)       # (B, H, T, D)
        k = self.wk(x).view(B, T, cfg.n_head_kv, hd).transpose(1, 2)    # (B, Hkv, T, D)
        v = self.wv(x).view(B, T, cfg.n_head_kv, hd).transpose(1, 2)
        if cfg.rope_dim:
            q, k = rope_neox(q, cfg.rope_base, cfg.rope_dim), rope_neox(k, cfg.rope_base, cfg.rope_dim)
        rep = cfg.n_head // cfg.n_head_kv
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scale = 1.0 / math.sqrt(hd)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(~mask, float("-inf"))
        if cfg.pos == "cope":
            z = cope_logits(q, s, self.cope_pos, cfg.npos_max)
            # scale_pos_logits: the authors' released code, (q.k + z) / sqrt(D); gates stay on s.
            s = s + (z * scale if cfg.scale_pos_logits else z)
        att = torch.softmax(s, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, cfg.n_head * hd)
        return self.wo(y)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.n_embd, cfg.n_ff, bias=False)
        self.w_up = nn.Linear(cfg.n_embd, cfg.n_ff, bias=False)
        self.w_down = nn.Linear(cfg.n_ff, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.n_vocab, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.output = None if cfg.tied else nn.Linear(cfg.n_embd, cfg.n_vocab, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's residual-branch scaling
            if name.endswith(("wo.weight", "w_down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids):
        """ids (B, T) int64 -> logits (B, T, n_vocab) float32."""
        x = self.tok_emb(ids)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        w = self.tok_emb.weight if self.output is None else self.output.weight
        return x @ w.t()

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
