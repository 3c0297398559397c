"""reasoning-gym adapter: any of its procedural datasets as a single-turn task, named `rg:<dataset>`.

A dataset's config fields are the task's difficulty knobs (`make("rg:chain_sum", max_terms=3)`).
Items come from the seed alone: seed s is item `s % BLOCK` of the dataset built with seed
`s - s % BLOCK`, which for reasoning-gym's usual `Random(seed + index)` is exactly `Random(s)`, and
datasets that precompute per-index state (`list_functions`, `word_ladder`) stay within their size.

Featured datasets (`FEATURED`, the ones `lifelong envs` lists) get short prompts built from the
item's metadata, because the datasets' own prompts run to hundreds of characters and a 135M model
follows a short instruction far better, and easy default settings. Every other dataset works by
name with its own prompt and defaults.

Guards, measured on reasoning-gym 0.1.25:
- `puzzle24` scores any 4-number expression that evaluates to 24, used numbers or not, and
  `game_of_life_halting` scores any non-empty answer 1.0: both get checkers of our own.
- `prime_factorization`'s checker raises on non-numeric answers: replaced too.
- `base_conversion` loops forever when `min_base == max_base`; `maze` fails on grids below 4x4:
  refused as bad settings.
- A checker that raises scores 0, and the 0.01-0.05 "consolation" some checkers give any
  well-formed but wrong answer is dropped, so that garbage earns exactly nothing.
Nothing here imports reasoning-gym until an environment is made (the import takes seconds).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import functools
import json
import math
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lifelong.envs.base import Item, Knob, SingleTurnTask, normalize_word
from lifelong.errors import ConfigError, UnknownEnvError

PREFIX = "rg:"
SOURCE = "reasoning-gym"
BLOCK = 1000  # items per constructed dataset; see the module docstring
CONSOLATION = 0.05  # checker scores at or below this are format credit, not partial credit: zeroed

# Datasets that cannot be offered, with the reason (shown when someone asks for them).
EXCLUDED = {
    "composite": "it mixes other datasets; put the datasets in a stream's stages instead",
}

Entry = dict[str, Any]


# ---- checkers of our own -------------------------------------------------------------------------
_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _evaluate(node: ast.AST) -> Fraction:
    """Exact value of an arithmetic expression of integers and + - * / (anything else raises)."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    raise ValueError("not an arithmetic expression")


def score_puzzle24(answer: str, entry: Entry) -> float:
    """1.0 when the answer is an expression using exactly the puzzle's four numbers that makes 24."""
    text = answer.replace("×", "*").replace("÷", "/").split("=")[0].strip()
    if not text or not re.fullmatch(r"[\d\s+\-*/()]+", text):
        return 0.0
    used = sorted(int(n) for n in re.findall(r"\d+", text))
    if used != sorted(entry["metadata"]["numbers"]):
        return 0.0
    try:
        return float(_evaluate(ast.parse(text, mode="eval")) == 24)
    except (ValueError, ZeroDivisionError, SyntaxError, RecursionError):
        return 0.0


def score_halting(answer: str, entry: Entry) -> float:
    """1.0 for the right True/False (the library's checker accepts any non-empty answer)."""
    said = normalize_word(answer)
    said = {"yes": "true", "no": "false"}.get(said, said)
    return float(said == str(entry["answer"]).strip().lower())


def score_prime_factorization(answer: str, entry: Entry) -> float:
    """1.0 for the prime factors (any order, any separator); 0.5 for a factorization into
    non-trivial factors that is not all primes; 0 otherwise (the number itself earns nothing)."""
    factors = sorted(int(f) for f in re.findall(r"\d+", answer))
    if factors == sorted(entry["metadata"]["factors"]):
        return 1.0
    number = entry["metadata"]["number"]
    if len(factors) >= 2 and all(f > 1 for f in factors) and math.prod(factors) == number:
        return 0.5
    return 0.0


# ---- featured datasets ---------------------------------------------------------------------------
def _md(entry: Entry) -> dict[str, Any]:
    return dict(entry["metadata"])


def _base_name(base: int) -> str:
    return {2: "binary", 16: "hexadecimal"}.get(base, f"base {base}")


def _legs_prompt(entry: Entry) -> str:
    found = re.search(r"if you have (.*)\?", entry["question"])
    return f"How many legs do {found.group(1) if found else 'these animals'} have in total?"


@dataclass(frozen=True)
class Featured:
    """A dataset lifelong lists, with a short prompt, easy defaults and (if needed) its own checker."""

    description: str
    knobs: dict[str, Any]  # the difficulty knobs offered, with lifelong's defaults
    prompt: Callable[[Entry], str] | None = None  # None: the dataset's own question
    score: Callable[[str, Entry], float] | None = None  # None: the dataset's own checker
    easier: tuple[Knob, ...] = ()  # the knobs a curriculum may turn down (`Env.difficulty`)


