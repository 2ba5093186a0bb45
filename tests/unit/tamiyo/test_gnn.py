"""Tamiyo's GNN policy on synthetic observations: masks, the action distribution, checkpoints."""

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import Tensor

from esper.tamiyo import gnn
from esper.tamiyo.encoding import (
    GRAPH_FEATURES,
    KERNEL_FEATURES,
    NODE_FEATURES,
    ActionKind,
    PolicyInput,
)
from esper.tamiyo.gnn import Action, PolicyOutput, TamiyoNet, TamiyoNetConfig

NEG_INF = float("-inf")


def make_input(
    *,
    nodes: int = 12,
    slots: int = 4,
    candidates: int = 7,
    seed: int = 0,
    germinate: list[bool] | None = None,
    cull: list[bool] | None = None,
    fossilize: list[bool] | None = None,
) -> PolicyInput:
    """A random observation: a DAG (a chain plus skips), slots on distinct nodes, random masks."""
    gen = torch.Generator().manual_seed(seed)
    chain = [(i, i + 1) for i in range(nodes - 1)]
    skips = [(i, i + 2) for i in range(0, nodes - 2, 3)]
    edge_index = torch.tensor(chain + skips, dtype=torch.long).t().contiguous()
    candidate_slot = torch.randint(0, slots, (candidates,), generator=gen)

    def mask(given: list[bool] | None, size: int) -> Tensor:
        if given is not None:
            return torch.tensor(given, dtype=torch.bool).reshape(size)
        return torch.rand(size, generator=gen) > 0.4

    return PolicyInput(
        node_features=torch.randn(nodes, NODE_FEATURES, generator=gen),
        edge_index=edge_index,
        graph_features=torch.randn(GRAPH_FEATURES, generator=gen),
        slot_nodes=torch.randperm(nodes, generator=gen)[:slots],
        slot_ids=tuple(f"slot{i}" for i in range(slots)),
        candidate_features=torch.randn(candidates, KERNEL_FEATURES, generator=gen),
        candidate_slot=candidate_slot,
        candidate_kernel_ids=tuple(f"k{i}" for i in range(candidates)),
        germinate_mask=mask(germinate, candidates),
        cull_mask=mask(cull, slots),
        fossilize_mask=mask(fossilize, slots),
    )


def make_net(seed: int = 0, **config: int) -> TamiyoNet:
    torch.manual_seed(seed)
    return TamiyoNet(TamiyoNetConfig(**config)).eval()


def legal_log_probs_by_hand(logits: Tensor, legal: Tensor) -> Tensor:
    """Log-probabilities over the legal entries via plain log_softmax (NaN-free when any legal)."""
    result = torch.full_like(logits, NEG_INF)
    result[legal] = torch.log_softmax(logits[legal], dim=0)
    return result


def heads(out: PolicyOutput) -> dict[str, Tensor]:
    return {
        "kind": out.kind_logits,
        "germinate": out.germinate_logits,
        "location": out.location_logits,
        "cull": out.cull_logits,
        "fossilize": out.fossilize_logits,
    }


def test_output_shapes() -> None:
    net = make_net()
    out = net(make_input(nodes=12, slots=4, candidates=7))
    assert out.kind_logits.shape == (4,)
    assert out.germinate_logits.shape == (7,)
    assert out.location_logits.shape == (4,)
    assert out.cull_logits.shape == (4,)
    assert out.fossilize_logits.shape == (4,)
    assert out.value.shape == ()


def test_no_candidates_masks_germination_off() -> None:
    net = make_net()
    out = net(make_input(candidates=0, cull=[True] * 4, fossilize=[False] * 4))
    assert out.germinate_logits.shape == (0,)
    assert torch.equal(out.location_logits, torch.full((4,), NEG_INF))
    assert out.kind_logits[ActionKind.GERMINATE] == NEG_INF
    assert torch.isfinite(out.kind_logits[[ActionKind.WAIT, ActionKind.CULL]]).all()
    assert gnn.entropy(out)["germinate"] == 0.0


def test_masked_entries_are_exactly_minus_inf_and_legal_ones_finite() -> None:
    inp = make_input(seed=3)
    out = make_net()(inp)
    for logits, legal in [
        (out.kind_logits, inp.action_mask()),
        (out.germinate_logits, inp.germinate_mask),
        (out.cull_logits, inp.cull_mask),
        (out.fossilize_logits, inp.fossilize_mask),
    ]:
        assert torch.equal(torch.isneginf(logits), ~legal)
        assert torch.isfinite(logits[legal]).all()
    slot_has_legal = torch.zeros(4, dtype=torch.bool)
    slot_has_legal[inp.candidate_slot[inp.germinate_mask]] = True
    assert torch.equal(torch.isneginf(out.location_logits), ~slot_has_legal)


