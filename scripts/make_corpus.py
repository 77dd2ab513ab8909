"""Writes the built-in model's training corpus, python/attnfast/models/data/corpus.txt.

The file is committed; this script documents how it was made and remakes it byte for byte.
Its four kinds of text give the trained model's attention real structure: matching brackets
(attend to the opener), copying (attend to the earlier copy), periodic sequences (attend one
period back) and plain sentences in the style of the capture seed's experiment prompts.
"""

from __future__ import annotations

import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "python/attnfast/models/data/corpus.txt"
WORDS = (  # noqa: SIM905  (a word list that reads as text)
    "data factors primary secondary critical outcome weather rain forecast summary model "
    "attention token context result analysis first finally consider important review value "
    "sentence prompt memory cache layer head step signal pattern answer question"
).split()
SENTENCES = [
    "Please analyze the following data.",
    "First, consider the primary factors: X, Y, and Z.",
    "These are critical to understanding the outcome.",
    "By the way, it's a nice day today.",
    "The weather forecast shows rain tomorrow.",
    "Secondary factors include A and B.",
    "Finally, summarize your findings.",
]


def brackets(rng: random.Random, depth: int = 0) -> str:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(WORDS)
    open_, close = rng.choice(["()", "[]", "{}", "<>"])
    inner = " ".join(brackets(rng, depth + 1) for _ in range(rng.randint(1, 3)))
    return f"{open_}{inner}{close}"


def line(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return brackets(rng)
    if kind == 1:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        return f"copy: {text} | {text}"
    if kind == 2:
        period = [str(rng.randint(0, 9)) for _ in range(rng.randint(2, 5))]
        return " ".join(period * rng.randint(3, 6))
    return " ".join(rng.sample(SENTENCES, rng.randint(2, 4)))


def main() -> None:
    rng = random.Random(20261122)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(line(rng) for _ in range(1200)) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
