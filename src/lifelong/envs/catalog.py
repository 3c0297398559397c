"""Registers every environment lifelong ships with (imported once, by the registry).

Three sources: built-in tasks and games, reasoning-gym datasets (`rg:`) and textarena games
(`ta:`). The library adapters import their library only when an environment is made, so listing
the catalog stays fast; the featured reasoning-gym datasets declare their knobs here for that reason.
"""

from __future__ import annotations

from lifelong.envs import games, probes, rg, ta, tasks
from lifelong.envs.registry import register, register_source

for _task in (
    tasks.Addition,
    tasks.Larger,
    tasks.NextNumber,
    tasks.Uppercase,
    tasks.FirstLetter,
    tasks.ReverseWord,
    probes.Facts,
    probes.Instruct,
):
    register(_task.name, _task)

for _game in (games.GuessNumber, games.Wordle, games.GridMaze):
    register(_game.name, _game, multi_turn=True)

for _dataset, _featured in rg.FEATURED.items():
    register(
        rg.PREFIX + _dataset,
        rg.featured_factory(_dataset),
        source=rg.SOURCE,
        description=_featured.description,
        knobs=_featured.knobs,
        more_knobs=True,  # the rest of the dataset's config too, checked by the adapter
    )
register_source(rg.PREFIX.rstrip(":"), rg.SOURCE, rg.resolve)

for _curated in ta.CURATED:
    register(_curated.name, _curated, source=ta.SOURCE, multi_turn=True)
register_source(ta.PREFIX.rstrip(":"), ta.SOURCE, ta.resolve, multi_turn=True)
