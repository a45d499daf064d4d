"""Pipeline-parallel inference equals the unsplit model: every split of MPI.COMM_WORLD into
pp stages x tp shards, uneven stages, one to B micro-batches.

A stage computes exactly the serial numbers of its blocks (a pipeline only moves the residual
stream between ranks, it adds nothing up), so pp stages with tp = 1 are bitwise equal to one
process; with tp > 1 the tensor-parallel reductions reorder sums, so the reference is the same
split emulated on one process in deterministic mode, again bit for bit. Logits are compared
with the reference on the same micro-batches (a BLAS may block a product by its row count);
tokens with the whole batch's ``generate``.
"""
from dataclasses import replace

from helpers import NoMessages, all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest
import reference_llama as ref

from mpipar.collectives.blocks import split as block_range
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPT, PRESETS, Llama, init_params
from mpipar.parallel.mesh import Mesh
from mpipar.parallel.pipeline_inference import PipelineInference, micro_batch_problem, predicted_bubble
from mpipar.parallel.pipeline_inference_stage import (
    InferenceStage,
    layers_per_stage,
    stage_names,
)
from mpipar.parallel.pipeline_stage import stage_problem

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P, RANK = COMM.Get_size(), COMM.Get_rank()
B, T, N = 5, 7, 6  # sequences, prompt length, new tokens
pytestmark = pytest.mark.mpi
SPLITS = [(P // tp, tp) for tp in range(1, P + 1) if P % tp == 0 and tp <= ref.SMALL.n_head]


def llama(pp):
    """5 layers (uneven on 2, 3, 4 stages), or pp + 1 where more stages ask for more."""
    return replace(ref.SMALL, n_layer=max(5, pp + 1))


def tokens(cfg, batch=B, length=T, seed=1):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length))


def pipeline(cfg, params, pp, tp, **options):
    mesh = Mesh(COMM, 1, tp, pp=pp)
    stage = InferenceStage.build(cfg, params, mesh.pp_rank, pp, mesh.tp_comm,
                                 deterministic=tp > 1, **options)
    return mesh, PipelineInference(stage, mesh.pp_comm)


def reference(cls, cfg, params, tp):
    """The unsplit model: one process; the same tp split emulated (deterministic) if tp > 1."""
    return cls(cfg, params, SELF, deterministic=tp > 1, ways=tp)


def test_stages_hold_contiguous_blocks_and_only_their_parameters():
    assert layers_per_stage(5, 3) == [2, 2, 1] and layers_per_stage(30, 4) == [8, 8, 7, 7]
    cfg = ref.SMALL
    assert "embed_tokens.weight" in stage_names(cfg, 0, 2) and "norm.weight" not in stage_names(cfg, 0, 2)
    assert {"norm.weight", "embed_tokens.weight"} <= stage_names(cfg, 1, 2)  # the tied head
    assert not any(n.startswith("layers.0.") for n in stage_names(cfg, 1, 2))
    untied = replace(cfg, tie_embeddings=False)
    assert "lm_head.weight" in stage_names(untied, 1, 2)
    assert "lm_head.weight" not in stage_names(untied, 0, 2)
    assert "at most 30 stages" in stage_problem(30, 31) and stage_problem(30, 30) is None


def test_bad_splits_are_refused_before_any_message():
    with pytest.raises(ValueError, match="at most 5 stages"):
        InferenceStage.build(llama(1), ref.lively(llama(1)), 0, 6, NoMessages(SELF))
    assert "at least 3 sequences" in micro_batch_problem(2, 3)
    assert "whole number" in micro_batch_problem(2, 0)
    assert predicted_bubble(4, 1) == dict(prefill=0.75, decode=0.75, decode_per_stage=[0.75] * 4)
    assert predicted_bubble(4, 4) == dict(prefill=3 / 7, decode=0.0, decode_per_stage=[0.0] * 4)


def test_unequal_stages_idle_while_the_busiest_works():
    """Work 1, 1, 2 with m = 3: a step is 3 x 2 = 6 units, stages 0 and 1 busy 3 of them."""
    assert predicted_bubble(3, 3, [1, 1, 2])["decode_per_stage"] == [0.5, 0.5, 0.0]
    # one micro-batch: its trip round the ring, 4 units, sets the step
    assert predicted_bubble(3, 1, [1, 1, 2])["decode_per_stage"] == [0.75, 0.75, 0.5]


def test_a_stage_weighs_its_matrix_products_and_the_head():
    config = replace(ref.SMALL, n_layer=4)
    stages = [InferenceStage.build(config, ref.lively(config), k, 2, NoMessages(SELF)) for k in (0, 1)]
    first, last = (s.weights_per_token() for s in stages)
    head = config.vocab_size * config.n_embd
    assert first > 0 and last == first + head  # two equal blocks each; the last adds the head


