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

import json
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


def _environment():
    import jinja2.ext
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

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
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_POWER_EXPONENT:
                raise SecurityError(f"'**' with exponent {right} (limit {MAX_POWER_EXPONENT})")
            return super().call_binop(context, operator, left, right)

    env = _Env(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
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
        try:
            return self._template.render(**variables)
        except _TemplateRaised as e:
            raise TemplateError(f"chat template raised an error: {e}") from None
        except SecurityError as e:
            raise TemplateError(f"chat template tried an unsafe operation: {e}") from None
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError, RecursionError) as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


def render_chat(source: Optional[str], messages: Sequence[Mapping[str, Any]],
                add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
                tools: Optional[list] = None, **extra: Any) -> str:
    """One-shot `ChatTemplate(source, bos_token, eos_token).render(...)`."""
    return ChatTemplate(source, bos_token, eos_token).render(
        messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)
