from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tests.conftest import make_tiny_model

from lifelong.errors import ConfigError
from lifelong.learn.grpo import GRPOConfig, GRPOLearner, make_batch
from lifelong.learn.logprobs import completion_log_softmax, completion_logprobs, reverse_kl
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.types import Completion, Episode, Sample, StopReason, Turn


def _episode(group: str, reward: float, prompt=(1, 2, 3), tokens=(4, 5)) -> Episode:
    c = Completion(tuple(tokens), (-1.0,) * len(tokens), (1,) * len(tokens), "", "x", StopReason.ANSWERED)
    return Episode(
        f"{group}-{reward}-{tokens}", "t", 0, (Turn(tuple(prompt), c, "q", reward),), reward, reward > 0, {}, 0, group
    )


def test_advantages_are_group_relative_and_flat_groups_are_dropped() -> None:
    eps = [_episode("a", 1.0), _episode("a", 0.0), _episode("b", 1.0), _episode("b", 1.0)]
    batch = make_batch(eps)
    assert batch.num_groups == 2 and batch.num_dropped_groups == 1
    assert [round(s.advantage, 4) for s in batch.samples] == [1.0, -1.0]
    unscaled = make_batch(eps, scale_rewards=False)
    assert [round(s.advantage, 4) for s in unscaled.samples] == [0.5, -0.5]
    assert batch.reward_mean == pytest.approx(0.75)


def _game(name: str, group: str, turn_rewards: list[float]) -> Episode:
    """A multi-turn episode whose turn t has prompt (t,) and its own reward."""
    c = Completion((4,), (-1.0,), (1,), "", "x", StopReason.ANSWERED)
    turns = tuple(Turn((t,), c, "", r) for t, r in enumerate(turn_rewards))
    return Episode(name, "g", 0, turns, sum(turn_rewards), False, {}, 0, group)


def test_turn_advantages_credit_each_move_with_what_followed_it() -> None:
    # a and b earn 0.25 in all, so their episodes tie, but a made its progress on its first move
    # and b on its second; c ended after one move with nothing.
    eps = [_game("a", "g", [0.25, 0.0, 0.0]), _game("b", "g", [0.0, 0.25, 0.0]), _game("c", "g", [0.0])]
    shared = [round(s.advantage, 4) for s in make_batch(eps).samples]
    assert shared == [0.7071] * 6 + [-1.4142]  # every move shares its episode's advantage
    per_turn = [round(s.advantage, 4) for s in make_batch(eps, turn_advantages=True).samples]
    a, b, c = per_turn[0:3], per_turn[3:6], per_turn[6:]
    assert a[0] == b[0] == 0.7071 and c == [-1.4142]  # turn 0 is the episode's own advantage
    assert a[1] == -1.0 and b[1] == 1.0  # a's second move got nothing, b's got the progress
    assert a[2] == b[2] == 0.0  # the last moves tie
    # a group whose episodes only differ in where the progress came is not dropped
    tied = [_game("a", "h", [0.25, 0.0]), _game("b", "h", [0.0, 0.25])]
    assert make_batch(tied).num_dropped_groups == 1
    assert make_batch(tied, turn_advantages=True).num_dropped_groups == 0


def test_turn_advantages_leave_single_turn_batches_as_they_were() -> None:
    eps = [_episode("a", 1.0), _episode("a", 0.0), _episode("a", 0.5), _episode("b", 1.0), _episode("b", 1.0)]
    plain, per_turn = make_batch(eps), make_batch(eps, turn_advantages=True)
    assert [s.advantage for s in plain.samples] == pytest.approx([s.advantage for s in per_turn.samples])
    assert plain.num_dropped_groups == per_turn.num_dropped_groups == 1


def test_forced_only_turns_are_not_samples() -> None:
    c = Completion((4,), (0.0,), (0,), "", "x", StopReason.THINK_BUDGET)
    eps = [_episode("a", 1.0), Episode("z", "t", 0, (Turn((1,), c, "q", 0.0),), 0.0, False, {}, 0, "a")]
    assert len(make_batch(eps).samples) == 1


def test_config_errors_say_the_fix() -> None:
    with pytest.raises(ConfigError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ConfigError, match="learning_rate"):
        GRPOConfig(learning_rate=0)


def _sampled_episodes(policy: Policy, reward_fn, n: int = 8, seed: int = 0, answer_tokens: int = 3) -> list[Episode]:
    ctx = policy.start("Pick a token")
    gen = GenerationConfig(thinking_tokens=0, answer_tokens=answer_tokens)
    comps = policy.respond([ctx] * n, gen, torch.Generator().manual_seed(seed))
    eps = []
    for i, c in enumerate(comps):
        r = reward_fn(c)
        eps.append(Episode(str(i), "t", 0, (Turn(tuple(ctx), c, "q", r),), r, r > 0, {}, policy.version, "g"))
    return eps


