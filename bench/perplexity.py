"""Perplexity of a long public-domain English text at several context sizes and methods, with the loss
by position (past the trained window), one JSON per cell and a Markdown table on stdout.

    python bench/perplexity.py --lengths 8192,12288 --methods off,auto --max-windows 1        # CPU, small
    python bench/perplexity.py --device cuda --lengths 8192,16384,32768 --methods off,auto \\
        --plot docs/long_context_loss.png                                                      # the issue's table

The text: "Botchan (Master Darling)" by Natsume Soseki, translated by Yasotaro Morri (Project Gutenberg
#8868, public domain), which the sentencepiece sdist on PyPI ships as test/botchan.txt (278,779 bytes,
about 70k SmolLM2 tokens). Fetched with pip's ordinary client and checked by sha256:
    pip download --no-deps --no-binary :all: --no-build-isolation sentencepiece==0.2.3
Only the book's body (between the Gutenberg START and END markers) is scored. --text FILE scores any
other UTF-8 file instead. Methods as in bench/passkey.py: off, auto, se:G:W, linear, yarn, ntk.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, cpu_name, device_slug, git_commit, markdown_table  # noqa: E402
from passkey import method_kwargs  # noqa: E402

SDIST = "sentencepiece==0.2.3"
MEMBER = "sentencepiece-0.2.3/test/botchan.txt"
SHA256 = "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selfext-native"


def botchan_text(cache: Path = CACHE) -> str:
    """The body of Botchan, downloaded once (as the sentencepiece sdist) into ~/.cache/selfext-native."""
    txt = cache / "botchan.txt"
    if not txt.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "-q", "-d", str(cache), SDIST], check=True)
        sdist = next(cache.glob("sentencepiece-0.2.3.tar.gz"))
        with tarfile.open(sdist) as tf:
            data = tf.extractfile(MEMBER).read()
        txt.write_bytes(data)
    data = txt.read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{txt}: sha256 mismatch (expected {SHA256}); delete it and run again")
    text = data.decode("utf-8-sig")
    start = text.index("\n", text.index("*** START OF")) + 1
    end = text.index("*** END OF")
    return text[start:end].strip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--text", default=None, help="UTF-8 text file (default: Botchan, see above)")
    ap.add_argument("--lengths", default="8192,16384", help="comma-separated n_ctx values")
    ap.add_argument("--methods", default="off,auto", help="comma-separated: off, auto, se:G:W, linear, yarn, ntk")
    ap.add_argument("--max-windows", type=int, default=None, help="score at most this many windows per cell")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--plot", default=None, help="PNG of every cell's loss curve (needs matplotlib)")
    ap.add_argument("--force", action="store_true", help="re-run cells that already have a JSON file")
    args = ap.parse_args()

    from selfext_native import LLM, selfextend
    from selfext_native.default_model import default_model_path
    from selfext_native.errors import SelfExtError
    from selfext_native.eval import run_perplexity
    from selfext_native.eval.perplexity import PerplexityResult
    from selfext_native.gguf_model import load_model_description

    path = args.model or default_model_path()
    desc = load_model_description(path)
    if args.text:
        text, source = Path(args.text).read_text(encoding="utf-8"), os.path.basename(args.text)
    else:
        text, source = botchan_text(), "botchan.txt (Gutenberg #8868, body)"
    dev_name = cpu_name() if args.device == "cpu" else args.device
    slug = "cpu-" + device_slug(cpu_name()) if args.device == "cpu" else device_slug(args.device)
    RESULTS.mkdir(exist_ok=True)
    rows, results = [], []
    for n_ctx in (int(x) for x in args.lengths.split(",")):
        for method in args.methods.split(","):
            out = RESULTS / f"perplexity-{slug}-{n_ctx}-{method.replace(':', '_')}.json"
            d = json.loads(out.read_text()) if out.exists() and not args.force else None
            if d is not None and method == "auto" and (d["group"], d["window"]) != selfextend.auto(desc.n_ctx_train, n_ctx):
                d = None  # measured under another auto rule: re-run the cell
            if d is None:
                try:
                    llm = LLM(path, n_ctx=n_ctx, device=args.device, n_threads=args.threads,
                              **method_kwargs(method, n_ctx, desc))
                except SelfExtError as e:
                    rows.append({"n_ctx": n_ctx, "method": method, "ppl": f"refused: {e}"})
                    continue
                t0 = time.perf_counter()
                r = run_perplexity(llm, text, source=source, max_windows=args.max_windows,
                                   progress=lambda done, total: sys.stderr.write(
                                       f"  {n_ctx} {method}: window {done}/{total}\n"))
                d = r.to_dict()
                d.update(method=method, device_name=dev_name, commit=git_commit(), wall_seconds=time.perf_counter() - t0,
                         command=" ".join([os.path.basename(sys.executable), *sys.argv]))
                out.write_text(json.dumps(d, indent=1) + "\n")
                del llm
            results.append(d)
            rows.append({"n_ctx": n_ctx, "method": method,
                         "G/W": f"{d['group']}/{d['window']}" if d["group"] > 1 else "—",
                         "rope": f"{d['rope']['scaling_type']} x{d['rope']['scaling_factor']:.3g} "
                                 f"base {d['rope']['freq_base']:.4g}",
                         "windows": d["n_windows"], "ppl": f"{d['ppl']:.3f}",
                         f"NLL pos < {desc.n_ctx_train}": f"{d['nll_inside_trained']:.4f}"
                         if d["nll_inside_trained"] is not None else "—",
                         f"NLL pos >= {desc.n_ctx_train}": f"{d['nll_beyond_trained']:.4f}"
                         if d["nll_beyond_trained"] is not None else "—",
                         "t/s": f"{d['tokens_per_second']:.0f}"})
            sys.stderr.write(f"{n_ctx} {method}: ppl {rows[-1]['ppl']}\n")
    print(f"perplexity, {os.path.basename(path)} (trained context {desc.n_ctx_train}) on {source}, "
          f"device {dev_name}, windows of n_ctx (at most {args.max_windows or 'all'} per cell)")
    print(markdown_table(rows, list(rows[0].keys()) if rows else []))
    if args.plot and results:
        def as_result(d):
            r = PerplexityResult(**{k: d[k] for k in ("model", "source", "sha256", "n_text_tokens", "n_ctx",
                                                       "n_ctx_train", "group", "window", "rope", "device",
                                                       "n_threads", "bos", "bucket", "n_windows", "nll_sum",
                                                       "n_scored")})
            r.curve_sum = [(c["mean_nll"] or 0.0) * c["n"] for c in d["curve"]]
            r.curve_count = [c["n"] for c in d["curve"]]
            return r
        # "auto" inside the trained window is "off": one curve per distinct configuration
        seen, distinct = set(), []
        for d in results:
            key = (d["n_ctx"], d["group"], d["window"] if d["group"] > 1 else 0, json.dumps(d["rope"], sort_keys=True))
            if key not in seen:
                seen.add(key)
                distinct.append(d)
        rs = [as_result(d) for d in distinct]
        rs[0].plot(args.plot, others=rs[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
