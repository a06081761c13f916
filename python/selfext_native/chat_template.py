"""Chat templates: the Jinja2 program a GGUF file ships (`tokenizer.chat_template`) that turns a list
of messages into the prompt text the model was trained on.

The template comes from an untrusted file, so it runs in jinja2's ImmutableSandboxedEnvironment, with
one change: touching an unsafe attribute (``__class__``, ``__globals__``, ...) raises at once instead of
yielding an Undefined, so an escape attempt fails loudly even where the result would only be printed.
The rest of the environment is the one HF `transformers` gives templates (trim_blocks, lstrip_blocks,
loop controls, `raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text), so templates
written for HF render the same here. Every failure (syntax, sandbox, runtime, raise_exception) is a
TemplateError.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

from .errors import ArgumentError, TemplateError

# ChatML, for files that ship no template (SmolLM, Qwen and many others use it).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Bounds on what `*` and `**` may build: a template is a program from a file, and "x" * 10**10 is
# a one-line memory bomb that the stock sandbox lets through.
MAX_SEQUENCE_PRODUCT = 1_000_000
MAX_POWER_EXPONENT = 1_000
# Bounds found by fuzzing (tests/fuzz_gguf.py): the stock sandbox also lets through 'a'.ljust(3e9)
# (a 3 GB string), '%2000000000s'|format(1), ((2**999)**999)**999, doubling a string 64 times with ~,
# and nested loops of 10^10 iterations. Every string or list a template builds, and its output, stay
# under MAX_RENDER_CHARS (far above any prompt a context can hold); an integer argument of a call or
# filter (a width, an indent, a count) stays under MAX_INT_ARGUMENT; integers stay under
# MAX_INT_BITS; loops run at most MAX_LOOP_ITERATIONS times per render, and a render stops after
# RENDER_TIMEOUT_S seconds.
MAX_RENDER_CHARS = 1 << 26
MAX_INT_ARGUMENT = 100_000
MAX_INT_BITS = 100_000
MAX_LOOP_ITERATIONS = 10_000_000
RENDER_TIMEOUT_S = 5.0


class _TemplateRaised(Exception):
    """raise_exception() inside a template: carries the template's own message."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: Optional[int] = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes <, >, & and ' for HTML; prompts need the characters themselves.
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


class _Budget:
    """What one render may still spend: loop iterations and wall time."""

    def __init__(self) -> None:
        self.iterations = 0
        self.deadline = time.monotonic() + RENDER_TIMEOUT_S

    def tick(self, n: int = 1) -> None:
        from jinja2.exceptions import SecurityError
        self.iterations += n
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise SecurityError(f"loops ran more than {MAX_LOOP_ITERATIONS} iterations (limit)")
        if time.monotonic() > self.deadline:
            raise SecurityError(f"rendering took more than {RENDER_TIMEOUT_S:g} s (limit)")


_BUDGET: contextvars.ContextVar[Optional[_Budget]] = contextvars.ContextVar("selfext_template_budget", default=None)


def _budget() -> _Budget:
    b = _BUDGET.get()
    if b is None:  # a template rendered outside ChatTemplate.render: a fresh budget per top-level use
        b = _Budget()
        _BUDGET.set(b)
    return b


def _check_size(value: Any, what: str) -> Any:
    from jinja2.exceptions import SecurityError
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > MAX_RENDER_CHARS:
        raise SecurityError(f"{what} built {len(value)} items (limit {MAX_RENDER_CHARS})")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"{what} built a {value.bit_length()}-bit integer (limit {MAX_INT_BITS})")
    return value