def test_sampler_and_learner_log_probs_agree(tiny_policy: Policy) -> None:
    eps = _sampled_episodes(tiny_policy, lambda c: 0.0)
    samples = [
        Sample(
            e.turns[0].prompt_ids,
            e.turns[0].completion.token_ids,
            e.turns[0].completion.logprobs,
            e.turns[0].completion.loss_mask,
            0.0,
        )
        for e in eps
    ]
    with torch.no_grad():
        logp, _, mask = completion_logprobs(tiny_policy.model, samples, tiny_policy.pad_id)
    for i, s in enumerate(samples):
        n = len(s.completion_ids)
        sampled = torch.tensor(s.sampler_logprobs) * mask[i, :n]
        assert torch.allclose(logp[i, :n] * mask[i, :n], sampled, atol=1e-4), (logp[i, :n], sampled)


def _with_target(policy: Policy, target: tuple[int, ...], seed: int) -> list[Episode]:
    """Seven sampled episodes (reward 0) and one playing `target` (reward 1), with the current
    policy's log-probs for it, as if the sampler had drawn it: an on-policy group with signal."""
    eps = _sampled_episodes(policy, lambda c: 0.0, n=7, seed=seed, answer_tokens=2)
    ctx = eps[0].turns[0].prompt_ids
    mask = (0,) * len(policy._bare_marker_ids) + (1,) * (len(target) - len(policy._bare_marker_ids))
    probe = Sample(ctx, target, (0.0,) * len(target), mask, 0.0)
    with torch.no_grad():
        logp, _, _ = completion_logprobs(policy.model, [probe], policy.pad_id)
    lps = tuple(float(x) * m for x, m in zip(logp[0], mask, strict=True))
    c = Completion(target, lps, mask, "", "t", StopReason.ANSWERED)
    return [*eps, Episode("t", "t", 0, (Turn(ctx, c, "q", 1.0),), 1.0, True, {}, policy.version, "g")]


