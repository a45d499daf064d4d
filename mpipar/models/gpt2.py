"""GPT-2 in NumPy, written once for any tensor-parallel split (serial = a split of 1): forward,
backward and generation.

    from mpipar.models import GPT, GPTConfig, init_params, load_state_dict
    model = GPT(config, params, comm=MPI.COMM_WORLD)   # each rank keeps only its shards
    logits = model.forward(tokens)                      # (B, T) ints -> (B, T, vocab), every rank
    loss, losses, grads = model.loss_and_grads(inputs, targets, weights)
    out = model.generate(prompt, max_new_tokens)        # greedy, with a KV cache

The architecture of GPT-2 (Radford et al. 2019): learned token and position
embeddings; pre-LayerNorm blocks x + attn(ln_1(x)), x + mlp(ln_2(x)); causal
multi-head self-attention; an MLP with GELU (tanh approximation, Hendrycks &
Gimpel 2016); a final LayerNorm; the LM head tied to the token embedding.

Tensor parallelism follows Megatron-LM (Shoeybi et al. 2019): attention
column-parallel by heads then row-parallel c_proj, one all-reduce per block;
the MLP column-parallel c_fc, GELU locally, row-parallel c_proj, one all-reduce;
a vocab-parallel embedding (masked lookup, all-reduce) and LM head (all-gather of
the logit slices, or a distributed argmax that moves only the winners). Biases of
row-parallel layers are added once, after the reduction. The layers, each with
its backward, are in ``layers`` and ``linear``; the split itself in ``params``.

Training does not average anything over the tensor-parallel group: each rank owns
distinct slices and computes their gradients exactly. Replicated parameters see
identical inputs and output gradients on every rank, so their gradients agree
without any communication -- except with ``sequence_parallel`` (Korthikanti et al.
2022, sec. 4.2.2): the LayerNorms, residual adds, positions and row-parallel biases then
see only this shard's block of positions, and their gradients, sums over positions,
are summed over the group (``reduce_from_tp``) as each group of ``grad_order()`` is done.
"""
from dataclasses import dataclass

import numpy as np

from ..measure.memory import held_bytes
from . import layers, linear
from .language_model import LanguageModel
from .loss import vocab_parallel_cross_entropy
from .params import BLOCK, is_sharded


@dataclass
class BlockSaved:
    """What a block's backward needs: its input, the residual stream between its two halves,
    and what attention and the MLP saved."""

    x: np.ndarray                #: the block's input (ln_1's input)
    attn: layers.AttentionSaved
    mid: np.ndarray              #: x + attention (ln_2's input)
    mlp: layers.MLPSaved


