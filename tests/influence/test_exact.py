"""The engine against brute force in float64: per-example autograd loops and dense Kronecker solves."""

import pytest
import torch

import influence_ref as R
from thresher.influence import InfluenceConfig, InfluenceScorer

DOCS = R.random_docs(6, seed=0) + R.pattern_docs(3)
FIT = R.random_docs(8, seed=3) + R.pattern_docs(4, seed=4)


def _scorer(model, grouping, pc, **kw):
    cfg = InfluenceConfig(projection="none", grouping=grouping, preconditioner=pc, batch_size=4, **kw)
    s = InfluenceScorer(model, R.reference_tasks(), cfg, fit_docs=FIT)
    s.refresh(model, step=0)
    return s


def _rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def model():
    return R.tiny_llama()


@pytest.mark.parametrize("grouping", ["qkv", "independent", "mlp_only"])
def test_plain_dot_product_matches_per_example_autograd(model, grouping):
    s = _scorer(model, grouping, "none", task_weights={"lambada": 3.0, "squad": 1.0})
    xs = R.doc_grads(model, s.feats.blocks, DOCS)
    per_task = {}
    for name, task in R.reference_tasks().items():
        g = R.ref_grad(model, s.feats.blocks, task)
        # the engine's stored reference gradient is the exact mean gradient
        ours = s.feats.split(s.ref_raw[[list(s.reference).index(name)]])
        assert _rel(torch.cat([o.flatten() for o in ours]), torch.cat([r.flatten() for r in g])) < 1e-6
        per_task[name] = torch.tensor([sum(float((a * b).sum()) for a, b in zip(g, x)) for x in xs])
    got = s.per_task_score_docs(DOCS, batch_size=4)
    for name in per_task:
        assert _rel(got[name], per_task[name]) < 1e-6
    combined = (3 * per_task["lambada"] + per_task["squad"]) / 4
    assert _rel(s.score_docs(DOCS, batch_size=3), combined) < 1e-6
    # features equal the per-example gradients too
    f = s.features(__import__("thresher.corpus.batching", fromlist=["pad_docs"]).pad_docs(DOCS, 64))
    assert _rel(f, torch.stack([torch.cat([b.flatten() for b in x]) for x in xs])) < 1e-6


def _dense_H(model, s, kind, damping, lambda_model=None, lambda_blocks=None):
    """Per block the dense (E)K-FAC matrix from ``model``'s token factors; EK-FAC's Lambda from the per-document
    gradients of ``lambda_model`` (its blocks ``lambda_blocks``; default: the same model) in those eigenbases."""
    blocks = s.feats.blocks
    factors = R.token_factors(model, blocks, FIT)
    doc_grads = R.doc_grads(lambda_model or model, lambda_blocks or blocks, FIT) if kind == "ekfac" else None
    H = []
    for (A, G), xs in zip(factors, zip(*doc_grads) if kind == "ekfac" else [None] * len(factors)):
        if kind == "joint":
            H.append(torch.kron(G, A) + damping * torch.eye(A.shape[0] * G.shape[0], dtype=A.dtype))
        elif kind == "factored":
            H.append(torch.kron(G + damping * torch.eye(len(G), dtype=G.dtype), A + damping * torch.eye(len(A), dtype=A.dtype)))
        else:
            _, qa = torch.linalg.eigh(A)
            _, qg = torch.linalg.eigh(G)
            lam = torch.stack([(qg.T @ x @ qa) ** 2 for x in xs]).mean(0)
            Q = torch.kron(qg, qa)
            H.append(Q @ torch.diag(lam.flatten() + damping) @ Q.T)
    return H


@pytest.mark.parametrize("grouping", ["qkv", "independent"])
@pytest.mark.parametrize("kind", ["joint", "factored", "ekfac"])
def test_kfac_ekfac_match_dense_kronecker(model, grouping, kind):
    damping = 1e-3
    pc = "ekfac" if kind == "ekfac" else "kfac"
    kf = "factored" if kind == "factored" else "joint"
    s = _scorer(model, grouping, pc, damping=damping, damping_mode="absolute", kfac_damping=kf, doc_loss="mean")
    H = _dense_H(model, s, kind, damping)
    xs = R.doc_grads(model, s.feats.blocks, DOCS)
    want = {}
    for name, task in R.reference_tasks().items():
        g = R.ref_grad(model, s.feats.blocks, task)
        want[name] = R.dense_rewards(g, xs, H)
    got = s.per_task_score_docs(DOCS, batch_size=4)
    for name in want:
        assert _rel(got[name], want[name]) < 1e-6, name


def test_relative_damping_is_mean_eigenvalue_scaled(model):
    """Relative damping d * mean(e_G e_A^T) equals the absolute damping d * tr(G) tr(A) / (k_out k_in)."""
    s_rel = _scorer(model, "qkv", "kfac", damping=0.3, damping_mode="relative")
    factors = R.token_factors(model, s_rel.feats.blocks, FIT)
    # one block at a time: absolute damping chosen to equal the relative one of that block
    for bi, (A, G) in enumerate(factors):
        d_abs = 0.3 * float(torch.trace(A) * torch.trace(G)) / (len(A) * len(G))
        inv = 1.0 / (torch.outer(torch.linalg.eigvalsh(G).clamp(min=0), torch.linalg.eigvalsh(A).clamp(min=0)) + d_abs)
        assert _rel(s_rel.pre.state["inv"][bi].flatten().sort().values, inv.flatten().sort().values) < 1e-6


