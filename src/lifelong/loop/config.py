"""What a run is: `RunConfig` (everything besides the model weights) and the named methods.

`RunConfig.for_method` builds the five methods `lifelong eval` compares on otherwise identical
settings; `Method` and `UpdateRule` name the closed sets a config chooses from. Both are `StrEnum`s,
so `config.json` keeps plain strings and run folders written before they existed still load.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from lifelong.errors import ConfigError
from lifelong.guard.gate import GuardConfig
from lifelong.learn.distill import DistillConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.learn.sft import SFTConfig
from lifelong.loop.curriculum import CurriculumConfig
from lifelong.loop.explore import ExplorationConfig
from lifelong.loop.world import WorldConfig
from lifelong.memory.book import MemoryConfig
from lifelong.model.memory_layer import MemorySettings
from lifelong.model.policy import GenerationConfig, LoraSettings, Precision, Unit, check_precision, check_unit


class Method(enum.StrEnum):
    """What the agent does with its experience (`RunConfig.for_method` spells each out)."""

    FROZEN = "frozen"
    MEMORY = "memory"
    SFT = "sft"
    GRPO = "grpo"
    LIFELONG = "lifelong"
    TRL = "trl"  # the external peer (evaluate/trl_runner.py): a run folder's label, not a preset


class UpdateRule(enum.StrEnum):
    """Which learner turns a step's episodes into an update."""

    GRPO = "grpo"  # group-relative policy gradient (learn/grpo.py)
    SFT = "sft"  # fine-tuning on the successes (learn/sft.py)
    NONE = "none"  # the weights never change