def test_location_logits_are_the_logsumexp_of_each_slots_legal_candidates() -> None:
    inp = make_input(seed=5, candidates=9)
    out = make_net()(inp)
    for slot in range(4):
        chosen = (inp.candidate_slot == slot) & inp.germinate_mask
        expected = torch.logsumexp(out.germinate_logits[chosen], dim=0)
        assert torch.allclose(out.location_logits[slot], expected)


def test_factorisation_location_then_kernel_matches_the_joint() -> None:
    inp = make_input(seed=6, candidates=9)
    out = make_net()(inp)
    joint = gnn.legal_log_softmax(out.germinate_logits)
    slot_part = gnn.location_log_probs(out)[inp.candidate_slot]
    kernel_part = gnn.kernel_log_probs_given_slot(out)
    legal = inp.germinate_mask
    assert torch.allclose((slot_part + kernel_part)[legal], joint[legal], atol=1e-6)
    assert torch.isneginf(kernel_part[~legal]).all()
    # Within each slot the kernel distribution sums to one.
    for slot in inp.candidate_slot[legal].unique():
        in_slot = legal & (inp.candidate_slot == slot)
        assert torch.allclose(kernel_part[in_slot].exp().sum(), torch.tensor(1.0))


def test_sampled_and_greedy_actions_are_always_legal() -> None:
    inp = make_input(seed=1, candidates=8)
    out = make_net()(inp)
    legal_targets = {
        ActionKind.GERMINATE: inp.germinate_mask,
        ActionKind.CULL: inp.cull_mask,
        ActionKind.FOSSILIZE: inp.fossilize_mask,
    }
    gen = torch.Generator().manual_seed(0)
    kinds: Counter[ActionKind] = Counter()
    for action in [*(gnn.sample(out, gen) for _ in range(200)), gnn.greedy(out)]:
        kinds[action.kind] += 1
        assert inp.action_mask()[action.kind]
        if action.kind is not ActionKind.WAIT:
            assert legal_targets[action.kind][action.target]
    # The untrained policy is near-uniform over legal kinds: every legal kind turns up.
    assert {kind for kind in ActionKind if inp.action_mask()[kind]} == set(kinds)


def test_sampling_follows_the_hierarchical_probabilities() -> None:
    out = PolicyOutput(
        kind_logits=torch.tensor([0.0, math.log(3.0), NEG_INF, NEG_INF]),
        germinate_logits=torch.tensor([0.0, NEG_INF, math.log(4.0)]),
        location_logits=torch.tensor([0.0, NEG_INF]),
        cull_logits=torch.full((2,), NEG_INF),
        fossilize_logits=torch.full((2,), NEG_INF),
        value=torch.tensor(0.0),
        candidate_slot=torch.tensor([0, 1, 0]),
    )
    gen = torch.Generator().manual_seed(0)
    counts = Counter(gnn.sample(out, gen) for _ in range(2000))
    assert set(counts) == {
        Action(ActionKind.WAIT, -1),
        Action(ActionKind.GERMINATE, 0),
        Action(ActionKind.GERMINATE, 2),
    }
    # p = 0.25, 0.75 * 0.2 = 0.15, 0.75 * 0.8 = 0.6; 2000 draws: standard error ~0.011.
    assert counts[Action(ActionKind.WAIT, -1)] / 2000 == pytest.approx(0.25, abs=0.04)
    assert counts[Action(ActionKind.GERMINATE, 0)] / 2000 == pytest.approx(0.15, abs=0.04)
    assert gnn.greedy(out) == Action(ActionKind.GERMINATE, 2)


def test_wait_is_chosen_when_nothing_else_is_legal() -> None:
    inp = make_input(candidates=0, cull=[False] * 4, fossilize=[False] * 4)
    out = make_net()(inp)
    assert torch.isneginf(out.kind_logits[1:]).all()
    gen = torch.Generator().manual_seed(0)
    assert {gnn.sample(out, gen) for _ in range(50)} == {Action(ActionKind.WAIT, -1)}
    assert gnn.greedy(out) == Action(ActionKind.WAIT, -1)
    assert gnn.log_prob(out, Action(ActionKind.WAIT, -1)) == 0.0
    assert all(value == 0.0 for value in gnn.entropy(out).values())


