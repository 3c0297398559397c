"""General-ability probes: skills the pretrained model already has, to measure forgetting of them.

`facts` asks simple factual questions and `instruct` gives short instructions with one right reply.
Both are written by the project (not downloaded) and scored exactly, and the base model does them
reasonably, so a drop on them during training is forgetting, not noise. Streams evaluate them with
the other held-out probes and never train on them. Consecutive seeds give distinct items (seed
modulo the item count), so a probe set of up to `len(FACTS)` seeds never repeats a question.
"""

from __future__ import annotations

import random
import re

from lifelong.envs.base import Item, SingleTurnTask

# (question, accepted answers). Common knowledge a small instruction-tuned model should know.
FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of England?", ("london",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Greece?", ("athens",)),
    ("How many days are in a week?", ("7", "seven")),
    ("How many months are in a year?", ("12", "twelve")),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many legs does a dog have?", ("4", "four")),
    ("How many sides does a triangle have?", ("3", "three")),
    ("How many sides does a square have?", ("4", "four")),
    ("How many continents are there?", ("7", "seven")),
    ("How many wheels does a bicycle have?", ("2", "two")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What color is grass?", ("green",)),
    ("What color is snow?", ("white",)),
    ("What color is a ripe banana?", ("yellow",)),
    ("What color is coal?", ("black",)),
    ("What color do you get by mixing red and white?", ("pink",)),
    ("What color do you get by mixing blue and yellow?", ("green",)),
    ("Which planet do we live on?", ("earth",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("What star is closest to the Earth?", ("sun", "the sun")),
    ("What do bees make?", ("honey",)),
    ("What do cows drink?", ("water",)),
    ("What animal says moo?", ("cow", "a cow")),
    ("What animal barks?", ("dog", "a dog")),
    ("What animal says meow?", ("cat", "a cat")),
    ("What is the largest ocean on Earth?", ("pacific", "pacific ocean", "the pacific ocean", "the pacific")),
    ("What is frozen water called?", ("ice",)),
    ("What gas do humans need to breathe?", ("oxygen",)),
    ("What is the boiling point of water in degrees Celsius?", ("100", "100°c", "100 degrees")),
    ("What is the freezing point of water in degrees Celsius?", ("0", "0°c", "zero", "0 degrees")),
    ("Which season comes after winter?", ("spring",)),
    ("Which season comes after summer?", ("autumn", "fall")),
    ("What is the first month of the year?", ("january",)),
    ("What is the last month of the year?", ("december",)),
    ("What day comes after Monday?", ("tuesday",)),
    ("What day comes after Friday?", ("saturday",)),
    ("What language is spoken in France?", ("french",)),
    ("What language is spoken in Spain?", ("spanish",)),
    ("What language is spoken in Germany?", ("german",)),
    ("What do we call a baby dog?", ("puppy", "a puppy")),
    ("What do we call a baby cat?", ("kitten", "a kitten")),
    ("Which organ pumps blood through the body?", ("heart", "the heart")),
    ("What do plants need from the sun to grow?", ("light", "sunlight")),
    ("What is the opposite of day?", ("night",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare", "william shakespeare")),
    ("What is the tallest animal in the world?", ("giraffe", "the giraffe", "a giraffe")),
    ("What is the largest animal in the world?", ("blue whale", "the blue whale", "whale")),
    ("What fruit keeps the doctor away, in the saying?", ("apple", "an apple")),
    ("What shape is a ball?", ("round", "sphere", "a sphere", "circle")),
    ("What is the currency of the United States?", ("dollar", "the dollar", "us dollar", "dollars")),
    ("How many players are on a soccer team on the field?", ("11", "eleven")),
    ("What is H2O commonly called?", ("water",)),
    ("Which direction does the sun rise from?", ("east", "the east")),
)

_NUMBER_WORDS = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
    "twenty",
)
_OPPOSITES = (
    ("hot", "cold"),
    ("up", "down"),
    ("big", "small"),
    ("yes", "no"),
    ("day", "night"),
    ("open", "closed"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("old", "new"),
    ("left", "right"),
    ("wet", "dry"),
    ("light", "dark"),
    ("in", "out"),
    ("full", "empty"),
    ("high", "low"),
)
_REPLY_WORDS = ("yes", "no", "ok", "done", "hello", "ready", "blue", "red", "apple", "stop", "go", "thanks")
_ECHO_WORDS = ("cat", "dog", "sun", "tree", "book", "milk", "rain", "star", "fish", "bird", "moon", "road")


def _clean(text: str) -> str:
    """Lower-case, drop quotes and punctuation at the ends, collapse spaces."""
    return " ".join(text.strip().strip("\"'`*.!?,;: ").lower().split())


def matches(answer: str, accepted: tuple[str, ...]) -> bool:
    """The answer is one of `accepted`, or a short phrase that contains one as whole words.

    Short answers only (at most 6 words): listing many candidates must not count as knowing.
    """
    text = _clean(answer)
    if text in accepted:
        return True
    if len(text.split()) > 6:
        return False
    return any(re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", text) for a in accepted)


def _instructions() -> tuple[Item, ...]:
    """Every instruct item (about as many of each kind), in a fixed shuffled order so that
    consecutive seeds mix the kinds."""
    items = [Item(f"Reply with only the word '{w}'.", w, {"kind": "reply"}) for w in _REPLY_WORDS]
    pairs = random.Random(1).sample([(a, b) for a in _ECHO_WORDS for b in _ECHO_WORDS if a != b], 20)
    items += [Item(f"Repeat exactly: {a} {b}", f"{a} {b}", {"kind": "repeat"}) for a, b in pairs]
    items += [
        Item(f"Write the number {w} in digits.", str(n), {"kind": "digits"}) for n, w in enumerate(_NUMBER_WORDS) if n
    ]
    items += [
        Item(f"What is the opposite of '{a}'? Reply with one word.", b, {"kind": "opposite"}) for a, b in _OPPOSITES
    ]
    random.Random(0).shuffle(items)
    return tuple(items)


INSTRUCTIONS = _instructions()


class Facts(SingleTurnTask):
    """Simple factual questions written by the project (general-ability probe)."""

    name = "facts"

    def generate(self, rng: random.Random) -> Item:
        return self.item_for(rng.randrange(len(FACTS)))

    def item_for(self, seed: int | None) -> Item:
        if seed is None:
            return self.generate(random.Random())
        question, accepted = FACTS[seed % len(FACTS)]
        return Item(question, accepted[0], {"accepted": list(accepted)})

    def score(self, answer: str, item: Item) -> float:
        return float(matches(answer, tuple(item.meta["accepted"])))


class Instruct(SingleTurnTask):
    """Short instructions with one right reply (general-ability probe): reply with a given word,
    repeat two words, write a number in digits, give an opposite."""

    name = "instruct"

    def generate(self, rng: random.Random) -> Item:
        return rng.choice(INSTRUCTIONS)

    def item_for(self, seed: int | None) -> Item:
        return self.generate(random.Random()) if seed is None else INSTRUCTIONS[seed % len(INSTRUCTIONS)]

    def score(self, answer: str, item: Item) -> float:
        return float(_clean(answer) == item.answer)
