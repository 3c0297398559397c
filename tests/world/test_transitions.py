from __future__ import annotations

import torch

from lifelong.envs.games import GridMaze
from lifelong.loop.actor import Job, play
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Completion, Episode, StopReason, Turn
from lifelong.world.model import outcome_text, parse_outcome, state_prompt
from lifelong.world.transitions import Outcome, accuracy, all_transitions, copy_prediction, transitions


def said(answer: str) -> Completion:
    return Completion((1,), (0.0,), (1,), "", answer, StopReason.ANSWERED)


def maze_episode(moves: list[str], seed: int = 3) -> tuple[Episode, list[str]]:
    """A maze played with `moves` as an actor records it; also every reply the game gave."""
    env = GridMaze()
    observation, info = env.reset(seed=seed)
    turns, replies = [], []
    for move in moves:
        result = env.step(move)
        turns.append(Turn((1,), said(move), observation, result.reward))
        replies.append(result.observation)
        observation = result.observation
        info.update(result.info)
        if result.terminated or result.truncated:
            break
    info |= {"last_observation": observation, "max_turns": env.max_turns}
    reward = sum(t.reward for t in turns)
    return Episode("ep", "maze", seed, tuple(turns), reward, reward >= 1, info, 0), replies


def test_every_move_becomes_a_transition_with_the_games_reply() -> None:
    env = GridMaze()
    _, info = env.reset(seed=3)
    episode, replies = maze_episode(list(info["solution"]))
    moves = transitions(episode)
    assert [t.action for t in moves] == info["solution"]
    assert [t.outcome.observation for t in moves] == replies
    assert [t.outcome.done for t in moves] == [False] * (len(moves) - 1) + [True]
    assert moves[-1].outcome.reward == 1.0 and all(t.outcome.reward == 0.0 for t in moves[:-1])
    assert [t.state.turn for t in moves] == list(range(1, len(moves) + 1))
    assert all(t.state.max_turns == env.max_turns for t in moves)
    assert moves[1].state.observation == replies[0] and moves[1].state.history == ()
    with_history = transitions(episode, history_turns=1)
    assert with_history[2].state.history == ((replies[0], info["solution"][1]),)


def test_the_answer_and_solution_never_reach_what_a_world_model_reads() -> None:
    episode, _ = maze_episode(["up", "left", "down", "right"])
    secret = {"answer": "SECRET-ANSWER", "solution": ["SECRET-SOLUTION"]}
    episode = Episode(**{**episode.__dict__, "info": {**episode.info, **secret}})
    for move in transitions(episode, history_turns=3):
        text = state_prompt(move.state, move.action) + outcome_text(move.outcome)
        assert "SECRET" not in text


def test_an_episode_stored_without_its_last_reply_still_teaches_reward_and_end() -> None:
    episode, _ = maze_episode(["up", "up", "up", "up", "up", "up", "up", "up"])
    old = Episode(**{**episode.__dict__, "info": {k: v for k, v in episode.info.items() if k != "last_observation"}})
    last = transitions(old)[-1]
    assert last.outcome.observation is None and last.outcome.done


def test_single_turn_tasks_have_no_dynamics_to_learn() -> None:
    one = Episode("q", "add", 0, (Turn((1,), said("3"), "1 + 2?", 1.0),), 1.0, True, {}, 0)
    game, _ = maze_episode(["up", "down"])
    assert len(all_transitions([one, game])) == len(game.turns)


def test_the_copy_baseline_misses_a_maze_and_a_perfect_model_does_not() -> None:
    episode, _ = maze_episode(["left", "up", "right", "down", "left"])
    moves = transitions(episode)
    perfect = accuracy([m.outcome for m in moves], moves)
    assert (perfect.observation, perfect.reward, perfect.done, perfect.moves) == (1.0, 1.0, 1.0, len(moves))
    copy = accuracy([copy_prediction(m.state) for m in moves], moves)
    assert copy.observation == 0.0  # every maze reply differs from the message before it


def test_an_outcome_is_written_and_read_back() -> None:
    outcome = Outcome("You moved up.\n..G.\n.@..", 0.0, False)
    assert parse_outcome(outcome_text(outcome)) == outcome
    assert parse_outcome(outcome_text(Outcome("You win!", 1.0, True))) == Outcome("You win!", 1.0, True)
    assert parse_outcome("no outcome line") == Outcome("no outcome line", 0.0, False)


def test_the_actor_keeps_the_games_last_reply_and_move_limit(tiny_policy: Policy) -> None:
    episodes = play(tiny_policy, [Job("maze", 5)], lambda name: GridMaze(), GenerationConfig("none"),
                    torch.Generator().manual_seed(0))  # fmt: skip
    info = episodes[0].info
    assert info["max_turns"] == GridMaze().max_turns and isinstance(info["last_observation"], str)
    assert len(transitions(episodes[0])) == len(episodes[0].turns)