class GPT(LanguageModel):
    """GPT-2 whose weights are split over ``comm`` (or emulating a ``ways``-way split on one rank).

    ``algorithm`` is the allreduce algorithm of every row-parallel reduction;
    ``deterministic`` reduces partial sums in fixed rank order, so a serial run
    emulating the same split (``comm`` of size 1, ``ways`` = p) gives identical bits.
    ``comm_dtype`` float16 or bfloat16 sends every reduction and logit gather in
    16 bits, rounded ``per_hop`` or ``once`` (see mpipar.collectives.lowp). Construction,
    token checks and ``generate`` come from ``LanguageModel``.
    """

    # --- forward ---------------------------------------------------------------------------

    def embed(self, tokens, pos0=0):
        """Vocab-parallel token embedding plus the learned positions pos0.. ."""
        x = linear.vocab_parallel_embedding(self.tp, self.shards, "wte.weight", tokens)
        wpe = self.shards[0]["wpe.weight"][pos0:pos0 + tokens.shape[1]]
        if not self.tp.sequence_parallel:
            x += wpe  # x is new: add in place
            return x
        for block, rows in zip(x, self.tp.sequence_slices(tokens.shape[1])):
            block += wpe[rows]
        return x

    def _norm(self, prefix, x):
        """The LayerNorm ``prefix`` (ln_1, ln_2 of a block, or ln_f), replicated on every shard."""
        s0, eps = self.shards[0], self.config.layer_norm_epsilon
        return self.tp.per_block(
            lambda b: layers.layer_norm(b, s0[prefix + "weight"], s0[prefix + "bias"], eps), x)

    def block(self, i, x, cache=None, pos0=0):
        """Transformer block i on the residual stream x: x + attn(ln_1(x)), then + mlp(ln_2(.)).

        ``cache``: this layer's KV cache (``new_cache()[i]``), x then holds positions pos0.. .
        Returns (the block's output, BlockSaved).
        """
        h = f"h.{i}."
        a, attn = layers.attention(self.tp, self.shards, h + "attn.", self._norm(h + "ln_1.", x), cache, pos0)
        mid = self.tp.per_block(np.add, x, a)
        m, mlp_saved = layers.mlp(self.tp, self.shards, h + "mlp.", self._norm(h + "ln_2.", mid))
        return self.tp.per_block(np.add, mid, m), BlockSaved(x, attn, mid, mlp_saved)

    def decode(self, tokens, cache, pos0):
        """The final hidden states of ``tokens`` at positions pos0.., the earlier positions'
        keys and values read from (and these ones added to) the KV cache."""
        x = self.embed(tokens, pos0)
        for i in range(self.config.n_layer):
            x, _ = self.block(i, x, cache[i], pos0)
        return self._norm("ln_f.", x)

    def final_hidden(self, tokens, hidden=None):
        """The final LayerNorm'd hidden states (B, T, d) of ``tokens``: what the LM head reads.

        Pass a list as ``hidden`` to collect the residual stream after every block.
        """
        x = self.embed(self.check_tokens(tokens))
        for i in range(self.config.n_layer):
            x, _ = self.block(i, x)
            if hidden is not None:
                hidden.append(x)
        return self._norm("ln_f.", x)

    def logit_parts(self, x):
        """Each shard's slice of the logits: x @ its rows of wte, transposed (tied head)."""
        return linear.lm_head(self.tp, self.shards, "wte.weight", x)

    def forward(self, tokens, hidden=None):
        """Logits (B, T, vocab) as float, complete and identical on every rank.

        Pass a list as ``hidden`` to collect the residual stream after every block.
        """
        return self.tp.gather_from_tp(self.logit_parts(self.final_hidden(tokens, hidden)), axis=-1)

    # --- backward --------------------------------------------------------------------------

    def grad_order(self):
        """Parameter names in the order backward finishes their gradients, in the groups
        ``loss_and_grads`` reports them: ln_f, the blocks last to first, the embeddings."""
        last_first = reversed(range(self.config.n_layer))
        blocks = [[f"h.{i}.{name}" for name in sorted(BLOCK)] for i in last_first]
        return [["ln_f.weight", "ln_f.bias"], *blocks, ["wte.weight", "wpe.weight"]]

    def _norm_backward(self, prefix, x, dy, grads):
        """LayerNorm's input gradient; its gain's and bias's into grads[0] (sequence parallel:
        each block's into its shard's grads[k], summed by ``reduce_replicated``)."""
        w, eps = self.shards[0][prefix + "weight"], self.config.layer_norm_epsilon
        if not self.tp.sequence_parallel:
            dx, grads[0][prefix + "weight"], grads[0][prefix + "bias"] = layers.layer_norm_backward(
                x, w, dy, eps)
            return dx
        dxs = []
        for k, (xb, dyb) in enumerate(zip(x, dy)):
            dx, grads[k][prefix + "weight"], grads[k][prefix + "bias"] = layers.layer_norm_backward(
                xb, w, dyb, eps)
            dxs.append(dx)
        return dxs

    def reduce_replicated(self, names, grads):
        """With sequence parallelism, the gradients of the replicated parameters among ``names``
        -- each shard's, of its own positions -- summed over the group into grads[0]: one
        all-reduce of them side by side. Without it, nothing to do."""
        names = [n for n in names if not is_sharded(n)]
        if not self.tp.sequence_parallel or not names:
            return
        flat = [np.concatenate([g.pop(n).reshape(-1) for n in names]) for g in grads]
        total, at = self.tp.reduce_from_tp(flat), 0
        for n in names:
            size = self.shards[0][n].size
            grads[0][n] = total[at:at + size].reshape(self.shards[0][n].shape)
            at += size

    def block_backward(self, i, saved, dy, grads):
        """The gradient of block i's input from its output's; its parameters' into ``grads``."""
        h = f"h.{i}."
        dm = layers.mlp_backward(self.tp, self.shards, h + "mlp.", saved.mlp, dy, grads)
        dy = self.tp.per_block(np.add, dy, self._norm_backward(h + "ln_2.", saved.mid, dm, grads))
        da = layers.attention_backward(self.tp, self.shards, h + "attn.", saved.attn, dy, grads)
        return self.tp.per_block(np.add, dy, self._norm_backward(h + "ln_1.", saved.x, da, grads))

    def loss_and_grads(self, inputs, targets, weights, on_layer_done=None):
        """Forward with saved activations, vocab-parallel cross-entropy, backward.

        Returns (this rank's weighted loss sum, per-position losses, grads). The loss
        is sum(weights * loss); pass weights = mask / (predicted positions in the
        global batch) and gradients of data-parallel ranks then simply add up.
        ``grads`` mirrors ``shards``: grads[k][name] is the gradient of shard k's piece
        of ``name``; replicated parameters' only in grads[0]. ``on_layer_done(names,
        grads)`` is called with each group of ``grad_order()`` as soon as those
        gradients are final -- where data parallelism starts their all-reduce.
        ``activation_bytes`` afterwards: the bytes of the activations this forward saved.
        """
        user_done = on_layer_done or (lambda names, grads: None)

        def done(names, grads):
            self.reduce_replicated(names, grads)
            user_done(names, grads)

        order = iter(self.grad_order())
        tokens = self.check_tokens(inputs)
        x, saved = self.embed(tokens), []
        for i in range(self.config.n_layer):
            x, block = self.block(i, x)
            saved.append(block)
        loss, losses, head = self.head_loss(x, targets, weights)
        self.activation_bytes = activation_bytes(saved, head)
        grads = [{} for _ in self.shards]
        dx = self.head_backward(head, grads)
        done(next(order), grads)
        for i in reversed(range(self.config.n_layer)):
            dx = self.block_backward(i, saved[i], dx, grads)
            done(next(order), grads)
        self.embed_backward(tokens, dx, grads)
        done(next(order), grads)
        return loss, losses, grads

    def head_loss(self, x, targets, weights):
        """ln_f, the LM head and the vocab-parallel cross-entropy on the last block's output x:
        (loss, per-position losses, what ``head_backward`` needs)."""
        xf = self._norm("ln_f.", x)
        loss, losses, dparts = vocab_parallel_cross_entropy(
            self.tp, self.logit_parts(xf), [s["vocab"] for s in self.shards], np.asarray(targets),
            weights)
        return loss, losses, (x, xf, dparts)

    def head_backward(self, head, grads):
        """The gradient of the last block's output; the LM head's and ln_f's into ``grads``."""
        x, xf, dparts = head
        dxf = linear.lm_head_backward(self.tp, self.shards, "wte.weight", xf, dparts, grads)
        return self._norm_backward("ln_f.", x, dxf, grads)

    def embed_backward(self, tokens, dx, grads):
        """The embeddings' gradients from the first block's input gradient dx, into ``grads``
        (wte's added to the LM head's where it is already there: the weights are tied)."""
        if self.tp.sequence_parallel:  # each block's positions, in its shard's dict
            for g, rows, d in zip(grads, self.tp.sequence_slices(tokens.shape[1]), dx):
                g["wpe.weight"] = np.zeros_like(self.shards[0]["wpe.weight"])
                g["wpe.weight"][rows] = d.sum(0)
        else:
            grads[0]["wpe.weight"] = np.zeros_like(self.shards[0]["wpe.weight"])
            grads[0]["wpe.weight"][:tokens.shape[1]] = dx.sum(0)
        linear.vocab_parallel_embedding_backward(self.tp, self.shards, "wte.weight", tokens, dx, grads)


def activation_bytes(saved, head):
    """Bytes of the activations one training forward keeps for backward (``held_bytes``: views
    counted once): ``replicated``, those of the regions tensor parallelism leaves whole on every
    rank -- the blocks' and norms' inputs, what c_attn, c_fc and the head read -- which
    sequence parallelism cuts to 1/p, and ``sharded``, those already split by heads, hidden
    units and vocabulary (attention's q, k, v, probabilities, the MLP's, the logits' gradient)."""
    x, xf, dparts = head
    replicated = held_bytes([(b.x, b.mid, b.attn.x, b.mlp.x) for b in saved], x, xf)
    return dict(replicated=replicated, sharded=held_bytes(saved, head) - replicated)
