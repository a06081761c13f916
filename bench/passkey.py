"""Passkey accuracy table: context lengths x methods, one JSON per cell, a Markdown table on stdout.

    python bench/passkey.py --lengths 4096,8192,12288 --methods off,auto,se:4:1024 --trials 3   # CPU, small
    python bench/passkey.py --device cuda --table          # the README table's cells, 50 trials each
    python bench/passkey.py --device cuda --cells "24576,32768=se:6:1024;8192=se:2:1024" --trials 50

Methods: off (plain RoPE, even past the trained context), auto (selfext_native.selfextend.auto),
se:G:W (explicit SelfExtend), and the RoPE alternatives at the factor the length needs, s = n_ctx / L:
linear (positions / s), yarn (YaRN, s, against the trained context), ntk (NTK-aware base
base * s**(d/(d-2))). Each cell's prompt fills n_ctx minus the 8 answer tokens; cells already in
bench/results are skipped unless --force, so a long table can be filled over several runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, cpu_name, device_slug, git_commit, markdown_table  # noqa: E402


def method_kwargs(method: str, n_ctx: int, desc) -> dict:
    """LLM keyword arguments of a method name at a context length."""
    from selfext_native.eval import ntk_freq_base

    s = max(1.0, n_ctx / desc.n_ctx_train)
    if method == "off":
        return dict(self_extend=None)
    if method == "auto":
        return dict(self_extend="auto")
    if method.startswith("se:"):
        g, w = (int(x) for x in method[3:].split(":"))
        return dict(self_extend=(g, w))
    if method == "linear":
        return dict(rope_scaling="linear", rope_scale=s)
    if method == "yarn":
        return dict(rope_scaling="yarn", rope_scale=s)
    if method == "ntk":
        return dict(rope_freq_base=ntk_freq_base(desc.rope.freq_base, s, desc.rope.dim))
    raise SystemExit(f"bench/passkey.py: unknown method {method!r} (off, auto, se:G:W, linear, yarn, ntk)")


# The cells of the table in README.md and docs/long_context.md (50 trials each): `--table`.
TABLE = ("4096,8192=off;8192=se:2:1024,se:3:1024;16384,24576,32768=auto,linear,yarn,ntk;"
         "16384=se:3:1024,se:4:1024,se:4:512,se:3:512;24576=se:4:1024,se:5:1024,se:6:1024,se:24:1024,se:5:512,"
         "se:6:512;32768=se:5:1024,se:6:1024,se:7:1024,se:8:1024,se:32:1024,se:6:2048,se:6:512,se:7:512")


def parse_cells(spec: str) -> list[tuple[int, str]]:
    """'L1,L2=M1,M2;L3=M3' -> [(L1, M1), (L1, M2), (L2, M1), ...] in that order, duplicates dropped."""
    cells = []
    for group in filter(None, (g.strip() for g in spec.split(";"))):
        if "=" not in group:
            raise SystemExit(f"bench/passkey.py: --cells group {group!r} is not LENGTHS=METHODS")
        lengths, methods = group.split("=", 1)
        for n in lengths.split(","):
            for m in methods.split(","):
                if (int(n), m) not in cells:
                    cells.append((int(n), m))
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--lengths", default="4096,8192", help="comma-separated n_ctx values")
    ap.add_argument("--methods", default="off,auto", help="comma-separated: off, auto, se:G:W, linear, yarn, ntk")
    ap.add_argument("--cells", default=None,
                    help="instead of lengths x methods: 'LENGTHS=METHODS;LENGTHS=METHODS...'")
    ap.add_argument("--table", action="store_true",
                    help=f"the README table's cells (implies --trials 50 unless given): {TABLE}")
    ap.add_argument("--trials", type=int, default=None, help="trials per cell (default 5; 50 with --table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="re-run cells that already have a JSON file")
    args = ap.parse_args()
    if args.table:
        args.cells = TABLE
    if args.trials is None:
        args.trials = 50 if args.table else 5
    cells = parse_cells(args.cells) if args.cells else [
        (int(n), m) for n in args.lengths.split(",") for m in args.methods.split(",")]

    from selfext_native import LLM, selfextend
    from selfext_native.default_model import default_model_path
    from selfext_native.errors import SelfExtError
    from selfext_native.eval import run_passkey
    from selfext_native.gguf_model import load_model_description

    path = args.model or default_model_path()
    desc = load_model_description(path)
    dev_name = cpu_name() if args.device == "cpu" else args.device
    slug = "cpu-" + device_slug(cpu_name()) if args.device == "cpu" else device_slug(args.device)
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for n_ctx, method in cells:
        out = RESULTS / f"passkey-{slug}-{n_ctx}-{method.replace(':', '_')}.json"
        d = json.loads(out.read_text()) if out.exists() and not args.force else None
        if d is not None and method == "auto" and (d["group"], d["window"]) != selfextend.auto(desc.n_ctx_train, n_ctx):
            d = None  # measured under another auto rule: re-run the cell
        if d is None:
            kw = method_kwargs(method, n_ctx, desc)
            try:
                llm = LLM(path, n_ctx=n_ctx, device=args.device, n_threads=args.threads, **kw)
            except SelfExtError as e:
                rows.append({"n_ctx": n_ctx, "method": method, "accuracy": f"refused: {e}"})
                continue
            t0 = time.perf_counter()

            def progress(i, t):
                sys.stderr.write(f"  {n_ctx} {method} trial {i + 1}/{args.trials}: depth {t.depth:.2f} "
                                 f"{'ok' if t.correct else 'WRONG ' + repr(t.answer)}\n")

            r = run_passkey(llm, trials=args.trials, seed=args.seed, progress=progress)
            d = r.to_dict()
            d.update(method=method, device_name=dev_name, commit=git_commit(), wall_seconds=time.perf_counter() - t0,
                     command=" ".join([os.path.basename(sys.executable), *sys.argv]))
            out.write_text(json.dumps(d, indent=1) + "\n")
            del llm
        depth = " ".join(f"{b['correct']}/{b['n']}" for b in d["by_depth"])
        rows.append({"n_ctx": n_ctx, "method": method,
                     "G/W": f"{d['group']}/{d['window']}" if d["group"] > 1 else "—",
                     "rope": f"{d['rope']['scaling_type']} x{d['rope']['scaling_factor']:.3g} "
                             f"base {d['rope']['freq_base']:.4g}",
                     "prompt tokens": f"{d['mean_prompt_tokens']:.0f}",
                     "accuracy": f"{d['correct']}/{d['n']} ({100 * d['accuracy']:.0f}%)",
                     "95% CI": f"{100 * d['ci_low']:.0f}–{100 * d['ci_high']:.0f}%",
                     "by depth (5 bins)": depth, "prefill t/s": f"{d['prefill_tps']:.0f}"})
        sys.stderr.write(f"{n_ctx} {method}: {rows[-1]['accuracy']}\n")
    print(f"passkey, {os.path.basename(path)} (trained context {desc.n_ctx_train}), device {dev_name}, "
          f"{args.trials} trials per cell, seed {args.seed}")
    print(markdown_table(rows, ["n_ctx", "method", "G/W", "rope", "prompt tokens", "accuracy", "95% CI",
                                "by depth (5 bins)", "prefill t/s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
