"""The hook-free path (fused.py) against the hook path (features.py): same features and exact rewards in
float64, eager and compiled; the model is left exactly as it was (forwards, requires_grad, mode, .grad)."""

import shutil

import pytest
import torch

import influence_ref as R
from thresher.corpus.batching import pad_docs
from thresher.influence import GradientFeatures, InfluenceConfig, InfluenceScorer
from thresher.influence import fused as FU
from thresher.influence.fused import FusedFeatures
from thresher.utils.errors import ThresherError

DOCS = R.random_docs(6, lo=3, hi=15, seed=3)  # lengths differ: padded rows


@pytest.fixture(scope="module")
def model():
    return R.tiny_llama()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _untouched(model, training=False):
    """No patched forward left, weights still require grad and have none, mode restored."""
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert model.training == training


CASES = {
    "qkv": dict(projection_dim=64),
    "independent": dict(grouping="independent", projection_dim=64),
    "mlp_only": dict(grouping="mlp_only", projection_dim=48),
    "qkv-none": dict(projection="none"),
    "mlp_only-none": dict(grouping="mlp_only", projection="none"),
    "in-side-exact": dict(projection_dim=256, k_in=16, k_out=4),  # P_in None, P_out projected
    "out-side-exact": dict(projection_dim=256, k_in=4, k_out=10_000),  # P_out None: sink row slices
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_features_equal_hook_path(model, case):
    model.train()  # frozen() must switch to eval and back
    gf = GradientFeatures(model, InfluenceConfig(batch_size=4, **CASES[case]))
    batch = pad_docs(DOCS, 64)
    want = gf.features(model, batch)
    got = FusedFeatures(gf).features(model, batch)
    assert got.shape == want.shape and got.dtype == torch.float64
    assert float(want.norm()) > 0 and _rel(got, want) < 1e-10
    per_block = FusedFeatures(gf).block_features(model, batch)
    assert [tuple(f.shape[1:]) for f in per_block] == [(ko, ki) for ki, ko in gf.dims]
    _untouched(model, training=True)
    model.eval()


def test_padding_and_batch_invariance(model):
    """Each document's features do not depend on its batch-mates or on padding."""
    gf = GradientFeatures(model, InfluenceConfig(projection_dim=64))
    ff = FusedFeatures(gf)
    together = ff.features(model, pad_docs(DOCS, 64))
    alone = torch.cat([ff.features(model, pad_docs([d], 64)) for d in DOCS])
    assert _rel(together, alone) < 1e-10


@pytest.mark.parametrize("tasks", [1, 2])  # two contraction orders in exact_contract
def test_exact_rewards_equal_hook_path(model, tasks):
    ref = dict(list(R.reference_tasks().items())[:tasks])
    s = InfluenceScorer(model, ref, InfluenceConfig(reward_mode="exact", preconditioner="none", batch_size=4))
    s.refresh(model)
    batch = pad_docs(DOCS, 64)
    want = s.feats.exact_rewards(model, batch, s.ref_exact)
    got = FusedFeatures(s.feats).exact_rewards(model, batch, s.ref_exact)
    assert got.shape == (len(DOCS), tasks) and got.dtype == torch.float64
    assert _rel(got, want) < 1e-10
    _untouched(model)


def test_restored_after_error(model, monkeypatch):
    gf = GradientFeatures(model, InfluenceConfig(projection_dim=64))

    def boom(*a, **k):
        raise RuntimeError("loss failed")

    monkeypatch.setattr(FU, "summed_doc_loss", boom)
    with pytest.raises(RuntimeError, match="loss failed"):
        FusedFeatures(gf).features(model, pad_docs(DOCS, 64))
    _untouched(model)


def test_existing_instance_forward_is_restored(model):
    mod = GradientFeatures(model, InfluenceConfig()).blocks[0].modules[0]
    own = mod.forward  # a bound method; store it as an instance attribute like a user patch would
    mod.forward = own
    try:
        gf = GradientFeatures(model, InfluenceConfig(projection_dim=64))
        FusedFeatures(gf).features(model, pad_docs(DOCS[:2], 64))
        assert mod.__dict__["forward"] is own
    finally:
        del mod.forward


def test_members_must_share_input(model):
    cfg = InfluenceConfig(groups=[["q_proj", "o_proj"]], projection_dim=64)  # o_proj reads the attention output
    gf = GradientFeatures(model, cfg)
    with pytest.raises(ThresherError, match="do not share one input"):
        FusedFeatures(gf).features(model, pad_docs(DOCS, 64))
    _untouched(model)


@pytest.mark.parametrize("case", ["qkv", "out-side-exact"])
def test_compiled_equals_eager_aot(model, case):
    """dynamo + AOTAutograd trace the routed forward and the custom backward (no C++ compiler needed);
    a short batch is padded to batch_size rows and the sequence bucket, and a second shape in the same
    bucket reuses the graph."""
    gf = GradientFeatures(model, InfluenceConfig(batch_size=8, **CASES[case]))
    ff = FusedFeatures(gf, compile=True, backend="aot_eager")
    for docs in (DOCS, DOCS[:3]):
        batch = pad_docs(docs, 64)
        assert _rel(ff.features(model, batch), gf.features(model, batch)) < 1e-10
    _untouched(model)


def test_compiled_exact_rewards_aot(model):
    s = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(reward_mode="exact", preconditioner="none"))
    s.refresh(model)
    batch = pad_docs(DOCS, 64)
    got = FusedFeatures(s.feats, compile=True, backend="aot_eager").exact_rewards(model, batch, s.ref_exact)
    assert _rel(got, s.feats.exact_rewards(model, batch, s.ref_exact)) < 1e-10


