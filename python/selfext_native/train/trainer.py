"""Training loop, evaluation and the CLI of `python -m selfext_native.train`.

AdamW with linear warm-up and cosine decay, fresh batches from the task generator every step, loss on
the scored tokens only. Seeded: `--seed` fixes the initialization and the training stream; the
evaluation sets come from a fixed seed of their own, so every model is tested on the same sequences.

Writes to --out: model.pt (state dict and config), metrics.json (arguments, timing, loss curve, error
per split) and, with --export, GGUF files.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import require_torch
from .tasks import Task, get_task, TASKS

EVAL_SEED = 20240528  # the evaluation sets are the same for every model and training seed


def _torch():
    return require_torch()


def batch_tensors(task: Task, rng: np.random.Generator, n: int, split: str):
    """(inputs, targets, mask) of one batch: inputs ids[:, :-1], targets ids[:, 1:], mask of scored targets."""
    torch = _torch()
    b = task.sample(rng, n, split)
    ids = torch.from_numpy(b.ids)
    return ids[:, :-1], ids[:, 1:], torch.from_numpy(b.target[:, 1:])


def masked_loss(model, inputs, targets, mask):
    torch = _torch()
    logits = model(inputs)
    return torch.nn.functional.cross_entropy(logits[mask], targets[mask])


def evaluate(model, task: Task, split: str, n_seqs: int = 1000, batch: int = 100) -> dict:
    """Greedy (argmax) error on the scored tokens of `n_seqs` sequences of `split`, teacher-forced.

    token_error: wrong scored tokens / scored tokens; seq_error: sequences with any wrong scored token."""
    torch = _torch()
    rng = np.random.default_rng([EVAL_SEED, *split.encode()])  # a fixed set per split name
    wrong = total = bad_seqs = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, n_seqs, batch):
            inputs, targets, mask = batch_tensors(task, rng, min(batch, n_seqs - start), split)
            err = (model(inputs).argmax(-1) != targets) & mask
            wrong += int(err.sum())
            total += int(mask.sum())
            bad_seqs += int(err.any(-1).sum())
    model.train()
    return {"token_error": wrong / max(total, 1), "seq_error": bad_seqs / n_seqs,
            "scored_tokens": total, "sequences": n_seqs}


def evaluate_splits(model, task: Task, n_seqs: int = 1000) -> dict:
    """`evaluate` on every split but "train"."""
    return {split: evaluate(model, task, split, n_seqs) for split in task.splits if split != "train"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m selfext_native.train",
                                description="Train a small CoPE or RoPE decoder on a synthetic task.")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--pos", required=True, choices=("cope", "rope"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--n-head-kv", type=int, default=None)
    p.add_argument("--n-ff", type=int, default=256)
    p.add_argument("--npos-max", type=int, default=64)
    p.add_argument("--rope-dim", type=int, default=0, help="cope only: RoPE on q, k before the gates (0: none)")
    p.add_argument("--scale-pos-logits", action="store_true", help="the authors' code: (q.k + z)/sqrt(D)")
    p.add_argument("--per-head", action="store_true", help="one CoPE position table per head")
    p.add_argument("--untied", action="store_true", help="separate output head")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-seqs", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--export", default="", help="comma-separated GGUF types to write: f32,f16,q8_0")
    return p


def train(args: argparse.Namespace, log=print) -> dict:
    torch = _torch()
    from .model import Decoder, ModelConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    task = get_task(args.task)
    context_length = task.sample(np.random.default_rng(0), 1, "train").ids.shape[1] - 1
    cfg = ModelConfig(n_vocab=task.n_vocab, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                      n_head_kv=args.n_head_kv, n_ff=args.n_ff, pos=args.pos,
                      rope_dim=args.rope_dim if args.pos == "cope" else 0, npos_max=args.npos_max,
                      scale_pos_logits=args.scale_pos_logits, cope_per_head=args.per_head,
                      tied=not args.untied, context_length=context_length)
    model = Decoder(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "cope_pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "cope_pos" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    log(f"task {task.name} ({task.description}); {cfg.pos}, {model.n_params()} parameters, "
        f"T = {context_length}, batch {args.batch}, {args.steps} steps, seed {args.seed}")
    curve = []
    t0 = time.perf_counter()
    running = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = masked_loss(model, *batch_tensors(task, rng, args.batch, "train"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            curve.append((step + 1, running))
            log(f"step {step + 1:5d}  loss {running:.4f}  {(time.perf_counter() - t0) / (step + 1) * 1e3:.0f} ms/step")
    train_s = time.perf_counter() - t0

    results = evaluate_splits(model, task, args.eval_seqs)
    for split, r in results.items():
        tag = "OOD" if split in task.ood_splits else "in-dist"
        log(f"{split:7s} ({tag}): token error {100 * r['token_error']:.2f} %, "
            f"sequence error {100 * r['seq_error']:.2f} %  ({r['scored_tokens']} scored tokens)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_dict(), "task": task.name, "state_dict": model.state_dict()}, out / "model.pt")
    metrics = {"args": vars(args), "config": cfg.to_dict(), "n_params": model.n_params(),
               "train_seconds": train_s, "ms_per_step": 1e3 * train_s / max(1, args.steps),
               "torch": torch.__version__, "loss_curve": curve, "eval": results,
               "ood_splits": list(task.ood_splits)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    for outtype in filter(None, (s.strip() for s in args.export.split(","))):
        from .export import export_gguf
        path = out / f"{task.name}_{cfg.pos}_{outtype}.gguf"
        export_gguf(model, task, path, outtype)
        log(f"wrote {path}")
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    train(build_parser().parse_args(argv))
    return 0