def test_log_prob_matches_the_categorical_log_probs_by_hand() -> None:
    inp = make_input(seed=2, candidates=8)
    out = make_net()(inp)
    kind_lp = legal_log_probs_by_hand(out.kind_logits, inp.action_mask())
    target_lp = {
        ActionKind.GERMINATE: legal_log_probs_by_hand(out.germinate_logits, inp.germinate_mask),
        ActionKind.CULL: legal_log_probs_by_hand(out.cull_logits, inp.cull_mask),
        ActionKind.FOSSILIZE: legal_log_probs_by_hand(out.fossilize_logits, inp.fossilize_mask),
    }
    gen = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(100):
        action = gnn.sample(out, gen)
        seen.add(action.kind)
        expected = kind_lp[action.kind]
        if action.kind is not ActionKind.WAIT:
            expected = expected + target_lp[action.kind][action.target]
        got = gnn.log_prob(out, action)
        assert torch.isfinite(got)
        assert torch.allclose(got, expected, atol=1e-6)
    assert len(seen) >= 3
    # An illegal action has probability zero.
    illegal = int((~inp.germinate_mask).nonzero()[0])
    assert gnn.log_prob(out, Action(ActionKind.GERMINATE, illegal)) == NEG_INF


def test_entropy_per_head_is_the_renormalised_categorical_entropy() -> None:
    inp = make_input(seed=4, candidates=8)
    out = make_net()(inp)
    entropies = gnn.entropy(out)
    assert set(entropies) == {"kind", "germinate", "location", "cull", "fossilize"}
    for name, logits in heads(out).items():
        legal = ~torch.isneginf(logits)
        expected = torch.distributions.Categorical(logits=logits[legal]).entropy()
        assert torch.allclose(entropies[name], expected, atol=1e-6), name


def test_entropy_is_zero_for_a_single_legal_choice() -> None:
    inp = make_input(
        candidates=3,
        germinate=[False, True, False],
        cull=[False, False, True, False],
        fossilize=[False, False, False, False],
    )
    entropies = gnn.entropy(make_net()(inp))
    assert entropies["germinate"] == 0.0
    assert entropies["location"] == 0.0
    assert entropies["cull"] == 0.0
    assert entropies["fossilize"] == 0.0  # nothing legal
    assert entropies["kind"] > 0.0  # WAIT, GERMINATE and CULL


def test_log_prob_gradients_reach_every_parameter_and_stay_finite() -> None:
    inp = make_input(seed=7, candidates=8, cull=[True, True, False, True])
    inp = dataclasses.replace(inp, fossilize_mask=torch.tensor([False, True, True, False]))
    net = make_net()
    out = net(inp)
    germinate = int(inp.germinate_mask.nonzero()[0])
    loss = (
        gnn.log_prob(out, Action(ActionKind.GERMINATE, germinate))
        + gnn.log_prob(out, Action(ActionKind.CULL, 1))
        + gnn.log_prob(out, Action(ActionKind.FOSSILIZE, 2))
        + out.value
        + sum(gnn.entropy(out).values())
    )
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_gradients_stay_finite_when_heads_are_empty() -> None:
    # No candidates, nothing to cull or fossilize: every -inf path must keep NaN out of grads.
    inp = make_input(candidates=0, cull=[False] * 4, fossilize=[False] * 4)
    net = make_net()
    out = net(inp)
    (gnn.log_prob(out, Action(ActionKind.WAIT, -1)) + sum(gnn.entropy(out).values())).backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(g).all() for g in grads)


def test_germinate_scores_are_equivariant_to_the_candidate_order() -> None:
    inp = make_input(seed=8, candidates=9)
    net = make_net()
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    permuted = dataclasses.replace(
        inp,
        candidate_features=inp.candidate_features[perm],
        candidate_slot=inp.candidate_slot[perm],
        candidate_kernel_ids=tuple(inp.candidate_kernel_ids[i] for i in perm.tolist()),
        germinate_mask=inp.germinate_mask[perm],
    )
    out, out_permuted = net(inp), net(permuted)
    assert torch.allclose(out_permuted.germinate_logits, out.germinate_logits[perm], atol=1e-6)
    assert not torch.equal(out.germinate_logits, out.germinate_logits[perm])  # perm is not id
    assert torch.allclose(out_permuted.location_logits, out.location_logits, atol=1e-6)
    assert torch.allclose(out_permuted.kind_logits, out.kind_logits, atol=1e-6)