@pytest.mark.parametrize("pp, tp", SPLITS)
@pytest.mark.parametrize("m", [1, 2, B])
def test_tokens_and_logits_equal_the_unsplit_model(pp, tp, m):
    cfg = llama(pp)
    params, tok = ref.lively(cfg), tokens(cfg)
    serial = reference(Llama, cfg, params, tp)
    mesh, pipe = pipeline(cfg, params, pp, tp)
    with mesh, CommLedger() as led:
        out = pipe.generate(tok, N, micro_batches=m)
        logits = pipe.forward(tok, micro_batches=m)
        last = mesh.pp_rank == pp - 1
    problems = []
    if not np.array_equal(out, serial.generate(tok, N)):
        problems.append("tokens differ")
    rows = [block_range(B, m, i) for i in range(m)]
    if last and not np.array_equal(logits, np.concatenate([serial.forward(tok[r]) for r in rows])):
        problems.append("logits are not bitwise equal")
    if not last and logits is not None:
        problems.append("logits away from the last stage")
    # every byte: hidden states forward, tokens (and one more number) back to every stage
    d, f = cfg.n_embd * 4, pipe.figures
    sent = (B * T * d + B * (N - 1) * d) if not last else (pp - 1) * N * (B + m) * 8
    if f["bytes_sent"] != sent:
        problems.append(f"{f['bytes_sent']} bytes sent, expected {sent}")
    ledger_sent = sum(r["bytes_sent"] for r in led.records if r["op"] == "send")
    if ledger_sent != sent + (0 if last else B * T * d):  # forward's hidden states too
        problems.append(f"the ledger counts {ledger_sent} bytes sent")
    if f["steps"] != N or not all(0 <= f[p]["bubble"] <= 1 for p in ("prefill", "decode")):
        problems.append(f"figures {f}")
    all_ranks_ok(problems)


@pytest.mark.parametrize("pp, tp", SPLITS)
def test_sampling_draws_the_serial_tokens(pp, tp):
    cfg = llama(pp)
    params, tok = ref.lively(cfg), tokens(cfg)
    expected = reference(Llama, cfg, params, tp).generate(tok, N, temperature=0.8, seed=3)
    mesh, pipe = pipeline(cfg, params, pp, tp)
    with mesh:
        out = pipe.generate(tok, N, micro_batches=min(3, B), temperature=0.8, seed=3)
    all_ranks_ok([] if np.array_equal(out, expected) else ["sampled tokens differ"])


def test_a_micro_batch_stops_at_the_stop_token_and_every_rank_knows():
    pp, tp = SPLITS[-1]  # the most stages
    cfg = llama(pp)
    params, tok = ref.lively(cfg), tokens(cfg, batch=3)
    serial = reference(Llama, cfg, params, tp).generate(tok, N)
    stop = int(serial[0, T + 2])  # sequence 0 stops at step 2 (or earlier)
    first = [int(np.nonzero(row == stop)[0][0]) if stop in row else N - 1 for row in serial[:, T:]]
    expected = np.full((3, T + max(first) + 1), stop)
    expected[:, :T] = tok
    for j, f in enumerate(first):
        expected[j, T:T + f + 1] = serial[j, T:T + f + 1]
    seen = []
    mesh, pipe = pipeline(cfg, params, pp, tp)
    with mesh:
        out = pipe.generate(tok, N, micro_batches=3, stop_id=stop,
                            on_tokens=lambda t, rows, ids: seen.append((t, rows.start, ids.tolist())))
    problems = [] if np.array_equal(out, expected) else [f"{out.tolist()} != {expected.tolist()}"]
    for j, f in enumerate(first):  # each sequence's tokens, step by step, once each
        mine = [ids[0] for t, start, ids in seen if start == j]
        if mine != expected[j, T:T + f + 1].tolist():
            problems.append(f"sequence {j}: on_tokens saw {mine}")
    all_ranks_ok(problems)


def test_each_stage_caches_only_its_own_layers():
    pp, tp = SPLITS[-1]
    cfg = llama(pp)
    mesh, pipe = pipeline(cfg, ref.lively(cfg), pp, tp)
    with mesh:
        cache = pipe.stage.new_cache(2, 10)
        mine = layers_per_stage(cfg.n_layer, pp)[mesh.pp_rank]
        held = pipe.stage.model.param_bytes()
    problems = [] if len(cache) == mine else [f"{len(cache)} cached layers, {mine} owned"]
    whole = Llama(cfg, ref.lively(cfg), SELF, ways=tp).param_bytes() / tp
    if pp > 2 and not held < whole:
        problems.append(f"a stage holds {held} bytes of {whole}")
    all_ranks_ok(problems)


@pytest.mark.parametrize("pp, tp", SPLITS)
def test_gpt2_goes_through_the_same_pipeline(pp, tp):
    cfg = replace(PRESETS["tiny"], n_layer=max(3, pp))
    if tp > cfg.n_head:
        pytest.skip(f"{cfg.n_head} heads")
    params, tok = init_params(cfg, 0), tokens(cfg, batch=3)
    expected = reference(GPT, cfg, params, tp).generate(tok, N)
    mesh, pipe = pipeline(cfg, params, pp, tp)
    with mesh:
        out = pipe.generate(tok, N, micro_batches=2)
    all_ranks_ok([] if np.array_equal(out, expected) else ["GPT-2 tokens differ"])


def test_stages_that_sleep_while_they_wait_give_the_same_tokens():
    pp, tp = SPLITS[-1]
    cfg = llama(pp)
    params, tok = ref.lively(cfg), tokens(cfg, batch=2)
    expected = reference(Llama, cfg, params, tp).generate(tok, N)
    mesh = Mesh(COMM, 1, tp, pp=pp)
    stage = InferenceStage.build(cfg, params, mesh.pp_rank, pp, mesh.tp_comm, deterministic=tp > 1)
    with mesh, CommLedger() as led:
        out = PipelineInference(stage, mesh.pp_comm, poll=1e-4).generate(tok, N, micro_batches=2)
    waited = sum(r["seconds"] for r in led.records if r["op"] == "recv")
    problems = [] if np.array_equal(out, expected) else ["tokens differ"]
    if pp > 1 and mesh.pp_rank == 0 and not waited > 0:
        problems.append("the first stage never waited for its tokens")
    all_ranks_ok(problems)
