"""A hand-planted copy circuit (an induction head) for the demo's tiny Llama, held in place
while it trains.

Stops 19-21 and 22 measured that a 3M-parameter model does not learn to copy from its context
within the step counts a 30-minute CPU budget allows (next-token accuracy on repeated word runs
creeps from 0.1 to about 0.2 in 250 steps, whatever the RoPE base or head size). Refining a
candidate means copying it, so the training script builds the circuit by hand instead. The
checkpoint stays a standard Llama: only its initial weights, and the entries this module
resets after every optimizer step, differ.

Residual channels: 0 holds a constant, 1..D a fixed random code of the token, D+1..2D the
previous token's code; the rest are free. Layer 0, head 0 is a previous-token head: its
query and key read only the constant channel, in RoPE's fast pairs, with the query's phases
turned back by one position, so its score peaks at distance 1 whatever the content; its value
copies the code into the previous-token channels. Layer 1, head 0 is the induction head: its
query reads the current token's code, its key the previous-token code (in RoPE's near-static
pairs, which a large rope_theta keeps static over the context), so it attends to the token
after each earlier occurrence of the current one; its value is that token's code, written
back into the code channels, where the tied unembedding reads it as a logit boost.
"""

from __future__ import annotations

import math

import torch


class CopyCircuit:
    """`lookback` heads of layer 0 write the codes of the 1..lookback previous tokens (offset d
    in channel block d); the induction head matches the last `match` tokens (1 or 2)."""

    def __init__(self, model, code_dims: int = 32, positional_pairs: int = 12, seed: int = 0,
                 previous_scale: float = 14.0, match_scale: float = 12.0, output_scale: float = 4.0,
                 lookback: int = 1, match: int = 1):
        config = model.config
        self.model, self.head_dim, self.dims = model, config.head_dim, code_dims
        self.lookback, self.match = lookback, match
        half = self.head_dim // 2
        self.fixed = 1 + (1 + lookback) * code_dims
        if (code_dims % 2 or positional_pairs + match * code_dims // 2 > half or self.fixed > config.hidden_size
                or not 1 <= match <= lookback <= config.num_attention_heads):
            raise ValueError(f"a {code_dims}-dim code, {lookback} lookback heads, {match}-token matching and "
                             f"{positional_pairs} positional pairs do not fit head_dim {self.head_dim}, "
                             f"hidden {config.hidden_size}, {config.num_attention_heads} heads")
        self.group = config.num_attention_heads // config.num_key_value_heads
        generator = torch.Generator().manual_seed(seed)
        codes = torch.randn(config.vocab_size, code_dims, generator=generator)
        self.codes = codes / codes.norm(dim=1, keepdim=True)
        self.code = self.block(0)
        # Unit constant, unit code, unit free part: every token's RMS is the same, so the
        # lookback heads' sharpness does not depend on the token.
        self.rms = math.sqrt(3 / config.hidden_size)
        inv_freq = model.model.rotary_emb.inv_freq.float()
        self.positional = list(range(positional_pairs))
        pairs = [half - match * code_dims // 2 + i for i in range(match * code_dims // 2)]
        self.static = pairs + [p + half for p in pairs]
        # Head d-1's query is the key's positional pattern turned back by d positions: its
        # score peaks at distance d.
        self.lookback_queries = torch.zeros(lookback, self.head_dim)
        for d in range(1, lookback + 1):
            for j in self.positional:
                self.lookback_queries[d - 1, j] = math.cos(d * inv_freq[j])
                self.lookback_queries[d - 1, j + half] = -math.sin(d * inv_freq[j])
        self.previous_key = torch.zeros(self.head_dim)
        self.previous_key[self.positional] = 1.0
        self.previous_scale, self.match_scale, self.output_scale = previous_scale, match_scale, output_scale
        self.apply()

    def block(self, d: int) -> range:
        """Residual channels of the code of the token d positions back (0: the token itself)."""
        return range(1 + d * self.dims, 1 + (d + 1) * self.dims)

    def rows(self, head: int, kv: bool = False) -> slice:
        index = head // self.group if kv else head
        return slice(index * self.head_dim, (index + 1) * self.head_dim)

    @torch.no_grad()
    def apply(self):
        """Reset the circuit's weights (call after every optimizer step)."""
        layers, hd, dims = self.model.model.layers, self.head_dim, self.dims
        embed = self.model.model.embed_tokens.weight
        free = embed[:, self.fixed:]
        embed[:, self.fixed:] = free / free.norm(dim=1, keepdim=True).clamp_min(1e-8)
        embed[:, 0] = 1.0
        embed[:, self.code] = self.codes.to(embed.dtype)
        embed[:, self.block(1).start: self.fixed] = 0.0
        for layer in layers[:2]:
            layer.input_layernorm.weight[: self.fixed] = 1.0
        unit = self.rms  # a pre-norm weight of `unit` reads a normalized channel at scale 1

        first = layers[0].self_attn
        # Nothing else in layer 0 writes the fixed channels, so layer 1 reads them clean.
        first.o_proj.weight[: self.fixed] = 0.0
        layers[0].mlp.down_proj.weight[: self.fixed] = 0.0
        for head in range(self.lookback):
            q, kv = self.rows(head), self.rows(head, kv=True)
            for proj, r in ((first.q_proj, q), (first.k_proj, kv), (first.v_proj, kv)):
                proj.weight[r] = 0.0
            first.q_proj.weight[q, 0] = self.lookback_queries[head] * self.previous_scale * unit
            first.k_proj.weight[kv, 0] = self.previous_key * self.previous_scale * unit
            first.v_proj.weight[range(kv.start, kv.start + dims), self.code] = unit
            first.o_proj.weight[:, q] = 0.0
            first.o_proj.weight[self.block(head + 1), range(q.start, q.start + dims)] = 1.0

        second = layers[1].self_attn
        for proj in (second.q_proj, second.k_proj, second.v_proj):
            proj.weight[:hd] = 0.0
        # Query: this token and the `match - 1` before it; key: the same offsets, one further back.
        for i in range(self.match):
            static = self.static[i * dims:(i + 1) * dims]
            second.q_proj.weight[static, self.block(i)] = self.match_scale * unit
            second.k_proj.weight[static, self.block(i + 1)] = self.match_scale * unit
        second.v_proj.weight[range(dims), self.code] = unit
        second.o_proj.weight[:, :hd] = 0.0
        second.o_proj.weight[self.code, range(dims)] = self.output_scale
