"""A small, seeded English corpus the tiny text model is trained on, so the offline profile writes words.

Nothing here is downloaded: sentences come from a few hand-written templates filled with a fixed vocabulary,
so the corpus is the same on every machine for a given seed. It holds three kinds of documents, shaped like
what the services ask the model for:

- prose paragraphs (what ``/v1/completions`` continues);
- chat turns in the tokenizer's chat template answering with an article as JSON ``{"title", "body"}`` (what the
  content pipeline asks for under a JSON schema), so the tiny model learns to open and close its strings;
- short chat answers (what ``/v1/chat/completions`` gets in tests and demos);
- chat answers that are one small JSON object with short values (what structured output asks for: a client's
  schema, a tool's arguments), so that under a grammar the tiny model closes its strings and its object by
  itself, and ends (``finish_reason: stop``), instead of filling the budget.

The text is nonsense, but it is made of real words, spaces and punctuation: a newcomer can tell a working
pipeline from a broken one.
"""

from __future__ import annotations

import json
import random

TOPICS = (
    "lighthouses", "tides", "bread", "mountains", "rivers", "gardens", "storms", "trains", "libraries", "bees",
    "harbours", "forests", "markets", "comets", "bicycles", "islands", "kites", "orchards", "bridges", "owls",
)  # fmt: skip
ADJECTIVES = (
    "quiet", "bright", "old", "gentle", "busy", "small", "golden", "windy", "green", "patient", "curious",
    "warm", "distant", "careful", "silver", "early", "late", "hidden", "open", "steady",
)  # fmt: skip
NOUNS = (
    "keeper", "baker", "river", "valley", "harbour", "lantern", "garden", "station", "village", "market",
    "window", "morning", "evening", "road", "bridge", "field", "ship", "tower", "kitchen", "path",
    "teacher", "gardener", "captain", "reader", "traveller", "neighbour", "child", "friend", "city", "hill",
)  # fmt: skip
VERBS = (
    "watches", "crosses", "follows", "finds", "opens", "carries", "remembers", "paints", "visits", "builds",
    "hears", "waits for", "counts", "greets", "explores", "shares", "keeps", "repairs", "reads", "tends",
)  # fmt: skip
PLACES = (
    "by the sea", "in the morning", "after the rain", "near the old bridge", "under the stars", "at the market",
    "along the river", "in the quiet valley", "on the hill", "before dawn", "every evening", "in early spring",
)  # fmt: skip
STYLES = ("engaging", "playful", "calm", "news", "poetic", "practical", "curious", "warm")
LENGTHS = ("short", "medium", "long")
SYSTEM = "You are a staff writer. Answer with the article as JSON with a title and a body."
ARTICLE_PROMPT = "Write a {length}, {style} article about: {topic}"
QUESTIONS = (
    "Tell me about {topic}.",
    "What do you know about {topic}?",
    "Write one line about {topic}.",
    "Hi",
    "A headline about {topic}",
    "Describe {topic} in a few words.",
)
EOS = "<|endoftext|>"
# Field names clients' schemas use (pydantic models in LangChain's and instructor's examples, tool parameters).
TEXT_FIELDS = (
    "name", "title", "city", "topic", "answer", "summary", "reason", "color", "place", "word", "label",
    "category", "author", "animal", "country", "food", "mood", "language", "description", "text", "location",
    "query", "unit", "status", "type", "value", "result", "message", "first_name", "last_name", "email",
)  # fmt: skip
NUMBER_FIELDS = ("age", "count", "year", "score", "rating", "number", "pages", "size", "quantity", "id", "days")
FLAG_FIELDS = ("done", "valid", "ok", "active", "urgent", "available", "correct")
LIST_FIELDS = ("tags", "items", "names", "keywords", "steps", "colors", "topics")
JSON_REQUESTS = (
    "Extract the details: {sentence}",
    "Answer in JSON: {sentence}",
    "{sentence}",
    "Fill in the form about {topic}.",
    "Give me the facts about {topic} as JSON.",
    "Call the tool for {topic}.",
)


def chat(messages: list[tuple[str, str]], answer: str) -> str:
    """A conversation in the tiny tokenizer's chat template (offline/tiny_models.py), ending with EOS."""
    turns = "".join(f"<|{role}|>{content}\n" for role, content in messages)
    return f"{turns}<|assistant|>{answer}{EOS}"


