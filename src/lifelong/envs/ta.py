"""textarena adapter: its games offline, with compact observations and scripted opponents.

textarena runs the rules (move validation, win detection, its own invalid-move allowance); this
module decides what the agent sees and what it earns:
- Compact observations rendered from the game state (a few lines), instead of textarena's prompt
  plus the whole message history, which runs to thousands of characters after a few turns.
- Plain answers ("5", "up", "A C") are put into textarena's bracket format for the agent.
- Two-player games are played against a scripted opponent whose moves depend only on the seed and
  the position, so every seed is reproducible and a winning line can be computed for it.
- textarena reseeds Python's global `random` on every reset and draws from it during play: each
  game runs on a generator state of its own (`own_random`), so the learner's randomness is
  neither disturbed nor shared.
- Each game's start varies with the seed (a window of numbers, an opening clue, a scrambled
  tower, random piles), and rewards follow `Game`: 1.0 for a win, at most 0.5 for progress.

Curated games are listed as `ta:<game id>`; any other single-player game that runs offline
is reachable by id through a generic adapter (textarena's own prompt, no ground truth). Games that
need the network or do not run on this Python are refused by name (`LEFT_OUT`).
Nothing here imports textarena until a game is made (the import takes about two seconds).
"""

from __future__ import annotations

import difflib
import importlib
import random
import re
from collections.abc import Callable
from typing import Any, ClassVar

from lifelong.envs.base import Env, Game, Outcome, StepResult, own_random
from lifelong.envs.games import check_int, parse_direction, shortest_path
from lifelong.errors import ConfigError, UnknownEnvError

PREFIX = "ta:"
SOURCE = "textarena"

_WORD_DATA = "downloads its word lists (nltk data) from the network"
_LLM = "calls an online LLM (OpenRouter) for its other players or judge"
_PY312 = "does not import on Python 3.11 (a Python 3.12 f-string)"
LEFT_OUT: dict[str, str] = {
    **{g: _WORD_DATA for g in ("Codenames", "DontSayIt", "Hangman", "LetterAuction", "SpellingBee")},
    **{g: _WORD_DATA for g in ("WordChains", "WordLadder", "WordSearch", "Wordle")},
    **{g: _LLM for g in ("Debate", "GuessWho", "ScenarioPlanning", "TwentyQuestions")},
    **{g: _PY312 for g in ("Checkers", "Chess", "IteratedStagHunt", "ReverseTicTacToe", "UltimateTexasHoldem")},
    "Klondike": "has a syntax error in textarena 0.7.4",
    "BabyAiText": "needs the `gym` package, which lifelong does not install",
    "ScorableGames": "its game configuration files are missing from the textarena 0.7.4 package",
    "UsedCarNegotiation": "its data files are missing from the textarena 0.7.4 package",
    "UsedCar": "its module is missing from the textarena 0.7.4 package",
}


def _game_family(game_id: str) -> str:
    return game_id.split("-v", 1)[0]


def _load(entry_point: str) -> Any:
    module, _, cls = entry_point.partition(":")
    return getattr(importlib.import_module(module), cls)


def _admin_reasons(messages: list[tuple[int, str, Any]]) -> list[str]:
    """The reasons in textarena's invalid-move messages, without its boilerplate."""
    reasons = []
    for _, text, kind in messages:
        if getattr(kind, "name", "") == "GAME_ADMIN":
            found = re.search(r"Reason: (.*?)(?: Please resubmit|$)", text, re.S)
            reasons.append(f"Invalid move: {(found.group(1) if found else text).strip()}")
    return reasons


