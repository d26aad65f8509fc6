"""Articles for the content pipeline: written as JSON under a schema, so parsing one can no longer fail.

The text service asks its model for ``{"title": ..., "body": ...}`` with the schema below as the response format
(constrained decoding): whatever the model, the answer parses and has both fields. While it streams,
``ArticleFields`` reads the JSON as it grows and hands out the title and body text (escapes decoded), so a
person watching sees words, not braces and quotes.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from deployments.common import SEED_MAX, Narrative, StrictModel
from deployments.errors import BadOutput
from deployments.text.config import ArticleLength
from deployments.text.schemas import TextResult

TITLE_MAX_CHARS = 120
ARTICLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX_CHARS},
        "body": {"type": "string", "minLength": 1},
    },
    "required": ["title", "body"],
    "additionalProperties": False,
}
ArticleField = Literal["title", "body"]


class ArticleRequest(StrictModel):
    """An article for the content pipeline: the prompt comes from config, the topic from the user."""

    topic: str = Field(min_length=1, max_length=500)
    style: str | None = Field(None, max_length=100)
    length: ArticleLength = "short"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    model: str | None = Field(None, max_length=256)


class ArticleDelta(StrictModel):
    """More of the title or the body, as it is written."""

    field: ArticleField
    text: str


class Article(Narrative):
    """A written article: its title and body, with what it cost."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    model: str

    @classmethod
    def parse(cls, result: TextResult) -> Article:
        """The article from a generation made under ``ARTICLE_SCHEMA``."""
        try:
            document = json.loads(result.text)
            title, body = str(document["title"]).strip(), str(document["body"]).strip()
        except (ValueError, KeyError, TypeError) as exc:  # only a model served without the schema gets here
            raise BadOutput(f"the article is not the JSON asked for: {exc}") from None
        if not body:
            raise BadOutput("the model wrote an empty article")
        return cls(
            title=title[:TITLE_MAX_CHARS] or body[:TITLE_MAX_CHARS],
            body=body,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason="length" if result.finish_reason == "length" else "stop",
            model=result.model,
        )


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class ArticleFields:
    """Reads a JSON object as it streams and returns the new text of its ``title`` and ``body`` strings."""

    def __init__(self) -> None:
        self.state = "outside"  # outside | key | value | escape | unicode
        self.key = ""
        self.last_key = ""
        self.unicode = ""
        self.escaped_from = "value"

    def push(self, text: str) -> list[ArticleDelta]:
        out: list[ArticleDelta] = []
        for ch in text:
            piece = self._step(ch)
            if piece and self.last_key in ("title", "body"):
                if out and out[-1].field == self.last_key:
                    out[-1] = ArticleDelta(field=out[-1].field, text=out[-1].text + piece)
                else:
                    out.append(ArticleDelta(field=self.last_key, text=piece))  # type: ignore[arg-type]
        return out

    def _step(self, ch: str) -> str:
        state = self.state
        if state == "outside":
            if ch == '"':
                self.state, self.key = ("value" if self._expect_value else "key"), ""
            elif ch == ":":
                self._expect_value = True
            elif ch in ",{":
                self._expect_value = False
            return ""
        if state in ("key", "value") and ch == "\\":
            self.escaped_from, self.state = state, "escape"
            return ""
        if state == "escape":
            if ch == "u":
                self.state, self.unicode = "unicode", ""
                return ""
            self.state = self.escaped_from
            return self._char(_ESCAPES.get(ch, ch))
        if state == "unicode":
            self.unicode += ch
            if len(self.unicode) < 4:
                return ""
            self.state = self.escaped_from
            try:
                return self._char(chr(int(self.unicode, 16)))
            except ValueError:
                return ""
        if ch == '"':  # the end of a key or a value
            if state == "key":
                self.last_key = self.key
            self.state, self._expect_value = "outside", False
            return ""
        return self._char(ch)

    _expect_value = False

    def _char(self, ch: str) -> str:
        if self.state == "key":
            self.key += ch
            return ""
        return ch
