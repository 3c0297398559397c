"""Built-in multi-turn games: the agent acts several times and each observation depends on its moves.

Three games, each with a difficulty knob that goes down to "a 135M model wins some of them":
`guess_number` (higher/lower hints), `wordle` (letter feedback over the built-in word list) and
`maze` (a small grid drawn as text). Observations are short and self-contained (they restate what
the agent needs, such as the range still possible), because every observation is appended to the
context and a small model cannot track a long history. Rewards follow `Game`: 1.0 for a win,
partial credit below 0.5 for progress, 0 for no progress.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from typing import Any

from lifelong.envs.base import Game, Outcome
from lifelong.envs.tasks import WORDS
from lifelong.errors import ConfigError

_INT = re.compile(r"-?\d+")


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """A knob that must be an integer in [low, high]; the error says the allowed range."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is out of range", f"use an integer from {low} to {high}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A knob that must be true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not a boolean", "use true or false")
    return value


class GuessNumber(Game):
    """Guess a secret number; each wrong guess is answered 'higher' or 'lower'.

    Knobs: `max_value` (how many numbers are possible), `max_turns`, and `show_range` (restate the
    range still possible after each guess, so the agent need not remember earlier hints).
    """

    name = "guess_number"

    def __init__(self, max_value: int = 16, max_turns: int = 6, show_range: bool = True) -> None:
        self.size = check_int("max_value", max_value, 2, 10**6)
        need = math.ceil(math.log2(self.size + 1))  # binary search needs this many guesses at most
        if isinstance(max_turns, int) and not isinstance(max_turns, bool) and max_turns < need:
            raise ConfigError(
                f"max_turns={max_turns} is too few to find one of {self.size} numbers",
                f"use max_turns >= {need} (binary search needs {need} guesses), or lower max_value",
            )
        super().__init__(check_int("max_turns", max_turns, need, 1000))
        self.show_range = check_bool("show_range", show_range)

    def start(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        # The window moves with the seed (1-16, 23-38, ...), so the first observation identifies the item.
        self.low = rng.randint(1, 50)
        self.high = self.low + self.size - 1
        self.secret = rng.randint(self.low, self.high)
        self.lo, self.hi = self.low, self.high  # still possible, given the hints so far
        solution = []
        lo, hi = self.low, self.high
        while True:  # binary search wins within ceil(log2(size + 1)) guesses
            guess = (lo + hi) // 2
            solution.append(str(guess))
            if guess == self.secret:
                break
            lo, hi = (guess + 1, hi) if guess < self.secret else (lo, guess - 1)
        observation = f"Guess my number from {self.low} to {self.high}. Reply with one number."
        return observation, {"answer": str(self.secret), "solution": solution}

    def move(self, action: str) -> tuple[str, Outcome]:
        found = _INT.search(action)
        if found is None:
            return f"Reply with one number from {self.lo} to {self.hi}.", Outcome.PLAYING
        guess = int(found.group())
        if guess == self.secret:
            return f"Yes, it is {guess}. You win!", Outcome.WON
        if guess < self.secret:
            hint = "higher"
            if guess >= self.lo:
                self.lo = guess + 1
        else:
            hint = "lower"
            if guess <= self.hi:
                self.hi = guess - 1
        if self.show_range:
            return f"{guess}: my number is {hint}. It is from {self.lo} to {self.hi}.", Outcome.PLAYING
        return f"{guess}: my number is {hint}.", Outcome.PLAYING

    def progress(self) -> float:
        return 1.0 - (self.hi - self.lo + 1) / self.size

    def item_key(self, seed: int) -> str:
        observation, info = self.reset(seed)
        return f"{observation}|{info['answer']}"


def _marks(guess: str, secret: str) -> str:
    """Wordle feedback: G = right letter, right place; Y = in the word elsewhere; - = not in it."""
    marks = ["-"] * len(secret)
    unused: dict[str, int] = {}
    for i, (g, s) in enumerate(zip(guess, secret, strict=True)):
        if g == s:
            marks[i] = "G"
        else:
            unused[s] = unused.get(s, 0) + 1
    for i, g in enumerate(guess):  # yellows only for letters not already matched (standard Wordle)
        if marks[i] == "-" and unused.get(g, 0) > 0:
            marks[i] = "Y"
            unused[g] -= 1
    return "".join(marks)


class Wordle(Game):
    """Guess a secret word; each guess gets letter feedback (G right place, Y elsewhere, - absent).

    Knobs: `length` (4 or 5 letters), `max_turns`, and `choices`: how many candidate words the first
    observation lists (the secret among them), narrowed after each guess to the words that still
    fit the feedback. `choices=0` lists none: plain Wordle, over any letters.
    """

    name = "wordle"

    def __init__(self, length: int = 5, choices: int = 4, max_turns: int = 6) -> None:
        self.length = check_int("length", length, 4, 5)
        self.pool = sorted({w for w in WORDS if len(w) == self.length})
        self.choices = check_int("choices", choices, 0, len(self.pool))
        if self.choices == 1:
            raise ConfigError("choices=1 gives the word away", f"use 0 (no list) or 2 to {len(self.pool)}")
        super().__init__(check_int("max_turns", max_turns, 1, 100))

    def start(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        self.secret = rng.choice(self.pool)
        self.best = 0  # most letters in the right place in one guess
        if self.choices:
            others = rng.sample([w for w in self.pool if w != self.secret], self.choices - 1)
            self.candidates = sorted([self.secret, *others])
            observation = f"Guess the {self.length}-letter word. It is one of: {', '.join(self.candidates)}."
        else:
            self.candidates = []
            observation = f"Guess the {self.length}-letter word. Reply with one word."
        return observation, {"answer": self.secret, "solution": [self.secret]}

    def move(self, action: str) -> tuple[str, Outcome]:
        words = re.findall(r"[a-z]+", action.lower())
        guess = next((w for w in words if len(w) == self.length), None)
        if guess is None:
            return f"Reply with one {self.length}-letter word.", Outcome.PLAYING
        if guess == self.secret:
            return f"Yes, the word is {guess}. You win!", Outcome.WON
        marks = _marks(guess, self.secret)
        self.best = max(self.best, marks.count("G"))
        observation = f"{guess}: {marks} (G right place, Y wrong place, - not in word)."
        if self.candidates:
            self.candidates = [w for w in self.candidates if w != guess and _marks(guess, w) == marks]
            observation += f" Still possible: {', '.join(self.candidates)}."
        return observation, Outcome.PLAYING

    def progress(self) -> float:
        return self.best / self.length

    def item_key(self, seed: int) -> str:
        observation, info = self.reset(seed)
        return f"{observation}|{info['answer']}"


_MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
_ALIASES = {"u": "up", "d": "down", "l": "left", "r": "right", "north": "up", "south": "down", "west": "left"}
_ALIASES["east"] = "right"


def parse_direction(action: str) -> str | None:
    """The first direction word in `action` ('Move right.' -> 'right'); single letters count alone."""
    for word in re.findall(r"[a-z]+", action.lower()):
        if word in _MOVES:
            return word
        if word in _ALIASES and (len(word) > 1 or len(action.strip()) <= 2):
            return _ALIASES[word]
    return None


def shortest_path(grid: list[str], start: tuple[int, int], goal: tuple[int, int]) -> list[str] | None:
    """Shortest list of moves from start to goal, avoiding walls ('#'); None when unreachable."""
    n = len(grid)
    back: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            path: list[str] = []
            while (step := back[cell]) is not None:
                cell, move = step
                path.append(move)
            return path[::-1]
        for move, (dr, dc) in _MOVES.items():
            r, c = cell[0] + dr, cell[1] + dc
            if 0 <= r < n and 0 <= c < n and grid[r][c] != "#" and (r, c) not in back:
                back[(r, c)] = (cell, move)
                queue.append((r, c))
    return None


class GridMaze(Game):
    """Walk from @ to G on a small grid drawn as text, one step (up/down/left/right) per turn.

    Knobs: `size` (the grid is size x size), `walls` (fraction of cells that are walls) and
    `max_turns`. The shortest path is at least 3 steps and at most `max_turns`.
    """

    name = "maze"
    MIN_STEPS = 3

    def __init__(self, size: int = 4, walls: float = 0.2, max_turns: int = 8) -> None:
        self.size = check_int("size", size, 3, 9)
        if not isinstance(walls, int | float) or isinstance(walls, bool) or not 0.0 <= walls <= 0.4:
            raise ConfigError(f"walls={walls!r} is out of range", "use a fraction from 0.0 to 0.4")
        self.walls = float(walls)
        super().__init__(check_int("max_turns", max_turns, self.MIN_STEPS, 200))

    def start(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        n = self.size
        cells = [(r, c) for r in range(n) for c in range(n)]
        for _ in range(1000):  # rejection sampling; almost always succeeds in a few tries
            start, goal = rng.sample(cells, 2)
            rows = [
                "".join("#" if (r, c) not in (start, goal) and rng.random() < self.walls else "." for c in range(n))
                for r in range(n)
            ]
            path = shortest_path(rows, start, goal)
            if path is not None and self.MIN_STEPS <= len(path) <= self.max_turns:
                break
        else:
            raise ConfigError(
                f"maze: no grid with a path of {self.MIN_STEPS}..{self.max_turns} steps at size={n}",
                "raise size or max_turns, or lower walls",
            )
        self.grid, self.pos, self.goal = rows, start, goal
        self.start_distance = len(path)
        observation = f"Move @ to G. Reply up, down, left or right. # is a wall.\n{self.render()}"
        return observation, {"answer": " ".join(path), "solution": path}

    def render(self) -> str:
        rows = [list(row) for row in self.grid]
        rows[self.goal[0]][self.goal[1]] = "G"
        rows[self.pos[0]][self.pos[1]] = "@"
        return "\n".join("".join(row) for row in rows)

    def move(self, action: str) -> tuple[str, Outcome]:
        direction = parse_direction(action)
        if direction is None:
            return f"Reply up, down, left or right.\n{self.render()}", Outcome.PLAYING
        dr, dc = _MOVES[direction]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if not (0 <= r < self.size and 0 <= c < self.size) or self.grid[r][c] == "#":
            return f"Blocked; you did not move.\n{self.render()}", Outcome.PLAYING
        self.pos = (r, c)
        if self.pos == self.goal:
            return "You reached G. You win!", Outcome.WON
        return f"You moved {direction}.\n{self.render()}", Outcome.PLAYING

    def progress(self) -> float:
        path = shortest_path(self.grid, self.pos, self.goal)
        remaining = len(path) if path is not None else self.start_distance
        return max(0.0, 1.0 - remaining / self.start_distance)
