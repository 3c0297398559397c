"""Built-in single-turn tasks with exact, verifiable answers.

Short prompts on purpose: on a CPU the prompt length dominates the cost of an episode, and a
135M model follows a short instruction better than a long one. Each task has a difficulty knob
that goes down to "the default model solves some of it", so RL has reward variance to learn from.
"""

from __future__ import annotations

import random

from lifelong.envs.base import Item, Knob, SingleTurnTask, last_number, normalize_word
from lifelong.errors import ConfigError

# Common short English words (public-domain frequency lists); used by the word tasks.
WORDS = [
    "apple",
    "bread",
    "chair",
    "dance",
    "eagle",
    "flame",
    "grape",
    "house",
    "igloo",
    "juice",
    "kite",
    "lemon",
    "mango",
    "night",
    "ocean",
    "piano",
    "queen",
    "river",
    "snake",
    "table",
    "uncle",
    "voice",
    "water",
    "yacht",
    "zebra",
    "angel",
    "beach",
    "candy",
    "dream",
    "earth",
    "field",
    "ghost",
    "heart",
    "image",
    "jelly",
    "knife",
    "light",
    "money",
    "north",
    "olive",
    "paper",
    "quiet",
    "radio",
    "smile",
    "tiger",
    "unity",
    "value",
    "whale",
    "young",
    "brick",
    "cloud",
    "drum",
    "frost",
    "glove",
    "honey",
    "ivory",
    "jewel",
    "lunch",
    "maple",
    "nurse",
    "onion",
    "pearl",
    "quilt",
    "robot",
    "sheep",
    "train",
    "urban",
    "vivid",
    "wheat",
    "yield",
    "zesty",
    "blade",
    "crane",
    "dwarf",
    "elbow",
    "flock",
    "giant",
    "horse",
    "index",
    "joker",
    "koala",
    "lodge",
    "march",
    "noble",
    "orbit",
    "plant",
    "quest",
    "roast",
    "stone",
    "thumb",
    "vapor",
    "wagon",
    "cabin",
    "daisy",
    "feast",
    "grass",
    "hotel",
    "lake",
    "metal",
    "nest",
    "owl",
    "pond",
    "rope",
    "salt",
    "tent",
    "vase",
    "wolf",
    "bell",
    "coat",
    "door",
    "farm",
    "gold",
    "hill",
    "iron",
    "jar",
    "king",
    "lamp",
    "milk",
    "nose",
    "oak",
    "pig",
    "ring",
    "ship",
    "tree",
    "van",
    "wing",
]


def _words_up_to(length: int) -> list[str]:
    """The words of at most `length` letters, in WORDS' order (all of them at 5, the longest)."""
    return [w for w in WORDS if len(w) <= length]


def _check_range(name: str, value: int, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is out of range", f"use an integer from {low} to {high}")
    return value


class Addition(SingleTurnTask):
    """What is a + b? Knob: `max_value` (operands are 0..max_value)."""

    name = "add"
    difficulty = (Knob("max_value", 1),)

    def __init__(self, max_value: int = 20) -> None:
        super().__init__()
        self.max_value = _check_range("max_value", max_value, 1, 10**6)

    def generate(self, rng: random.Random) -> Item:
        a, b = rng.randint(0, self.max_value), rng.randint(0, self.max_value)
        return Item(f"What is {a} + {b}?", str(a + b), {"a": a, "b": b})

    def score(self, answer: str, item: Item) -> float:
        return float(last_number(answer) == item.answer)


class Larger(SingleTurnTask):
    """Which of two numbers is larger? Knob: `max_value`."""

    name = "larger"
    difficulty = (Knob("max_value", 9),)

    def __init__(self, max_value: int = 99) -> None:
        super().__init__()
        self.max_value = _check_range("max_value", max_value, 2, 10**6)

    def generate(self, rng: random.Random) -> Item:
        a, b = rng.sample(range(self.max_value + 1), 2)
        return Item(f"Which is larger, {a} or {b}?", str(max(a, b)), {"a": a, "b": b})

    def score(self, answer: str, item: Item) -> float:
        return float(last_number(answer) == item.answer)


class NextNumber(SingleTurnTask):
    """What number comes after n? Knob: `max_value`."""

    name = "next_number"
    difficulty = (Knob("max_value", 9),)

    def __init__(self, max_value: int = 99, step: int = 1) -> None:
        super().__init__()
        self.max_value = _check_range("max_value", max_value, 1, 10**6)
        self.step_size = _check_range("step", step, 1, 100)

    def generate(self, rng: random.Random) -> Item:
        n = rng.randint(0, self.max_value)
        if self.step_size == 1:
            return Item(f"What number comes after {n}?", str(n + 1), {"n": n})
        return Item(f"What is {self.step_size} more than {n}?", str(n + self.step_size), {"n": n})

    def score(self, answer: str, item: Item) -> float:
        return float(last_number(answer) == item.answer)


class Uppercase(SingleTurnTask):
    """Write a word in capital letters. Exact match on the letters. Knob: `max_length` of the word."""

    name = "uppercase"
    difficulty = (Knob("max_length", 4),)  # 30 words of at most 4 letters; 5 of 3

    def __init__(self, max_length: int = 5) -> None:
        super().__init__()
        self.max_length = _check_range("max_length", max_length, 3, 5)

    def generate(self, rng: random.Random) -> Item:
        w = rng.choice(_words_up_to(self.max_length))
        return Item(f"Write the word '{w}' in capital letters.", w.upper(), {"word": w})

    def score(self, answer: str, item: Item) -> float:
        return float(answer.strip().strip("\"'`*.!?,;: ") == item.answer)


class FirstLetter(SingleTurnTask):
    """What is the first (or last) letter of a word? Knobs: `position` ("first" or "last"), and
    `max_length` of the word."""

    name = "letter"
    difficulty = (Knob("max_length", 4),)

    def __init__(self, position: str = "first", max_length: int = 5) -> None:
        super().__init__()
        if position not in ("first", "last"):
            raise ConfigError(f"position={position!r} is not allowed", "use 'first' or 'last'")
        self.position = position
        self.max_length = _check_range("max_length", max_length, 3, 5)

    def generate(self, rng: random.Random) -> Item:
        w = rng.choice(_words_up_to(self.max_length))
        letter = w[0] if self.position == "first" else w[-1]
        return Item(f"What is the {self.position} letter of the word '{w}'?", letter, {"word": w})

    def score(self, answer: str, item: Item) -> float:
        return float(normalize_word(answer) == item.answer)


class ReverseWord(SingleTurnTask):
    """Spell a word backwards. Knob: `max_length` of the word (3..5)."""

    name = "reverse"
    difficulty = (Knob("max_length", 3),)

    def __init__(self, max_length: int = 4) -> None:
        super().__init__()
        self.max_length = _check_range("max_length", max_length, 3, 5)

    def generate(self, rng: random.Random) -> Item:
        w = rng.choice(_words_up_to(self.max_length))
        return Item(f"Spell the word '{w}' backwards.", w[::-1], {"word": w})

    def score(self, answer: str, item: Item) -> float:
        return float(normalize_word(answer).replace(" ", "").replace("-", "") == item.answer)