METHODS = (Method.FROZEN, Method.MEMORY, Method.SFT, Method.GRPO, Method.LIFELONG)  # the presets
UPDATE_RULES = tuple(UpdateRule)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the model weights. Defaults are the `make demo` run."""

    stream: dict[str, Any]  # Stream.to_dict()
    model: str | None = None  # None = the embedded default model
    store: str | None = None  # a postgresql:// URL; None = experience.sqlite in the run folder
    prompts_per_step: int = 4  # distinct items per update; each is sampled group_size times
    # On 2 CPU cores with the 135M default, thinking costs 3-8x per episode and measured no better on
    # the demo's first task (dev/LOG.md); GPU users raise it.
    reasoning_effort: str = "none"
    thinking_tokens: int | None = None
    answer_tokens: int = 12
    eval_every: int = 5  # steps between probe evaluations (0 = only at stage ends)
    # Fixed rehearsal: the share of the run's prompts drawn from earlier stages' tasks. Off by
    # default: a fixed share is a tax on every new stage (with 0.25 or 0.125 the default stream's
    # third task reached 62 at its stage end, without it 75; one seed, dev/LOG.md). Rehearsal on
    # demand stays on with the guard: a task whose probe score slips below its best
    # (`guard.slip_threshold`) gets a prompt every step until it recovers.
    rehearsal: float = 0.0
    # General-ability items (training items of the stream's `general` tasks, never its probes)
    # answered by the pretrained model, held in place by `grpo.anchor_coef` in every update. Few
    # anchored items protect only themselves (seen: 8 facts held, other facts still flipped), so the
    # pool covers many distinct items and each update takes its turn of them.
    anchor_items: int = 32  # distinct items per general task in the pool
    anchor_per_step: int = 16  # anchor items in each update, rotating through the pool
    seed: int = 0
    checkpoints_kept: int = 3
    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # also sets the sampling (group_size, temperature)
    sft: SFTConfig = field(default_factory=SFTConfig)  # the learner of update_rule "sft"
    lora: LoraSettings = field(default_factory=LoraSettings)
    unit: Unit = Unit.LORA  # what learns: LoRA, memory-layer values (`memory_unit`) or every weight
    memory_unit: MemorySettings = field(default_factory=MemorySettings)
    # bf16 decoding (model/sampler_copy.py) and bf16 autocast in the learners are faster (with
    # stop 24's other changes, grpo went 3.45x -> 5.47x TRL's episodes/min, lifelong 1.31x -> 2.40x),
    # but the demo's addition, paired over seeded runs, ended 10.9 points lower on both seeds
    # measured (dev/LOG.md, stop 24); the bf16 learner alone cost 10.9 and 12.5, the sampler alone
    # 6.2 and 0.0 (stop 25). Opt-in (`auto`) until the learner keeps that.
    sampler_precision: Precision = Precision.FLOAT32
    learner_precision: Precision = Precision.FLOAT32
    guard: GuardConfig = field(default_factory=GuardConfig)
    # What the agent does with its experience (see `for_method` for the named combinations).
    method: Method = Method.LIFELONG
    update_rule: UpdateRule = UpdateRule.GRPO
    memory_in_context: bool = False  # recall lessons and examples into every training context
    write_memory: bool = True  # keep lessons from failures (and, with memory in context, examples)
    consolidate: bool = True  # retry stuck items with their lesson; distil the successes into weights
    retries: int = 4  # samples of a retry with the lesson in context
    # Lessons from failures quote the expected answer even where the task does not declare showing
    # it (`Env.shows_answer`): the answer-key ablation (issue 22). Off, a lesson holds the attempt,
    # the reward and the environment's feedback only.
    lessons_with_answer: bool = False
    # A lesson also holds the agent's own note on its failure, written before the retry (issue 22).
    reflection: bool = False
    replay_lessons: int = 4  # earlier consolidated lessons mixed into each distillation update
    distill: DistillConfig = field(default_factory=DistillConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    # Where a task gives no learning signal (issue 22): train a task whose attempts all fail on
    # easier versions of it (loop/curriculum.py); give a group whose samples all failed more,
    # hotter attempts before the update (loop/explore.py).
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    # A stage's `episodes` count every episode sampled in it (retries and exploration too), and the
    # stage ends once they are spent: equal budgets for methods that sample differently (issue 22).
    # Off: they count the schedule's own episodes, and retries and exploration come on top.
    count_every_sample: bool = False
    # A world model of the games the run plays, learnt from its own moves, and what it feeds back
    # into learning (loop/world.py, issue 23). Off by default.
    world: WorldConfig = field(default_factory=WorldConfig)

    def __post_init__(self) -> None:
        # Plain strings (a config.json, a caller) become the enums here, so the fields always are.
        if self.update_rule not in UPDATE_RULES:
            raise ConfigError(f"unknown update_rule {self.update_rule!r}", f"use one of {', '.join(UPDATE_RULES)}")
        if self.method not in tuple(Method):
            raise ConfigError(f"unknown method {self.method!r}", f"use one of {', '.join(METHODS)}")
        object.__setattr__(self, "update_rule", UpdateRule(self.update_rule))
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "unit", check_unit(self.unit))
        object.__setattr__(self, "sampler_precision", check_precision(self.sampler_precision))
        object.__setattr__(self, "learner_precision", check_precision(self.learner_precision))
        if self.consolidate and self.update_rule is UpdateRule.NONE:
            raise ConfigError("consolidate needs weights that learn", "set update_rule to grpo or sft")
        if self.prompts_per_step < 1:
            raise ConfigError("prompts_per_step must be >= 1", "the default is 4")
        if not 0.0 <= self.rehearsal < 1.0:
            raise ConfigError(f"rehearsal must be in [0, 1), got {self.rehearsal}", "0.25 rehearses 1 prompt in 4")
        if self.anchor_items < 0 or self.anchor_per_step < 0:
            raise ConfigError("anchor_items and anchor_per_step must be >= 0", "the defaults are 32 and 16")
        if self.eval_every < 0:
            raise ConfigError("eval_every must be >= 0", "use 0 to evaluate only at stage ends")
        self.generation(0.0)  # validates reasoning_effort / thinking_tokens early

    @property
    def anchored(self) -> bool:
        """Updates hold general-ability items to the pretrained model's answers (loop/anchors.py)."""
        return self.grpo.anchor_coef > 0 and self.anchor_items > 0

    @property
    def episodes_per_step(self) -> int:
        return self.prompts_per_step * self.grpo.group_size

    def generation(self, temperature: float) -> GenerationConfig:
        return GenerationConfig(self.reasoning_effort, self.thinking_tokens, self.answer_tokens, temperature)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        d["grpo"] = GRPOConfig(**d.get("grpo", {}))
        # Run folders from before SFTConfig existed: their SFT learner read these from `grpo`.
        shared = {f.name for f in fields(SFTConfig)}
        d["sft"] = SFTConfig(**d["sft"]) if "sft" in d else SFTConfig(**{k: getattr(d["grpo"], k) for k in shared})
        d["lora"] = LoraSettings(**d.get("lora", {}))
        d["memory_unit"] = MemorySettings.from_dict(d.get("memory_unit", {}))
        d["guard"] = GuardConfig(**d.get("guard", {}))
        d["distill"] = DistillConfig(**d.get("distill", {}))
        d["memory"] = MemoryConfig(**d.get("memory", {}))
        d["curriculum"] = CurriculumConfig(**d.get("curriculum", {}))
        d["exploration"] = ExplorationConfig(**d.get("exploration", {}))
        d["world"] = WorldConfig.from_dict(d.get("world", {}))
        return cls(**d)

    @classmethod
    def for_method(cls, method: str, **settings: Any) -> RunConfig:
        """The named methods compared by `lifelong eval`, on otherwise identical settings:

        frozen    no learning at all
        memory    lessons and examples recalled into context; weights never change
        sft       fine-tune on its own successful episodes, stage after stage
        grpo      plain group-relative policy gradient: no guard, no rehearsal, no anchor, no memory
        lifelong  GRPO + general-ability anchor + guard + rehearsal of what slips + retry-with-lesson
                  consolidated by self-distillation
        """
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
        guard = settings.pop("guard", GuardConfig())
        grpo = settings.pop("grpo", GRPOConfig())
        plain = {
            "rehearsal": 0.0,
            "guard": replace(guard, enabled=False),
            "consolidate": False,
            "grpo": replace(grpo, anchor_coef=0.0),
        }
        presets: dict[Method, dict[str, Any]] = {
            Method.FROZEN: {**plain, "update_rule": UpdateRule.NONE, "write_memory": False},
            Method.MEMORY: {**plain, "update_rule": UpdateRule.NONE, "memory_in_context": True},
            Method.SFT: {**plain, "update_rule": UpdateRule.SFT, "write_memory": False},
            Method.GRPO: {**plain, "update_rule": UpdateRule.GRPO, "write_memory": False},
            Method.LIFELONG: {"update_rule": UpdateRule.GRPO, "guard": guard, "grpo": grpo},
        }
        return cls(**{**settings, **presets[Method(method)], "method": Method(method)})


__all__ = ["METHODS", "UPDATE_RULES", "Method", "RunConfig", "UpdateRule"]