@pytest.mark.parametrize("kind", ["ekfac", "factored", "joint"])
def test_relative_damping_matches_dense_solves(model, kind):
    """damping_mode="relative" (the default) against dense matrices built in each block's eigenbasis:
    EK-FAC adds d x mean(Lambda); factored K-FAC damps each factor by d x its mean eigenvalue; joint K-FAC
    adds d x mean(e_G e_A^T)."""
    d = 0.1
    pc, kf = ("ekfac", "joint") if kind == "ekfac" else ("kfac", kind)
    s = _scorer(model, "qkv", pc, damping=d, damping_mode="relative", kfac_damping=kf)
    blocks = s.feats.blocks
    dg = R.doc_grads(model, blocks, FIT) if kind == "ekfac" else None
    H = []
    for bi, (A, G) in enumerate(R.token_factors(model, blocks, FIT)):
        ea, qa = torch.linalg.eigh(A)
        eg, qg = torch.linalg.eigh(G)
        ea, eg = ea.clamp(min=0), eg.clamp(min=0)
        if kind == "ekfac":
            lam = torch.stack([(qg.T @ x[bi] @ qa) ** 2 for x in dg]).mean(0)
            S = lam + d * lam.mean()
        elif kind == "factored":
            S = torch.outer(eg + d * eg.mean(), ea + d * ea.mean())
        else:
            S = torch.outer(eg, ea)
            S = S + d * S.mean()
        Q = torch.kron(qg, qa)
        H.append(Q @ torch.diag(S.flatten()) @ Q.T)
    xs = R.doc_grads(model, blocks, DOCS)
    got = s.per_task_score_docs(DOCS, batch_size=4)
    for name, task in R.reference_tasks().items():
        assert _rel(got[name], R.dense_rewards(R.ref_grad(model, blocks, task), xs, H)) < 1e-6, name


def test_qkv_grouping_is_one_kronecker_block_over_the_concatenated_outputs(model):
    """Quad's unified QKV block: under grouping="qkv" q, k, v (and gate, up) are one block with one input
    factor and one output factor over their concatenated output gradients; "independent" keeps every
    Linear alone; "mlp_only" tracks the MLP only."""
    from thresher.influence.modules import build_blocks

    layers = model.config.num_hidden_layers
    h, inter = model.config.hidden_size, model.config.intermediate_size
    qkv = {b.name.split(".layers.")[1]: (b.module_names, b.d_in, b.d_out) for b in build_blocks(model, InfluenceConfig())}
    assert len(qkv) == 4 * layers
    attn = qkv["0.self_attn.q_k_v"]
    assert [n.rsplit(".", 1)[1] for n in attn[0]] == ["q_proj", "k_proj", "v_proj"] and attn[1:] == (h, 3 * h)
    assert qkv["0.mlp.gate_up"][1:] == (h, 2 * inter) and qkv["0.self_attn.o_proj"][1:] == (h, h)
    indep = build_blocks(model, InfluenceConfig(grouping="independent"))
    assert len(indep) == 7 * layers and all(len(b.modules) == 1 for b in indep)
    mlp = build_blocks(model, InfluenceConfig(grouping="mlp_only"))
    assert all(".mlp." in n for b in mlp for n in b.module_names)
    s_qkv = _scorer(model, "qkv", "kfac", damping=1e-3, damping_mode="absolute", kfac_damping="joint")
    G = R.token_factors(model, s_qkv.feats.blocks, FIT)[0][1]  # layer 0's q_k_v output factor
    corr = G / torch.outer(G.diagonal().sqrt(), G.diagonal().sqrt())
    assert G.shape == (3 * h, 3 * h) and float(corr[:h, h:].abs().max()) > 0.1  # q correlates with k, v
    # the engine's own output factor is that one matrix, cross-covariances included (the dense tests above
    # then check the rewards on these blocks)
    qg, eg = s_qkv.pre.state["Q_G"][0], s_qkv.pre.state["e_G"][0]
    assert _rel(qg @ torch.diag(eg) @ qg.T, G) < 1e-6


def test_quads_own_blocks_are_one_setting_away(model):
    """Quad's layer set as docs/influence.md names it: Eq. 9's QKV block with Eq. 4's MLP Linears each alone
    (groups = [q, k, v]), o_proj left out by `modules`; its MLP ablation with Eq. 4's independent Linears
    (grouping = "mlp_only", groups = [])."""
    from thresher.influence.modules import build_blocks

    layers = model.config.num_hidden_layers
    quad = InfluenceConfig(groups=[["q_proj", "k_proj", "v_proj"]],
                           modules=[r"layers\.\d+\.self_attn\.(q|k|v)_proj$",
                                    r"layers\.\d+\.mlp\.(gate|up|down)_proj$"])
    names = [b.name.split(".layers.")[1] for b in build_blocks(model, quad)]
    assert names[:4] == ["0.self_attn.q_k_v", "0.mlp.gate_proj", "0.mlp.up_proj", "0.mlp.down_proj"]
    assert len(names) == 4 * layers
    mlp = build_blocks(model, InfluenceConfig(grouping="mlp_only", groups=[]))
    assert len(mlp) == 3 * layers and all(len(b.modules) == 1 and ".mlp." in b.name for b in mlp)