FEATURED: dict[str, Featured] = {
    "chain_sum": Featured(
        "add and subtract a chain of numbers",
        {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2, "allow_negation": False},
        lambda e: f"What is {_md(e)['expression']}?",
        easier=(Knob("max_terms", 2), Knob("max_digits", 1)),
    ),
    "products": Featured(
        "multiply two numbers",
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        lambda e: f"What is {_md(e)['expression']}?",
        easier=(Knob("max_digits", 1),),
    ),
    "gcd": Featured(
        "greatest common divisor",
        {"min_numbers": 2, "max_numbers": 2, "min_value": 1, "max_value": 50},
        lambda e: f"What is the greatest common divisor of {' and '.join(map(str, _md(e)['numbers']))}?",
        easier=(Knob("max_value", 10),),
    ),
    "lcm": Featured(
        "least common multiple",
        {"min_numbers": 2, "max_numbers": 2, "min_value": 1, "max_value": 12},
        lambda e: f"What is the least common multiple of {' and '.join(map(str, _md(e)['numbers']))}?",
        easier=(Knob("max_value", 4),),
    ),
    "count_bits": Featured(
        "count the 1 bits of a number",
        {"min_n": 1, "max_n": 64},
        lambda e: f"How many 1 bits does {_md(e)['number']} have in binary?",
        easier=(Knob("max_n", 8),),
    ),
    "number_sequence": Featured(
        "continue a number sequence",
        {"min_terms": 4, "max_terms": 6, "min_value": -20, "max_value": 20, "max_complexity": 1},
        lambda e: f"What number comes next? {e['question']}",
    ),
    "simple_equations": Featured(
        "solve a linear equation",
        {"min_terms": 2, "max_terms": 2, "min_value": 1, "max_value": 20},
        lambda e: f"Solve for {_md(e)['variable']}: {_md(e)['equation']}",
        easier=(Knob("max_value", 5),),
    ),
    "spell_backward": Featured(
        "spell a word backwards",
        {"min_word_len": 3, "max_word_len": 5},
        lambda e: f"Spell the word '{_md(e)['word']}' backwards.",
        easier=(Knob("max_word_len", 3),),
    ),
    "letter_counting": Featured(
        "count a letter in a few words",
        {"min_words": 1, "max_words": 3},
        lambda e: f'How many times does "{_md(e)["target_letter"]}" appear in "{" ".join(_md(e)["span"])}"?',
        easier=(Knob("max_words", 1),),
    ),
    "base_conversion": Featured(
        "convert a number between bases",
        {"min_base": 2, "max_base": 10, "min_value": 0, "max_value": 31},
        lambda e: (
            f"Convert the {_base_name(_md(e)['source_base'])} number {_md(e)['source_repr']} "
            f"to {_base_name(_md(e)['target_base'])}."
        ),
        easier=(Knob("max_value", 7),),
    ),
    "word_sorting": Featured(
        "sort words by ASCII order",
        {"min_words": 3, "max_words": 4, "min_word_length": 3, "max_word_length": 6},
        lambda e: (
            f"Sort these words in {_md(e)['direction']} ASCII order, comma-separated: "
            f"{', '.join(_md(e)['transformed_words'])}"
        ),
    ),
    "word_sequence_reversal": Featured(
        "reverse a list of words",
        {"min_words": 3, "max_words": 4},
        lambda e: f"Reverse the order of these words, comma-separated: {', '.join(_md(e)['words'])}",
    ),
    "leg_counting": Featured(
        "count the legs of some animals",
        {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 3},
        _legs_prompt,
        easier=(Knob("max_animals", 1), Knob("max_instances", 1)),
    ),
    "syllogism": Featured(
        "does a conclusion follow from two premises?",
        {"invalid_ratio": 0.3, "inversion_probability": 0.3},
        lambda e: (
            f"{_md(e)['premise1']}. {_md(e)['premise2']}. "
            f"Does it follow that {_md(e)['conclusion'][0].lower()}{_md(e)['conclusion'][1:]}? Yes or No."
        ),
    ),
    "prime_factorization": Featured(
        "prime factors of a number",
        {"min_value": 2, "max_value": 50},
        lambda e: f"Write the prime factors of {_md(e)['number']}, like 2 × 2 × 3.",
        score_prime_factorization,
        easier=(Knob("max_value", 12),),
    ),
    "puzzle24": Featured(
        "make 24 from four numbers (checker fixed: the numbers must be used)",
        {"min_value": 1, "max_value": 10},
        lambda e: f"Make 24 from {', '.join(map(str, _md(e)['numbers']))} with + - * / using each number once.",
        score_puzzle24,
    ),
    "maze": Featured(
        "shortest path length in a maze",
        {"min_dist": 1, "max_dist": 4, "min_grid_size": 5, "max_grid_size": 6},
        lambda e: (
            f"How many steps from {_md(e)['start']} to {_md(e)['goal']}? ({_md(e)['wall']} is a wall)\n"
            + "\n".join(_md(e)["grid"])
        ),
    ),
    "caesar_cipher": Featured(
        "decode a Caesar cipher",
        {"min_words": 1, "max_words": 2, "min_rotation": 1, "max_rotation": 3},
        lambda e: f"Decrypt this Caesar cipher: {_md(e)['cipher_text']}",
        easier=(Knob("max_words", 1), Knob("max_rotation", 1)),
    ),
    "count_primes": Featured("count the primes in a range", {"min_n": 1, "max_n": 100}),
    "aiw": Featured("'Alice in Wonderland' sibling and friend questions", {"max_entities": 6}),
    "game_of_life_halting": Featured(
        "will a Game of Life board die out? (checker fixed: it accepted any answer)",
        {"grid_size_x": 12, "grid_size_y": 12, "difficulty": 1, "num_oscillators": 5, "max_simulation_steps": 20},
        score=score_halting,
    ),
}

