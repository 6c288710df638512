"""The copy circuit the demo's training script plants (scripts/demo_circuit.py): at init it is
a previous-token head and an induction head, it copies repeated runs, and `apply` restores it
after an optimizer step."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from demo_circuit import CopyCircuit  # noqa: E402


def tiny_llama(seed=0, rope_theta=1e8):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=400, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                         rope_theta=rope_theta, tie_word_embeddings=True, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


def repeated_run(seed=1, length=60, copies=3):
    g = torch.Generator().manual_seed(seed)
    run = torch.randperm(400, generator=g)[:length]
    return run.repeat(copies)


def test_planted_heads_attend_to_the_previous_token_and_the_token_after_the_last_match():
    model = tiny_llama()
    CopyCircuit(model)
    ids = repeated_run()
    with torch.no_grad():
        attentions = model(input_ids=ids[None], output_attentions=True).attentions
    previous, induction = attentions[0][0, 0], attentions[1][0, 0]
    n = len(ids)
    assert torch.stack([previous[m, m - 1] for m in range(1, n)]).mean() > 0.95
    # In the second and third copies, token m's earlier occurrences are followed by ids[m + 1]'s
    # earlier occurrences: the induction head should put its mass on those positions.
    mass = [induction[m, [k for k in range(1, m) if ids[k - 1] == ids[m]]].sum() for m in range(60, n)]
    assert torch.stack(mass).mean() > 0.9
    # An untouched head of the same model does not.
    assert attentions[1][0, 1][60:].max(dim=-1).values.mean() < 0.5


def test_planted_circuit_predicts_the_copies_a_random_model_cannot():
    ids = repeated_run()
    accuracy = {}
    for planted in (False, True):
        model = tiny_llama()
        if planted:
            CopyCircuit(model)
        with torch.no_grad():
            predicted = model(input_ids=ids[None]).logits[0, :-1].argmax(-1)
        accuracy[planted] = (predicted[60:] == ids[61:]).float().mean().item()
    assert accuracy[False] < 0.05 and accuracy[True] > 0.9


def test_lookback_heads_attend_at_their_distance_and_two_token_matching_copies_ambiguous_runs():
    # Runs over 30 distinct tokens: every token recurs at a few places, so matching the
    # current token alone finds the wrong continuation most of the time.
    run = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(2))
    ids = run.repeat(3)
    accuracy = {}
    for match in (1, 2):
        model = tiny_llama()
        CopyCircuit(model, code_dims=16, lookback=2, match=match)
        with torch.no_grad():
            out = model(input_ids=ids[None], output_attentions=True)
        first = out.attentions[0][0]
        for d in (1, 2):
            assert torch.stack([first[d - 1, m, m - d] for m in range(4, len(ids))]).mean() > 0.95
        predicted = out.logits[0, :-1].argmax(-1)
        accuracy[match] = (predicted[60:] == ids[61:]).float().mean().item()
    assert accuracy[1] < 0.4 and accuracy[2] > 0.75  # measured: 0.24 and 0.86


def test_apply_restores_the_circuit_after_an_optimizer_step():
    model = tiny_llama()
    circuit = CopyCircuit(model)
    planted = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 400, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    q = model.model.layers[1].self_attn.q_proj.weight
    assert not torch.equal(q[:64], planted["model.layers.1.self_attn.q_proj.weight"][:64])
    circuit.apply()
    state = model.state_dict()
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert torch.equal(state[name][:64], planted[name][:64])  # head 0's rows
    name = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(state[name][:, :64], planted[name][:, :64])  # head 0's columns
    embed = model.model.embed_tokens.weight
    assert torch.equal(embed[:, :65], planted["model.embed_tokens.weight"][:, :65])
    # the free part keeps what it learned, renormalized to unit norm per token
    assert torch.allclose(embed[:, 65:].norm(dim=1), torch.ones(400), atol=1e-5)


def test_circuit_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        CopyCircuit(tiny_llama(), code_dims=48)
    with pytest.raises(ValueError, match="do not fit"):
        CopyCircuit(tiny_llama(), code_dims=16, lookback=3)  # the model has 2 heads