class CorpusWriter:
    """Sentences, paragraphs and articles from templates; ``seed`` fixes every choice."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, words: tuple[str, ...]) -> str:
        return self.rng.choice(words)

    def sentence(self, topic: str | None = None) -> str:
        r = self.rng
        subject = f"the {self.pick(ADJECTIVES)} {self.pick(NOUNS)}"
        obj = topic if topic and r.random() < 0.5 else f"the {self.pick(NOUNS)}"
        shapes = (
            f"{subject} {self.pick(VERBS)} {obj} {self.pick(PLACES)}.",
            f"{self.pick(PLACES).capitalize()}, {subject} {self.pick(VERBS)} {obj}.",
            f"Nobody knows why {subject} {self.pick(VERBS)} {obj}.",
            f"{subject} and {obj} are {self.pick(ADJECTIVES)} {self.pick(PLACES)}.",
            f"Once upon a time, {subject} {self.pick(VERBS)} {obj}.",
            f"It is {self.pick(ADJECTIVES)} {self.pick(PLACES)}, and {subject} {self.pick(VERBS)} {obj}.",
        )
        text = r.choice(shapes)
        return text[0].upper() + text[1:]

    def paragraph(self, topic: str | None = None, sentences: int | None = None) -> str:
        count = sentences if sentences is not None else self.rng.randint(2, 6)
        return " ".join(self.sentence(topic) for _ in range(count))

    def title(self, topic: str) -> str:
        r = self.rng
        shapes = (
            f"The {self.pick(ADJECTIVES)} {topic}",
            f"{topic.capitalize()} {self.pick(PLACES)}",
            f"Why the {self.pick(NOUNS)} {self.pick(VERBS)} {topic}",
            f"A {self.pick(ADJECTIVES)} guide to {topic}",
            f"Notes on {topic}",
        )
        text = r.choice(shapes)
        return text[0].upper() + text[1:]

    def article(self) -> str:
        topic, style, length = self.pick(TOPICS), self.pick(STYLES), self.pick(LENGTHS)
        sentences = {"short": (2, 3), "medium": (3, 5), "long": (4, 7)}[length]
        body = self.paragraph(topic, self.rng.randint(*sentences))
        answer = json.dumps({"title": self.title(topic), "body": body})
        prompt = ARTICLE_PROMPT.format(length=length, style=style, topic=topic)
        return chat([("system", SYSTEM), ("user", prompt)], answer)

    def answer(self) -> str:
        topic = self.pick(TOPICS)
        question = self.pick(QUESTIONS).format(topic=topic)
        return chat([("user", question)], self.paragraph(topic, self.rng.randint(1, 2)))

    def short_value(self) -> str:
        """One to three words: what a schema's string field gets."""
        words = (self.pick(ADJECTIVES), self.pick(NOUNS), self.pick(TOPICS))
        return " ".join(words[: self.rng.choice((1, 1, 2, 2, 3))])

    def json_object(self, depth: int = 0) -> dict[str, object]:
        """A small object of short values, as a client's schema asks for."""
        r = self.rng
        fields: dict[str, object] = {}
        for _ in range(r.randint(1, 4)):
            kind = r.random()
            if kind < 0.5:
                fields[self.pick(TEXT_FIELDS)] = self.short_value()
            elif kind < 0.7:
                fields[self.pick(NUMBER_FIELDS)] = r.choice((r.randint(0, 9), r.randint(10, 99), r.randint(1900, 2030)))
            elif kind < 0.8:
                fields[self.pick(FLAG_FIELDS)] = r.random() < 0.5
            elif kind < 0.95 or depth:
                fields[self.pick(LIST_FIELDS)] = [self.pick(NOUNS) for _ in range(r.randint(1, 3))]
            else:
                fields[self.pick(TEXT_FIELDS)] = self.json_object(depth + 1)
        return fields

    def structured(self) -> str:
        topic = self.pick(TOPICS)
        request = self.pick(JSON_REQUESTS).format(sentence=self.sentence(topic), topic=topic)
        return chat([("user", request)], json.dumps(self.json_object()))

    def document(self) -> str:
        roll = self.rng.random()
        if roll < 0.35:
            return self.paragraph(self.pick(TOPICS)) + EOS
        if roll < 0.65:
            return self.article()
        if roll < 0.85:
            return self.structured()
        return self.answer()


def corpus(documents: int, seed: int = 0) -> list[str]:
    """``documents`` seeded documents (prose, JSON articles in chat turns, small JSON answers, short chat answers)."""
    writer = CorpusWriter(seed)
    return [writer.document() for _ in range(documents)]