def _check_args(what: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    from jinja2.exceptions import SecurityError
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT_ARGUMENT:
            raise SecurityError(f"{what} called with {v} (limit {MAX_INT_ARGUMENT} for an integer argument)")


def _check_format(fmt: Any) -> None:
    # '%2000000000s' and '{:>2000000000}' allocate their width before any size check could run.
    from jinja2.exceptions import SecurityError
    if isinstance(fmt, str):
        for digits in re.findall(r"\d{6,}", fmt):
            if int(digits) > MAX_INT_ARGUMENT:
                raise SecurityError(f"format string with width or precision {digits} (limit {MAX_INT_ARGUMENT})")


def _guarded_iter(iterable: Any) -> Any:
    budget = _budget()
    for i, item in enumerate(iterable):
        if not i & 1023:
            budget.tick(1024)
        yield item


def _guarded_concat(*parts: Any) -> str:
    from jinja2.exceptions import SecurityError
    texts = [str(p) for p in parts]
    n = sum(map(len, texts))
    if n > MAX_RENDER_CHARS:
        raise SecurityError(f"'~' would build a string of {n} characters (limit {MAX_RENDER_CHARS})")
    return "".join(texts)


def _guard_filter(name: str, f: Any) -> Any:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().tick(0)
        _check_args(f"filter {name!r}", args[1:], kwargs)  # args[0]: the filtered value (or a context)
        if name == "format" and args:
            _check_format(args[0])
        return _check_size(f(*args, **kwargs), f"filter {name!r}")
    for attr in ("jinja_pass_arg",):  # keep pass_context / pass_environment markers
        if hasattr(f, attr):
            setattr(guarded, attr, getattr(f, attr))
    return guarded


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    from jinja2.utils import generate_lorem_ipsum
    return generate_lorem_ipsum(n=min_(n, 100), html=html, min=min_(min, 1000), max=min_(max, 1000))


min_ = min


def _environment():
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.visitor import NodeTransformer

    class _Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+", "%"])

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} "
                                f"object is unsafe")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and \
                            len(seq) * n > MAX_SEQUENCE_PRODUCT:
                        raise SecurityError(f"'*' would build a sequence of {len(seq) * n} items "
                                            f"(limit {MAX_SEQUENCE_PRODUCT})")
                if isinstance(left, int) and isinstance(right, int) and \
                        left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise SecurityError(f"'*' would build an integer over {MAX_INT_BITS} bits (limit)")
            if operator == "**" and isinstance(right, (int, float)):
                if abs(right) > MAX_POWER_EXPONENT:
                    raise SecurityError(f"'**' with exponent {right} (limit {MAX_POWER_EXPONENT})")
                if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_INT_BITS:
                    raise SecurityError(f"'**' would build an integer over {MAX_INT_BITS} bits (limit)")
            if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                    and len(left) + len(right) > MAX_RENDER_CHARS:
                raise SecurityError(f"'+' would build {len(left) + len(right)} items (limit {MAX_RENDER_CHARS})")
            if operator == "%":
                _check_format(left)
            return _check_size(super().call_binop(context, operator, left, right), f"'{operator}'")

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            _budget().tick(0)
            name = getattr(__obj, "__name__", "a callable")
            if __obj is not _guarded_iter and __obj is not _guarded_concat:
                if name not in ("range", "safe_range"):  # the sandbox bounds range() itself
                    _check_args(f"{name}()", args, kwargs)
                # str.format arrives wrapped by the sandbox (wrap_str_format); its string is on __wrapped__
                owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
                if isinstance(owner, str):
                    if name in ("format", "format_map"):
                        _check_format(owner)
                    elif name == "expandtabs" and len(owner) * (args[0] if args and isinstance(args[0], int) else 8) \
                            > MAX_RENDER_CHARS:
                        raise SecurityError(f"expandtabs() would build over {MAX_RENDER_CHARS} characters (limit)")
                    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and \
                            isinstance(args[1], str) and len(args[1]) > len(args[0]):
                        grow = (owner.count(args[0]) if args[0] else len(owner) + 1) * (len(args[1]) - len(args[0]))
                        if len(owner) + grow > MAX_RENDER_CHARS:
                            raise SecurityError(f"replace() would build {len(owner) + grow} characters (limit)")
            return _check_size(super().call(__context, __obj, *args, **kwargs), f"{name}()")

        def _parse(self, source: str, name: Optional[str], filename: Optional[str]) -> Any:
            # Every loop iterates through _guarded_iter and every '~' goes through _guarded_concat, so
            # loops and concatenations answer to the render's budget.
            tree = _Guard().visit(super()._parse(source, name, filename))
            tree.set_environment(self)
            return tree

    class _Guard(NodeTransformer):
        def visit_For(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.iter = nodes.Call(nodes.EnvironmentAttribute("selfext_guarded_iter"), [node.iter], [], None, None)
            return node

        def visit_Concat(self, node: Any) -> Any:
            node = self.generic_visit(node)
            return nodes.Call(nodes.EnvironmentAttribute("selfext_guarded_concat"), node.nodes, [], None, None)

    env = _Env(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.selfext_guarded_iter = _guarded_iter
    env.selfext_guarded_concat = _guarded_concat
    env.filters["tojson"] = _tojson
    env.filters = {k: _guard_filter(k, f) for k, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["lipsum"] = _lipsum
    return env


def _check_messages(messages: Any) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ArgumentError(f"messages must be a list of dicts with 'role' and 'content', "
                            f"got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ArgumentError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise ArgumentError(f"messages[{i}]['role'] must be a non-empty str, got {role!r}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ArgumentError(f"messages[{i}]['content'] must be a str (or a list of parts), "
                                f"got {type(content).__name__}")
        out.append(dict(m))
    return out


class ChatTemplate:
    """A compiled chat template.

    source: the template text; None selects CHATML_TEMPLATE. bos_token / eos_token: the texts the
    template sees as `bos_token` and `eos_token`. Raises TemplateError if the template does not parse.
    """

    def __init__(self, source: Optional[str] = None, bos_token: str = "", eos_token: str = ""):
        if source is not None and not isinstance(source, str):
            raise ArgumentError(f"source must be a str or None, got {type(source).__name__}")
        self.source = CHATML_TEMPLATE if source is None else source
        self.is_fallback = source is None
        self.bos_token = bos_token
        self.eos_token = eos_token
        from jinja2.exceptions import TemplateSyntaxError
        try:
            self._template = _environment().from_string(self.source)
        except TemplateSyntaxError as e:
            raise TemplateError(f"chat template does not parse (line {e.lineno}): {e.message}") from e

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "ChatTemplate":
        """The template of the tokenizer's GGUF file (ChatML if it has none), with its BOS/EOS texts."""
        def text(i: Optional[int]) -> str:
            return tokenizer.token_text(i) if i is not None else ""
        return cls(tokenizer.chat_template, bos_token=text(tokenizer.bos_id), eos_token=text(tokenizer.eos_id))

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Optional[list] = None, **extra: Any) -> str:
        """The prompt text for `messages` (each a dict with 'role' and 'content').

        add_generation_prompt: end with the header of an assistant turn, so the model answers.
        tools and extra keywords (e.g. documents, enable_thinking) are passed to the template as is.
        """
        from jinja2.exceptions import SecurityError, TemplateError as JinjaTemplateError
        msgs = _check_messages(messages)
        if not isinstance(add_generation_prompt, bool):
            raise ArgumentError(f"add_generation_prompt must be a bool, got {add_generation_prompt!r}")
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, **extra,
                     "messages": msgs, "add_generation_prompt": add_generation_prompt, "tools": tools}
        token = _BUDGET.set(_Budget())
        try:
            out, n = [], 0
            for piece in self._template.generate(**variables):  # streamed, so the output is bounded too
                n += len(piece)
                if n > MAX_RENDER_CHARS:
                    raise SecurityError(f"the output exceeds {MAX_RENDER_CHARS} characters (limit)")
                out.append(piece)
            return "".join(out)
        except MemoryError:
            raise TemplateError("chat template exhausted memory") from None
        except _TemplateRaised as e:
            raise TemplateError(f"chat template raised an error: {e}") from None
        except SecurityError as e:
            raise TemplateError(f"chat template tried an unsafe operation: {e}") from None
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError, RecursionError) as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
        finally:
            _BUDGET.reset(token)


def render_chat(source: Optional[str], messages: Sequence[Mapping[str, Any]],
                add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
                tools: Optional[list] = None, **extra: Any) -> str:
    """One-shot `ChatTemplate(source, bos_token, eos_token).render(...)`."""
    return ChatTemplate(source, bos_token, eos_token).render(
        messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)