def test_compile_failure_is_a_thresher_error(model):
    def no_compiler(gm, example_inputs):
        raise RuntimeError("cannot find a C++ compiler")

    gf = GradientFeatures(model, InfluenceConfig(projection_dim=64))
    with pytest.raises(ThresherError, match="compile of the scoring step failed .*C\\+\\+ compiler"):
        FusedFeatures(gf, compile=True, backend=no_compiler).features(model, pad_docs(DOCS, 64))
    _untouched(model)


@pytest.mark.slow
def test_compiled_inductor_equals_eager():
    """Inductor (C++ kernels on CPU; ~30 s of compilation) in float32: tolerance of float32 sums."""
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler: inductor cannot build CPU kernels")
    model = R.tiny_llama().float()
    gf = GradientFeatures(model, InfluenceConfig(projection_dim=64))
    batch = pad_docs(DOCS, 64)
    got = FusedFeatures(gf, compile=True).features(model, batch)
    assert _rel(got.double(), gf.features(model, batch).double()) < 1e-4


def test_autocast_compiled_equals_eager():
    """bf16 autocast (forced on CPU here; CUDA only in use): compiled and eager agree, and both stay
    within bf16 error (eps 2^-8) of the float32 features (projections and sums are float32)."""
    model = R.tiny_llama().float()
    gf = GradientFeatures(model, InfluenceConfig(projection_dim=64, autocast="bf16"))
    batch = pad_docs(DOCS, 64)
    want = gf.features(model, batch)  # autocast is CUDA-only in the hook path: float32 here
    got = []
    for compile in (False, True):
        ff = FusedFeatures(gf, compile=compile, backend="aot_eager")
        ff.amp_on_cpu = True
        got.append(ff.features(model, batch))
    assert got[0].dtype == torch.float32 and _rel(got[1], got[0]) < 1e-2  # bf16 rounding differs by graph
    assert 0 < _rel(got[0], want) < 3e-2


def test_interleaves_with_compiled_training_without_recompiles():
    """In-training use: a compiled training step and compiled scoring alternate on one model; patching
    and restoring the Linears' forwards recompiles neither, and training gradients are untouched."""
    from torch._dynamo.utils import counters

    model = R.tiny_llama().float().train()
    batch = pad_docs(DOCS, 64)
    step = torch.compile(model, backend="aot_eager")
    ff = FusedFeatures(GradientFeatures(model, InfluenceConfig(projection_dim=64)), compile=True, backend="aot_eager")
    start, graphs = counters["stats"]["unique_graphs"], []
    for _ in range(3):
        step(**batch).loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        ff.features(model, batch)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
        model.zero_grad(set_to_none=True)
        graphs.append(counters["stats"]["unique_graphs"] - start)
    assert graphs == [2, 2, 2]  # one training graph, one scoring graph, compiled once each