def test_outputs_do_not_depend_on_the_node_order() -> None:
    inp = make_input(seed=9, nodes=10)
    net = make_net()
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))  # new row i = old perm[i]
    new_row = torch.empty_like(perm)
    new_row[perm] = torch.arange(10)
    permuted = dataclasses.replace(
        inp,
        node_features=inp.node_features[perm],
        edge_index=new_row[inp.edge_index],
        slot_nodes=new_row[inp.slot_nodes],
    )
    out, out_permuted = net(inp), net(permuted)
    for name, logits in heads(out).items():
        assert torch.allclose(heads(out_permuted)[name], logits, atol=1e-5), name
    assert torch.allclose(out_permuted.value, out.value, atol=1e-5)


def test_the_graph_structure_matters() -> None:
    inp = make_input(seed=10)
    net = make_net()
    fewer_edges = dataclasses.replace(inp, edge_index=inp.edge_index[:, :3])
    assert not torch.allclose(net(inp).cull_logits, net(fewer_edges).cull_logits)


def test_message_edges_add_reverse_edges_and_one_self_loop_per_node() -> None:
    edges = gnn.message_edges(torch.tensor([[0, 1], [1, 2]]), 3)
    assert edges.tolist() == [[0, 1, 1, 2, 0, 1, 2], [1, 2, 0, 1, 0, 1, 2]]


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    net = make_net(seed=3, hidden=32, layers=3, heads=2)
    path = tmp_path / "tamiyo.pt"
    gnn.save(net, path)
    loaded = gnn.load(path).eval()
    assert loaded.config == net.config
    inp = make_input(seed=11)
    for name, logits in heads(net(inp)).items():
        assert torch.equal(heads(loaded(inp))[name], logits), name


def test_load_rejects_other_feature_sizes(tmp_path: Path) -> None:
    path = tmp_path / "tamiyo.pt"
    gnn.save(make_net(), path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["sizes"] = {**checkpoint["sizes"], "NODE_FEATURES": NODE_FEATURES + 1}
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="feature sizes") as raised:
        gnn.load(path)
    assert f"'NODE_FEATURES': {NODE_FEATURES + 1}" in str(raised.value)
    assert f"'NODE_FEATURES': {NODE_FEATURES}," in str(raised.value)


def test_load_rejects_weights_that_do_not_match_the_config(tmp_path: Path) -> None:
    path = tmp_path / "tamiyo.pt"
    gnn.save(make_net(), path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["value_head.0.weight"]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"missing \['value_head.0.weight'\]"):
        gnn.load(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["hidden"] = 32
    checkpoint["state_dict"]["value_head.0.weight"] = torch.zeros(32, 3 * 32)
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="do not match"):
        gnn.load(path)


def test_load_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a Tamiyo checkpoint"):
        gnn.load(path)


def test_forward_compiles_as_one_graph_with_static_shapes() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, _inputs: object) -> object:
        graphs.append(gm)
        return gm.forward

    inp = make_input(seed=12, candidates=6)
    net = make_net()
    compiled = torch.compile(net, fullgraph=True, backend=recording_backend, dynamic=False)
    out, expected = compiled(inp), net(inp)
    assert len(graphs) == 1
    # A data-dependent size (e.g. from boolean-mask indexing) would show as a symbolic dim.
    shapes = [
        node.meta["example_value"].shape
        for node in graphs[0].graph.nodes
        if isinstance(node.meta.get("example_value"), torch.Tensor)
    ]
    assert shapes
    assert all(isinstance(dim, int) for shape in shapes for dim in shape)
    for name, logits in heads(expected).items():
        assert torch.equal(heads(out)[name], logits), name


def test_action_and_log_prob_reject_bad_targets() -> None:
    with pytest.raises(ValueError, match="WAIT takes target -1"):
        Action(ActionKind.WAIT, 0)
    with pytest.raises(ValueError, match="CULL takes a target >= 0"):
        Action(ActionKind.CULL, -1)
    out = make_net()(make_input(candidates=2))
    with pytest.raises(ValueError, match="out of range"):
        gnn.log_prob(out, Action(ActionKind.GERMINATE, 2))


def test_config_rejects_unbuildable_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        TamiyoNetConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="dropout"):
        TamiyoNetConfig(dropout=1.0)
    with pytest.raises(ValueError, match=">= 1"):
        TamiyoNetConfig(layers=0)
