"""Structured output: JSON schemas, regular expressions, choices and Lark grammars compiled to grammars that mask
the logits at every step (llguidance).

llguidance (the grammar engine behind vLLM's and SGLang's guided decoding, and llama.cpp's) turns a JSON schema
into a token-level matcher: at each step it says which tokens keep the output a valid prefix of a document that
validates, so the answer always parses and validates. We chose it over xgrammar after xgrammar 0.2.9 let a
control character into a string bounded by ``maxLength`` here (invalid JSON), and over outlines and
lm-format-enforcer for its speed, its complete JSON-schema support and its single dependency-free wheel.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from deployments.errors import InvalidRequest

# The JSON layout models write by themselves (and ``json.dumps`` writes): a compact layout the model did not
# expect would push it to write a separator inside the next string.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def ll_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a Hugging Face tokenizer, built once per tokenizer and vocabulary size."""
    import llguidance.hf

    with _LOCK:
        per_vocab = _TOKENIZERS.setdefault(tokenizer, {})
        if vocab_size not in per_vocab:
            per_vocab[vocab_size] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        return per_vocab[vocab_size]


def json_schema_grammar(schema: dict[str, Any], field: str) -> str:
    """A grammar for documents that validate against ``schema``; a schema llguidance cannot use is the caller's
    mistake (400 naming ``field``)."""
    import llguidance

    declared = json.dumps(closed_objects(schema))
    return _checked(
        lambda: llguidance.LLMatcher.grammar_from_json_schema(declared, defaults=JSON_STYLE), field, "the JSON schema"
    )


def closed_objects(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever an object lists its properties and says nothing
    of others (what vLLM's default grammar engine, xgrammar, does in its strict mode): the output still validates
    against the caller's schema, and a model is not invited to invent keys. Where the schema says, it stands."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_objects(v) if k not in ("const", "enum", "default", "examples") else v for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and "patternProperties" not in schema:
        out["additionalProperties"] = False
    return out


def regex_grammar(pattern: str, field: str) -> str:
    """Text matching ``pattern`` (llguidance's regular expressions: Rust's syntax, anchored at both ends)."""
    import llguidance

    return _checked(lambda: llguidance.LLMatcher.grammar_from_regex(pattern), field, "the regular expression")


def choice_grammar(choices: list[str], field: str) -> str:
    """Exactly one of ``choices``, as written."""
    alternatives = " | ".join(json.dumps(choice) for choice in choices)
    return lark_grammar(f"start: {alternatives}", field, "the choices")


def lark_grammar(grammar: str, field: str, what: str = "the grammar") -> str:
    """A Lark grammar (llguidance's dialect, as vLLM takes it)."""
    import llguidance

    return _checked(lambda: llguidance.LLMatcher.grammar_from_lark(grammar), field, what)


def _checked(build: Any, field: str, what: str) -> str:
    """Build a grammar; one llguidance cannot use is the caller's mistake (400 naming ``field``)."""
    import llguidance

    try:
        grammar = build()
    except (TypeError, ValueError) as exc:
        raise InvalidRequest.for_field(field, f"{what} cannot be used: {exc}") from None
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise InvalidRequest.for_field(field, f"{what} cannot be used: {problem.splitlines()[0]}")
    return grammar


ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def tool_call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One call of any of these tools: ``{"name": <tool>, "arguments": {...its parameters}}``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool["name"]}, "arguments": tool.get("parameters") or ANY_JSON_OBJECT},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}