def test_update_changes_parameters_and_what_the_sampler_generates(tiny_policy: Policy) -> None:
    learner = GRPOLearner(tiny_policy, GRPOConfig(learning_rate=0.02, kl_coef=0.0, group_size=8))
    greedy = GenerationConfig(thinking_tokens=0, answer_tokens=2, temperature=0.0)
    ctx = tiny_policy.start("Pick a token")
    first_before = tiny_policy.respond([ctx], greedy)[0]
    # Reward a completion the greedy sampler does not produce: the second-ranked one.
    target = (
        _sampled_episodes(tiny_policy, lambda c: 0.0, n=1, seed=99, answer_tokens=2)[0].turns[0].completion.token_ids
    )
    assert target != first_before.token_ids
    before = {n: p.detach().clone() for n, p in tiny_policy.model.named_parameters() if p.requires_grad}
    for step in range(12):
        report = learner.update(make_batch(_with_target(tiny_policy, target, seed=step)))
        assert report.applied and all(torch.isfinite(torch.tensor(v)) for v in report.metrics.values())
    changed = [n for n, p in tiny_policy.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "no adapter parameter moved"
    assert learner.step == 12
    assert tiny_policy.version == 0  # learners never version the adapters: the learning core does
    first_after = tiny_policy.respond([ctx], greedy)[0]
    # The sampler acts with the updated adapters: the rewarded completion is now its greedy choice,
    assert first_after.token_ids == target
    # and its log-probs match the learner's for the same tokens after the update.
    s = Sample(tuple(ctx), first_after.token_ids, first_after.logprobs, first_after.loss_mask, 0.0)
    with torch.no_grad():
        logp, _, mask = completion_logprobs(tiny_policy.model, [s], tiny_policy.pad_id)
    assert torch.allclose(logp[0] * mask[0], torch.tensor(first_after.logprobs), atol=1e-4)


def test_kl_is_zero_before_learning_and_positive_after(tiny_policy: Policy) -> None:
    learner = GRPOLearner(tiny_policy, GRPOConfig(learning_rate=0.05, kl_coef=0.1))
    reward = lambda c: float(c.token_ids[2] % 2 == 0)  # first answer token  # noqa: E731
    first = learner.update(make_batch(_sampled_episodes(tiny_policy, reward)))
    assert first.applied and first.metrics["kl/ref"] == pytest.approx(0.0, abs=1e-6)
    second = learner.update(make_batch(_sampled_episodes(tiny_policy, reward, seed=1)))
    assert second.metrics["kl/ref"] > 0
    assert 0.0 <= second.metrics["policy/clip_frac"] <= 1.0


def test_the_step_does_not_depend_on_how_the_batch_is_cut_into_micro_batches(tokenizer) -> None:
    """One micro-batch, one per sample, or cut by a token budget: the same gradient, with the
    reference's log-probs taken once a batch in chunks of their own."""
    reward = lambda c: float(c.token_ids[2] % 2 == 0)  # noqa: E731

    def step(micro_batch: int, micro_batch_tokens: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        policy = Policy(make_tiny_model(tokenizer), tokenizer)
        moved = GRPOLearner(policy, GRPOConfig(learning_rate=0.05, kl_coef=0.1))
        moved.update(make_batch(_sampled_episodes(policy, reward)))  # the k3 term is 0 until the adapters move
        learner = GRPOLearner(
            policy, GRPOConfig(kl_coef=0.1, micro_batch=micro_batch, micro_batch_tokens=micro_batch_tokens)
        )
        episodes = [
            replace(e, group=f"g{seed}") for seed in (1, 2) for e in _sampled_episodes(policy, reward, n=6, seed=seed)
        ]
        learner.optimizer.step = lambda *a, **k: None  # keep the gradient, move nothing
        report = learner.update(make_batch(episodes))
        assert report.applied and report.metrics["kl/ref"] > 0
        return [p.grad.clone() for p in learner.optimizer.param_groups[0]["params"]]

    whole = step(32, 0)
    for cut in (step(1, 0), step(32, 30)):
        for a, b in zip(whole, cut, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_batch_without_signal_is_not_applied(tiny_policy: Policy) -> None:
    learner = GRPOLearner(tiny_policy)
    report = learner.update(make_batch(_sampled_episodes(tiny_policy, lambda c: 1.0)))
    assert not report.applied and "spread" in report.reason
    assert tiny_policy.version == 0


def _anchor_kl(policy: Policy, anchors: list[Sample]) -> float:
    with torch.no_grad():
        logp, _, mask = completion_log_softmax(policy.model, anchors, policy.pad_id)
        with policy.pretrained():
            ref, _, _ = completion_log_softmax(policy.model, anchors, policy.pad_id)
    return float(reverse_kl(logp, ref, mask))


def test_the_anchor_holds_untrained_prompts_near_the_pretrained_model(tokenizer) -> None:
    """Training one prompt hard moves the answers to another; the anchor term keeps them."""
    drift = {}
    for coef in (0.0, 10.0):
        torch.manual_seed(0)  # the same model and adapter initialisation for both runs
        policy = Policy(make_tiny_model(tokenizer), tokenizer, name="tiny", lora=LoraSettings(rank=4, alpha=8))
        greedy = GenerationConfig(thinking_tokens=0, answer_tokens=3, temperature=0.0)
        prompts = [policy.start(q) for q in ("Name a colour", "Say hello", "Count to three")]
        answers = policy.respond(prompts, greedy)
        anchors = [
            Sample(tuple(p), c.token_ids, c.logprobs, policy.answer_mask(c), 0.0)
            for p, c in zip(prompts, answers, strict=True)
        ]
        learner = GRPOLearner(policy, GRPOConfig(learning_rate=0.03, kl_coef=0.0, anchor_coef=coef))
        target = (
            _sampled_episodes(policy, lambda c: 0.0, n=1, seed=99, answer_tokens=2)[0].turns[0].completion.token_ids
        )
        for step in range(8):
            report = learner.update(make_batch(_with_target(policy, target, seed=step), anchors=anchors))
            assert report.applied
            assert ("anchor/kl" in report.metrics) == (coef > 0)
        drift[coef] = _anchor_kl(policy, anchors)
    assert drift[0.0] > 0.01, drift  # training the one prompt really moves the others
    assert drift[10.0] < 0.5 * drift[0.0], drift


def test_a_bf16_learner_takes_nearly_the_fp32_step_and_keeps_fp32_weights(tokenizer) -> None:
    """Under `--learner-precision bfloat16` the forwards and backwards run in bf16 autocast; the
    weights, their gradients and Adam stay fp32, and the gradient points where fp32's does."""
    grads = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        policy = Policy(
            make_tiny_model(tokenizer), tokenizer, lora=LoraSettings(rank=4, alpha=8), learner_precision=precision
        )
        with torch.no_grad():  # LoRA's B starts at zero; move it so every adapter weight gets a gradient
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        batch = make_batch(_sampled_episodes(policy, lambda c: float(c.token_ids[-1] % 2), n=8, seed=3))
        assert batch.samples
        learner = GRPOLearner(policy, GRPOConfig(kl_coef=0.02))
        learner.optimizer.step = lambda *a, **k: None  # keep the gradient to compare it
        report = learner.update(batch)
        assert report.applied
        params = [p for p in policy.model.parameters() if p.requires_grad]
        assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        grads[precision] = torch.cat([p.grad.flatten() for p in params])
    fp32, bf16 = grads["float32"], grads["bfloat16"]
    assert not torch.equal(fp32, bf16)  # it did compute in bf16
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=0) > 0.98