# Checkers replaced whether or not the dataset is used with lifelong's short prompt.
FIXED_CHECKERS: dict[str, Callable[[str, Entry], float]] = {
    "puzzle24": score_puzzle24,
    "game_of_life_halting": score_halting,
    "prime_factorization": score_prime_factorization,
}


# ---- the library, loaded on first use ------------------------------------------------------------
def _datasets() -> dict[str, tuple[type, type]]:
    """reasoning-gym's registry: dataset name -> (dataset class, config class)."""
    from reasoning_gym.factory import DATASETS

    return dict(DATASETS)


def dataset_names() -> list[str]:
    return sorted(n for n in _datasets() if n not in EXCLUDED)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_knobs(dataset: str) -> dict[str, Any]:
    """All of a dataset's config fields but `seed` and `size`, with the library's defaults."""
    _, config_cls = _datasets()[dataset]
    return {f.name: _default(f) for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")}


def _coerce(dataset: str, name: str, value: Any, default: Any) -> Any:
    """Check a knob's type against its default; YAML lists become the tuples configs expect."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, enum.Enum):
        try:
            value, ok = type(default)(value), True
        except ValueError:
            ok = False
    elif isinstance(default, tuple | list) and isinstance(value, tuple | list):
        value, ok = type(default)(value), True
    else:
        ok = default is None or isinstance(value, type(default))
    if not ok:
        if isinstance(default, enum.Enum):
            allowed = ", ".join(repr(e.value) for e in type(default))
            raise ConfigError(f"{PREFIX}{dataset}: {name}={value!r} is not allowed", f"use one of {allowed}")
        fix = f"use a {type(default).__name__} like the default {name}={default!r}"
        raise ConfigError(f"{PREFIX}{dataset}: {name}={value!r} has the wrong type", fix)
    return value


def _guard_known_bugs(dataset: str, config: dict[str, Any]) -> None:
    if dataset == "base_conversion" and config.get("min_base") == config.get("max_base"):
        raise ConfigError(
            "rg:base_conversion with min_base == max_base never finishes (it looks for two different bases)",
            "give max_base a larger value than min_base",
        )
    if dataset == "maze" and config.get("min_grid_size", 5) < 4:
        raise ConfigError(
            "rg:maze cannot build grids smaller than 4x4 (reasoning-gym raises)", "use min_grid_size >= 4"
        )


# Settings by cache key: the dataset cache is keyed by text, but gets the settings as given (enums
# and tuples intact, which a JSON round trip would turn into strings and lists).
_SETTINGS: dict[str, dict[str, Any]] = {}


def _settings_key(dataset: str, config: dict[str, Any]) -> str:
    key = json.dumps([dataset, config], sort_keys=True, default=repr)
    _SETTINGS[key] = config
    return key


@functools.lru_cache(maxsize=16)
def _dataset(dataset: str, settings_key: str, block: int) -> Any:
    """The dataset holding the items of seeds block..block+BLOCK-1 (a few are kept: probe seeds
    share one block, so evaluating a probe set builds one dataset)."""
    from reasoning_gym.factory import create_dataset

    return create_dataset(dataset, seed=block, size=BLOCK, **_SETTINGS[settings_key])


class _Isolated:
    """Keep the library's use of the global `random` (and numpy's, e.g. `pool_matrix`) from
    disturbing the learner: generation is seeded by index anyway, so the outer state is restored."""

    def __enter__(self) -> None:
        self.state = random.getstate()
        self.np_state = None
        try:
            import numpy as np

            self.np_state = np.random.get_state()
        except ImportError:  # pragma: no cover - numpy comes with reasoning-gym
            pass

    def __exit__(self, *exc: object) -> None:
        random.setstate(self.state)
        if self.np_state is not None:
            import numpy as np

            np.random.set_state(self.np_state)


_VALIDATED: set[tuple[str, bool]] = set()


class ReasoningGymTask(SingleTurnTask):
    """One reasoning-gym dataset as a single-turn task (see the module docstring)."""

    def __init__(self, dataset: str, short_prompt: bool, **config: Any) -> None:
        super().__init__()
        self.dataset = dataset
        self.name = f"{PREFIX}{dataset}"  # type: ignore[misc]
        self.featured = FEATURED.get(dataset) if short_prompt else None
        defaults = config_knobs(dataset)
        unknown = sorted(set(config) - set(defaults))
        if unknown:
            shown = {**defaults, **(self.featured.knobs if self.featured else {})}
            allowed = ", ".join(f"{k}={getattr(v, 'value', v)!r}" for k, v in shown.items())
            raise ConfigError(f"{self.name} has no difficulty knob {', '.join(unknown)}", f"its knobs are: {allowed}")
        self.config = {k: _coerce(dataset, k, v, defaults[k]) for k, v in config.items()}
        self._defaults = defaults
        self.difficulty = self.featured.easier if self.featured else ()
        self._key = _settings_key(dataset, self.config)
        self.checker = (self.featured.score if self.featured else None) or FIXED_CHECKERS.get(dataset)
        key = (self._key, short_prompt)
        if key not in _VALIDATED:  # once per setting: bad settings fail at make(), not mid-run
            _guard_known_bugs(dataset, {**defaults, **self.config})
            self.item_for(0)
            _VALIDATED.add(key)

    def generate(self, rng: random.Random) -> Item:
        return self.item_for(rng.randrange(2**31))

    def knob(self, name: str) -> int:
        return int(self.config.get(name, self._defaults[name]))

    def item_for(self, seed: int | None) -> Item:
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        block, index = seed - seed % BLOCK, seed % BLOCK
        try:
            with _Isolated():
                entry = _dataset(self.dataset, self._key, block)[index]
        except (AssertionError, ValueError, TypeError, RuntimeError, KeyError) as exc:
            raise ConfigError(
                f"{self.name} cannot generate items with {self.config or 'its defaults'} ({type(exc).__name__}: {exc})",
                "change the difficulty knobs (`lifelong envs` lists them)",
            ) from exc
        question = self.featured.prompt(entry) if self.featured and self.featured.prompt else entry["question"]
        return Item(question, str(entry["answer"]), {"dataset": self.dataset}, hidden=entry)

    def score(self, answer: str, item: Item) -> float:
        entry = item.hidden
        try:
            with _Isolated():
                if self.checker is not None:
                    reward = float(self.checker(answer, entry))
                else:
                    reward = float(_dataset(self.dataset, self._key, 0).score_answer(answer, entry))
        except Exception:  # a checker that raises on odd input (a known bug) means a wrong answer
            return 0.0
        if not math.isfinite(reward) or reward <= CONSOLATION:
            return 0.0
        return min(reward, 1.0)


def featured_factory(dataset: str) -> Callable[..., ReasoningGymTask]:
    """A factory for a featured dataset whose keyword defaults are lifelong's easy settings."""
    knobs = FEATURED[dataset].knobs

    def make(**config: Any) -> ReasoningGymTask:
        return ReasoningGymTask(dataset, True, **{**knobs, **config})

    make.__doc__ = FEATURED[dataset].description
    return make


def generic_factory(dataset: str) -> Callable[..., ReasoningGymTask]:
    def make(**config: Any) -> ReasoningGymTask:
        return ReasoningGymTask(dataset, False, **config)

    return make


def resolve(dataset: str) -> tuple[Callable[..., ReasoningGymTask], dict[str, Any], str]:
    """Factory, knobs and description for `rg:<dataset>` not featured; unknown names list close ones."""
    if dataset in EXCLUDED:
        raise UnknownEnvError(f"{PREFIX}{dataset} is left out: {EXCLUDED[dataset]}", "pick another dataset")
    names = dataset_names()
    if dataset not in names:
        close = difflib.get_close_matches(dataset, names, n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(PREFIX + c for c in close)}?"
            if close
            else f"reasoning-gym has {len(names)} datasets, e.g. {', '.join(PREFIX + n for n in names[:5])}"
        )
        raise UnknownEnvError(f"unknown reasoning-gym dataset {dataset!r}", hint)
    dataset_cls, _ = _datasets()[dataset]
    doc = (dataset_cls.__doc__ or "").strip().split("\n")[0]
    return generic_factory(dataset), config_knobs(dataset), f"{doc} (reasoning-gym's own prompt)"