class TextArenaGame(Game):
    """A textarena game behind the `Game` interface (see the module docstring).

    Subclasses name the textarena entry point and implement `setup` (after textarena's reset:
    adjust the start, return info with answer and solution), `observe` (the compact observation),
    `to_action` (plain answer -> textarena action) and, for two-player games, `opponent_action`.
    """

    entry_point: ClassVar[str]
    num_players: ClassVar[int] = 1

    def __init__(self, max_turns: int) -> None:
        super().__init__(max_turns)
        self._random = [random.Random(0).getstate()]
        self.env: Any = None
        self.agent = 0  # the agent's player id
        self.notes: list[str] = []  # invalid-move reasons since the last observation

    # ---- what subclasses provide -------------------------------------------------------------
    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        return {}

    def setup(self, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def observe(self, first: bool) -> str:
        raise NotImplementedError

    def to_action(self, answer: str) -> str:
        return answer

    def opponent_action(self) -> str:
        raise NotImplementedError(f"{self.name} has no opponent")

    # ---- the loop around textarena ---------------------------------------------------------------
    def start(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        self.notes = []
        seed = rng.randrange(2**31)
        with own_random(self._random):
            self.env = _load(self.entry_point)(**self.env_kwargs(rng))
            self.env.reset(num_players=self.num_players, seed=seed)
            info = self.setup(rng)
            self._opponent_turns(done=False)
            self._drain()
        return self.observe(first=True), info

    def move(self, action: str) -> tuple[str, Outcome]:
        with own_random(self._random):
            done, _ = self.env.step(action=self.to_action(action))
            self._drain()
            done = self._opponent_turns(done)
        outcome = Outcome.PLAYING
        observation = self.observe(first=False)
        if done:
            rewards = self.env.state.rewards or {}
            outcome = Outcome.WON if rewards.get(self.agent, 0) >= 1 else Outcome.LOST
            reason = self.env.state.game_info.get(self.agent, {}).get("reason")
            observation += f"\nGame over: {reason}" if reason else "\nGame over."
        if self.notes:
            observation = " ".join(self.notes) + "\n" + observation
            self.notes = []
        return observation, outcome

    def _opponent_turns(self, done: bool) -> bool:
        while not done and self.num_players > 1 and self.env.state.current_player_id != self.agent:
            done, _ = self.env.step(action=self.opponent_action())
            self._drain()
        return bool(done)

    def _drain(self) -> None:
        """Keep textarena's message queues from growing; remember why a move was refused."""
        for pid in range(self.num_players):
            messages = self.env.state.observations.get(pid, [])
            if pid == self.agent:
                self.notes += _admin_reasons(messages)
            self.env.state.observations[pid] = []

    @property
    def game_state(self) -> dict[str, Any]:
        return self.env.state.game_state  # type: ignore[no-any-return]

    def item_key(self, seed: int) -> str:
        observation, info = self.reset(seed)
        return f"{observation}|{info['answer']}"


class GuessTheNumber(TextArenaGame):
    """Guess a number with higher/lower hints (textarena GuessTheNumber). Knobs: `max_value`
    (how many numbers are possible; the window moves with the seed), `max_turns`."""

    name = "ta:GuessTheNumber-v0"
    entry_point = "textarena.envs.GuessTheNumber.env:GuessTheNumberEnv"

    def __init__(self, max_value: int = 20, max_turns: int = 8) -> None:
        self.size = check_int("max_value", max_value, 2, 10**6)
        super().__init__(check_int("max_turns", max_turns, self.size.bit_length(), 1000))

    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        self.low = rng.randint(1, 50)
        self.high = self.low + self.size - 1
        return {"min_number": self.low, "max_number": self.high, "max_turns": self.max_turns}

    def setup(self, rng: random.Random) -> dict[str, Any]:
        secret, lo, hi, solution = self.env.game_number, self.low, self.high, []
        while True:
            guess = (lo + hi) // 2
            solution.append(str(guess))
            if guess == secret:
                return {"answer": str(secret), "solution": solution}
            lo, hi = (guess + 1, hi) if guess < secret else (lo, guess - 1)

    def observe(self, first: bool) -> str:
        history = self.game_state["guess_history"]
        if (self.env.state.rewards or {}).get(0) == 1:
            return f"Yes, it is {self.env.game_number}."
        if first or not history:
            return f"Guess the number from {self.low} to {self.high}. Reply with one number."
        guess, hint = history[-1]
        return f"{guess} is wrong; the number is {hint}."

    def to_action(self, answer: str) -> str:
        found = re.search(r"\d+", answer)
        return f"[{found.group()}]" if found else answer

    def progress(self) -> float:
        history = self.game_state["guess_history"]
        if not history:
            return 0.0
        return max(0.0, 1.0 - abs(history[-1][0] - self.env.game_number) / (self.high - self.low))


class Mastermind(TextArenaGame):
    """Crack a code from black/white peg feedback (textarena Mastermind), with one opening clue.
    Knobs: `code_length`, `num_numbers` (digits 1..num_numbers, no repeats), `max_turns`."""

    name = "ta:Mastermind-v0"
    entry_point = "textarena.envs.Mastermind.env:MastermindEnv"

    def __init__(self, code_length: int = 3, num_numbers: int = 5, max_turns: int = 8) -> None:
        self.length = check_int("code_length", code_length, 2, 6)
        self.digits = check_int("num_numbers", num_numbers, self.length, 9)
        super().__init__(check_int("max_turns", max_turns, 1, 100))

    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        return {
            "code_length": self.length,
            "num_numbers": self.digits,
            "max_turns": self.max_turns,
            "duplicate_numbers": False,
        }

    def setup(self, rng: random.Random) -> dict[str, Any]:
        secret = list(self.game_state["secret_code"])
        while True:  # an opening clue (not a turn): makes the start depend on the seed, and helps
            clue = rng.sample(range(1, self.digits + 1), self.length)
            if clue != secret:
                break
        black, white = self.env._evaluate_guess(clue)
        self.clue = f"{' '.join(map(str, clue))} -> {black} black, {white} white"
        code = " ".join(map(str, secret))
        return {"answer": code, "solution": [code]}

    def observe(self, first: bool) -> str:
        history = self.game_state["history"]
        if first:
            example = " ".join(str(d) for d in range(1, self.length + 1))
            return (
                f"Find the code: {self.length} different digits from 1 to {self.digits}. Reply like '{example}'. "
                f"Black = right digit, right place; white = right digit, wrong place. Clue: {self.clue}."
            )
        if not history:
            return "Reply with the digits of your guess."
        last = history[-1]
        return f"{' '.join(map(str, last['guess']))} -> {last['black']} black, {last['white']} white."

    def to_action(self, answer: str) -> str:
        digits = re.findall(r"\d", answer)
        return f"[{' '.join(digits)}]" if len(digits) == self.length else answer

    def progress(self) -> float:
        history = self.game_state["history"]
        if not history:
            return 0.0
        return (history[-1]["black"] + 0.5 * history[-1]["white"]) / self.length


def _hanoi_moves(towers: dict[str, list[int]], n: int, target: str) -> list[str]:
    """Moves that bring disks 1..n onto `target` from any legal position (standard recursion)."""
    where = {disk: peg for peg, disks in towers.items() for disk in disks}
    moves: list[str] = []

    def solve(k: int, to: str) -> None:
        if k == 0:
            return
        source = where[k]
        if source == to:
            solve(k - 1, to)
            return
        spare = ({"A", "B", "C"} - {source, to}).pop()
        solve(k - 1, spare)
        moves.append(f"{source} {to}")
        where[k] = to
        solve(k - 1, to)

    solve(n, target)
    return moves


class TowerOfHanoi(TextArenaGame):
    """Bring every disk to peg C (textarena TowerOfHanoi), from a scrambled legal start.
    Knobs: `num_disks`, `max_turns`."""

    name = "ta:TowerOfHanoi-v0"
    entry_point = "textarena.envs.TowerOfHanoi.env:TowerOfHanoiEnv"

    def __init__(self, num_disks: int = 3, max_turns: int = 10) -> None:
        self.disks = check_int("num_disks", num_disks, 2, 6)
        super().__init__(check_int("max_turns", max_turns, 2**self.disks - 1, 1000))

    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        return {"num_disks": self.disks, "max_turns": 10_000}  # lifelong's max_turns governs

    def _on_c(self) -> int:
        """Disks already in place: stacked on C from the bottom in the right order."""
        placed = 0
        for have, want in zip(self.game_state["towers"]["C"], range(self.disks, 0, -1), strict=False):
            if have != want:
                break
            placed += 1
        return placed

    def setup(self, rng: random.Random) -> dict[str, Any]:
        while True:
            pegs = [rng.choice("ABC") for _ in range(self.disks)]
            if pegs.count("C") < self.disks:
                break
        towers = {p: [d for d in range(self.disks, 0, -1) if pegs[d - 1] == p] for p in "ABC"}
        self.game_state["towers"] = towers
        self.placed_at_start = self._on_c()
        moves = _hanoi_moves(towers, self.disks, "C")
        return {"answer": "; ".join(moves), "solution": moves}

    def _render(self) -> str:
        return "\n".join(f"{p}: {' '.join(map(str, d)) or '-'}" for p, d in self.game_state["towers"].items())

    def observe(self, first: bool) -> str:
        if first:
            return (
                "Move all disks to C, one at a time, never a bigger disk on a smaller one. "
                f"Reply with a move like 'A C'.\n{self._render()}"
            )
        return self._render()

    def to_action(self, answer: str) -> str:
        pegs = re.findall(r"\b[ABC]\b", answer) or re.findall(r"\b[abc]\b", answer)
        return f"[{pegs[0].upper()} {pegs[1].upper()}]" if len(pegs) >= 2 else answer

    def progress(self) -> float:
        gained = self._on_c() - self.placed_at_start
        return max(0.0, gained / (self.disks - self.placed_at_start))


class FrozenLake(TextArenaGame):
    """Walk from P to G without stepping into a hole H (textarena FrozenLake).
    Knobs: `size` (grid side), `num_holes`, `max_turns`."""

    name = "ta:FrozenLake-v0"
    entry_point = "textarena.envs.FrozenLake.env:FrozenLakeEnv"

    def __init__(self, size: int = 4, num_holes: int = 3, max_turns: int = 12) -> None:
        self.size = check_int("size", size, 3, 8)
        self.holes = check_int("num_holes", num_holes, 0, self.size * self.size // 3)
        super().__init__(check_int("max_turns", max_turns, 2 * (self.size - 1), 1000))

    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        return {"size": self.size, "num_holes": self.holes, "randomize_start_goal": False}

    def _walls(self) -> list[str]:
        return ["".join("#" if cell == "H" else "." for cell in row) for row in self.game_state["grid"]]

    def setup(self, rng: random.Random) -> dict[str, Any]:
        path = shortest_path(self._walls(), self.game_state["player_pos"], self.game_state["goal_pos"]) or []
        if len(path) > self.max_turns:
            raise ConfigError(
                f"{self.name}: this lake needs {len(path)} steps but max_turns={self.max_turns}", "raise max_turns"
            )
        self.start_distance = len(path)
        return {"answer": " ".join(path), "solution": path}

    def _render(self) -> str:
        rows = [["." if cell == " " else cell for cell in row] for row in self.game_state["grid"]]
        r, c = self.game_state["player_pos"]
        rows[r][c] = "P"
        return "\n".join("".join(row) for row in rows)

    def observe(self, first: bool) -> str:
        if first:
            return f"Walk from P to G; never step on H. Reply up, down, left or right.\n{self._render()}"
        return self._render()

    def to_action(self, answer: str) -> str:
        direction = parse_direction(answer)
        return f"[{direction}]" if direction else answer

    def progress(self) -> float:
        path = shortest_path(self._walls(), self.game_state["player_pos"], self.game_state["goal_pos"])
        remaining = len(path) if path is not None else self.start_distance
        return max(0.0, 1.0 - remaining / max(self.start_distance, 1))


class Nim(TextArenaGame):
    """Nim against a scripted opponent that plays random legal moves (textarena Nim, two players).
    Whoever takes the last object wins; the piles (random, first player can force a win) and the
    opponent's moves follow the seed. Knobs: `piles`, `max_pile`, `max_turns`."""

    name = "ta:Nim-v0"
    entry_point = "textarena.envs.Nim.env:NimEnv"
    num_players = 2

    def __init__(self, piles: int = 3, max_pile: int = 4, max_turns: int = 8) -> None:
        self.num_piles = check_int("piles", piles, 1, 6)
        self.max_pile = check_int("max_pile", max_pile, 1, 9)
        need = (self.num_piles * self.max_pile + 1) // 2  # the agent's moves if both take one at a time
        super().__init__(check_int("max_turns", max_turns, need, 1000))

    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        while True:  # a position the first player (the agent) can win
            piles = [rng.randint(1, self.max_pile) for _ in range(self.num_piles)]
            nim_sum = 0
            for p in piles:
                nim_sum ^= p
            if nim_sum:
                break
        self.opponent_seed = rng.randrange(2**31)
        self.opponent = random.Random(self.opponent_seed)
        self.last_opponent = ""
        return {"piles": piles}

    @staticmethod
    def _random_move(piles: list[int], rng: random.Random) -> tuple[int, int]:
        pile = rng.choice([i for i, p in enumerate(piles) if p])
        return pile, rng.randint(1, piles[pile])

    @staticmethod
    def _winning_move(piles: list[int]) -> tuple[int, int]:
        nim_sum = 0
        for p in piles:
            nim_sum ^= p
        for i, p in enumerate(piles):
            if p ^ nim_sum < p:
                return i, p - (p ^ nim_sum)
        pile = next(i for i, p in enumerate(piles) if p)  # losing position: take one and hope
        return pile, 1

    def setup(self, rng: random.Random) -> dict[str, Any]:
        piles, opponent, moves = list(self.game_state["piles"]), random.Random(self.opponent_seed), []
        while True:  # optimal play against this seed's opponent, which draws as in the real game
            pile, take = self._winning_move(piles)
            piles[pile] -= take
            moves.append(f"{pile} {take}")
            if not any(piles):
                break
            pile, take = self._random_move(piles, opponent)
            piles[pile] -= take
        return {"answer": "; ".join(moves), "solution": moves}

    def opponent_action(self) -> str:
        pile, take = self._random_move(self.game_state["piles"], self.opponent)
        self.last_opponent = f"Opponent took {take} from pile {pile}. "
        return f"[{pile} {take}]"

    def _render(self) -> str:
        return "Piles: " + " ".join(f"{i}:{p}" for i, p in enumerate(self.game_state["piles"]))

    def observe(self, first: bool) -> str:
        if first:
            return (
                "Nim: take one or more objects from one pile; whoever takes the last object wins. "
                f"Reply 'pile count', e.g. '0 2'.\n{self._render()}"
            )
        said, self.last_opponent = self.last_opponent, ""
        return said + self._render()

    def to_action(self, answer: str) -> str:
        numbers = re.findall(r"\d+", answer)
        return f"[{numbers[0]} {numbers[1]}]" if len(numbers) >= 2 else answer


_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


def _winner(board: list[str]) -> str:
    for a, b, c in _LINES:
        if board[a] and board[a] == board[b] == board[c]:
            return board[a]
    return ""


class TicTacToe(TextArenaGame):
    """Tic-tac-toe against a scripted opponent (textarena TicTacToe, two players). The seed picks
    who starts and how the opponent plays; `opponent` is "random" (any free cell) or "blocker"
    (takes a win, blocks yours, else random). Every seed has a winning line for the agent."""

    name = "ta:TicTacToe-v0"
    entry_point = "textarena.envs.TicTacToe.env:TicTacToeEnv"
    num_players = 2

    def __init__(self, opponent: str = "random", max_turns: int = 5) -> None:
        if opponent not in ("random", "blocker"):
            raise ConfigError(f"opponent={opponent!r} is not allowed", "use 'random' or 'blocker'")
        self.style = opponent
        super().__init__(check_int("max_turns", max_turns, 5, 100))

    def _board(self) -> list[str]:
        return [cell for row in self.game_state["board"] for cell in row]

    def _symbol(self, player: int) -> str:
        return "X" if player == 1 else "O"  # textarena's convention

    def _opponent_cell(self, board: list[str], seed: int) -> int:
        """The opponent's move: a pure function of the position and its seed (so lines can be searched)."""
        free = [i for i, cell in enumerate(board) if not cell]
        if self.style == "blocker":
            for symbol in (self._symbol(1 - self.agent), self._symbol(self.agent)):  # win, else block
                for cell in free:
                    trial = list(board)
                    trial[cell] = symbol
                    if _winner(trial) == symbol:
                        return cell
        return random.Random(f"{seed}:{''.join(c or '.' for c in board)}").choice(free)

    def _winning_line(self, board: list[str], seed: int) -> list[int] | None:
        """Agent moves that win against this opponent from `board` (agent to move), shortest first."""
        me, them = self._symbol(self.agent), self._symbol(1 - self.agent)
        best: list[int] | None = None
        for cell in (i for i, c in enumerate(board) if not c):
            after = list(board)
            after[cell] = me
            if _winner(after) == me:
                return [cell]
            if all(after):
                continue
            after[self._opponent_cell(after, seed)] = them
            if _winner(after) or all(after):
                continue
            rest = self._winning_line(after, seed)
            if rest is not None and (best is None or len(rest) + 1 < len(best)):
                best = [cell, *rest]
        return best

    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        self.agent = rng.randrange(2)
        return {}

    def setup(self, rng: random.Random) -> dict[str, Any]:
        for _ in range(100):  # pick an opponent seed against which this start can be won
            self.opponent_seed = rng.randrange(2**31)
            board = [""] * 9
            if self.agent == 1:
                board[self._opponent_cell(board, self.opponent_seed)] = self._symbol(0)
            line = self._winning_line(board, self.opponent_seed)
            if line is not None:
                break
        else:  # pragma: no cover - a win exists for nearly every opponent seed
            raise RuntimeError("no winnable tic-tac-toe start found")
        self.opened = ""
        moves = [str(c) for c in line]
        return {"answer": " ".join(moves), "solution": moves}

    def opponent_action(self) -> str:
        cell = self._opponent_cell(self._board(), self.opponent_seed)
        self.opened = f"Opponent played {cell}.\n"
        return f"[{cell}]"

    def _render(self) -> str:
        board = self._board()
        cells = [board[i] or str(i) for i in range(9)]
        return "\n".join(" ".join(cells[r * 3 : r * 3 + 3]) for r in range(3))

    def observe(self, first: bool) -> str:
        said, self.opened = self.opened, ""
        if first:
            return (
                f"Tic-tac-toe: you are {self._symbol(self.agent)}; get three in a row. "
                f"Reply with a free cell number.\n{said}{self._render()}"
            )
        return said + self._render()

    def to_action(self, answer: str) -> str:
        found = re.search(r"\d", answer)
        return f"[{found.group()}]" if found else answer

    def progress(self) -> float:
        rewards = self.env.state.rewards or {}
        return 1.0 if rewards.get(self.agent) == 0 else 0.0  # a draw earns half a win

    def item_key(self, seed: int) -> str:
        observation, _ = self.reset(seed)
        return f"{observation}|{self.opponent_seed}"


_RPS = ("rock", "paper", "scissors")
_BEATS = {"rock": "paper", "paper": "scissors", "scissors": "rock"}  # move -> what beats it


class RockPaperScissors(TextArenaGame):
    """Iterated rock-paper-scissors against an opponent that repeats a short cycle of moves
    (textarena IteratedRockPaperScissors, two players). Its moves before the match are shown, so
    the cycle can be read off. Knobs: `num_rounds`, `pattern` (cycle length, 1 = always the same)."""

    name = "ta:IteratedRockPaperScissors-v0"
    entry_point = "textarena.envs.IteratedRockPaperScissors.env:IteratedRockPaperScissorsEnv"
    num_players = 2
    SHOWN = 3  # opponent moves shown before the match

    def __init__(self, num_rounds: int = 3, pattern: int = 2) -> None:
        self.rounds = check_int("num_rounds", num_rounds, 1, 20)
        self.pattern = check_int("pattern", pattern, 1, self.SHOWN)
        super().__init__(self.rounds)

    def env_kwargs(self, rng: random.Random) -> dict[str, Any]:
        while True:
            cycle = [rng.choice(_RPS) for _ in range(self.pattern)]
            if self.pattern == 1 or len(set(cycle)) > 1:  # a cycle of one move, written twice, is not a pattern
                break
        self.offset = rng.randrange(self.pattern)
        self.cycle = cycle
        self.played = 0
        return {"num_rounds": self.rounds}

    def _opponent_move(self, k: int) -> str:
        return self.cycle[(self.offset + k) % self.pattern]

    def setup(self, rng: random.Random) -> dict[str, Any]:
        moves = [_BEATS[self._opponent_move(k)] for k in range(self.rounds)]
        return {"answer": " ".join(moves), "solution": moves}

    def opponent_action(self) -> str:
        move = self._opponent_move(self.played)
        self.played += 1
        return f"[{move}]"

    def observe(self, first: bool) -> str:
        if first:
            before = ", ".join(self._opponent_move(k) for k in range(-self.SHOWN, 0))
            return (
                f"Rock-paper-scissors, {self.rounds} rounds; win more rounds than your opponent. "
                f"Its last moves were: {before}. Reply rock, paper or scissors."
            )
        history = self.game_state["history"]
        if not history:
            return "Reply rock, paper or scissors."
        last = history[-1]
        points = self.game_state["points"]
        return (
            f"Round {len(history)}: you {last[self.agent]}, opponent {last[1 - self.agent]}. "
            f"Score {points[self.agent]}-{points[1 - self.agent]}."
        )

    def to_action(self, answer: str) -> str:
        words = re.findall(r"[a-z]+", answer.lower())
        move = next((w for w in words if w in _RPS), None)
        if move is None and answer.strip().lower() in ("r", "p", "s"):
            move = {"r": "rock", "p": "paper", "s": "scissors"}[answer.strip().lower()]
        return f"[{move}]" if move else answer

    def progress(self) -> float:
        return self.game_state["points"][self.agent] / self.rounds


CURATED: tuple[type[TextArenaGame], ...] = (
    GuessTheNumber,
    Mastermind,
    TowerOfHanoi,
    FrozenLake,
    Nim,
    TicTacToe,
    RockPaperScissors,
)


# ---- any other single-player game, by id ---------------------------------------------------------
class AnyTextArenaGame(Env):
    """A single-player textarena game by id, with textarena's own prompt; each later observation
    holds only what the last move produced (its messages and the newest board), not the history.
    There is no ground truth (`info["answer"]` is empty). Knob: `max_turns`."""

    def __init__(self, game_id: str, max_turns: int = 30) -> None:
        from textarena.envs.registration import ENV_REGISTRY

        self.game_id = game_id
        self.name = f"{PREFIX}{game_id}"  # type: ignore[misc]
        self.spec = ENV_REGISTRY[game_id]
        self.max_turns = check_int("max_turns", max_turns, 1, 1000)
        self._random = [random.Random(0).getstate()]
        self.env: Any = None
        self._turn = 0

    def _messages(self) -> str:
        messages = self.env.state.observations.get(0, [])
        self.env.state.observations[0] = []
        kinds = [getattr(kind, "name", "") for _, _, kind in messages]
        last_board = max((i for i, k in enumerate(kinds) if k == "GAME_BOARD"), default=-1)
        keep = [
            text.strip()
            for i, (_, text, _) in enumerate(messages)
            if kinds[i] != "PLAYER_ACTION" and (kinds[i] != "GAME_BOARD" or i == last_board)
        ]
        return "\n".join(t for t in keep if t)

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self._turn = 0
        with own_random(self._random):
            entry = self.spec.entry_point
            cls = _load(entry) if isinstance(entry, str) else entry
            self.env = cls(**self.spec.kwargs)
            self.env.reset(num_players=1, seed=seed)
            observation = self._messages()
        return observation, {"answer": "", "game": self.game_id}

    def step(self, action: str) -> StepResult:
        self._turn += 1
        if "[" not in action:  # textarena reads moves in brackets; a plain answer is the move
            action = f"[{action.strip()}]"
        with own_random(self._random):
            done, _ = self.env.step(action=action)
            observation = self._messages()
        reward = 0.0
        if done:
            raw = (self.env.state.rewards or {}).get(0, 0.0)
            reward = 1.0 if raw >= 1 else 0.5 * min(max(float(raw), 0.0), 1.0)
        truncated = not done and self._turn >= self.max_turns
        return StepResult(observation, reward, bool(done), truncated, {"answer": "", "game": self.game_id})


def resolve(game_id: str) -> tuple[Callable[..., Env], dict[str, Any], str]:
    """Factory, knobs and description for `ta:<game id>` not curated (single-player games only)."""
    family = _game_family(game_id)
    if family in LEFT_OUT:
        raise UnknownEnvError(f"{PREFIX}{game_id} is left out: it {LEFT_OUT[family]}", "pick another game")
    from textarena.envs.registration import ENV_REGISTRY

    if game_id not in ENV_REGISTRY:
        close = difflib.get_close_matches(game_id, list(ENV_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(PREFIX + c for c in close)}?" if close else "see textarena's game list"
        raise UnknownEnvError(f"unknown textarena game {game_id!r}", hint)
    probe = AnyTextArenaGame(game_id)
    try:
        probe.reset(seed=0)
    except (AssertionError, ValueError) as exc:
        curated = ", ".join(c.name for c in CURATED if c.num_players > 1)
        raise UnknownEnvError(
            f"{PREFIX}{game_id} is not a single-player game ({exc})",
            f"two-player games need a scripted opponent; lifelong has {curated}",
        ) from exc

    def make(max_turns: int = 30) -> AnyTextArenaGame:
        return AnyTextArenaGame(game_id, max_turns)

    return make, {"max_turns": 30}, f"textarena {game_id} (its own prompt, no ground truth)"
