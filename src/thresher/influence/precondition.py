"""Preconditioners P in reward = g_ref^T P^-1 g_x, one per kind, all in the projected space.

Every factor lives in the projected space of its block, so memory does not depend on model width:
  A = E_tokens[(P_in a)(P_in a)^T]  (k_in, k_in),   G = E_tokens[(P_out d)(P_out d)^T]  (k_out, k_out).
With a projection, K-FAC therefore approximates (P_out (x) P_in) F (P_out (x) P_in)^T by
(P_out G_full P_out^T) (x) (P_in A_full P_in^T); without one it is the usual K-FAC.

Inverses act on a block's gradient V (k_out, k_in) in the eigenbases A = Q_A diag(e_A) Q_A^T,
G = Q_G diag(e_G) Q_G^T:   P^-1 V = Q_G [ (Q_G^T V Q_A) / S ] Q_A^T   with S (k_out, k_in):
  kfac, joint     S = e_G e_A^T + d                  i.e. (G (x) A + d I)^-1 exactly (kronfluence's K-FAC)
  kfac, factored  S = (e_G + d_G)(e_A + d_A)^T      i.e. (G + d_G I)^-1 V (A + d_A I)^-1
  ekfac           S = Lambda + d,  Lambda_ij = E_docs[(Q_G^T V_doc Q_A)_ij^2]  (George et al. 2018)
Damping d: "absolute" = cfg.damping; "relative" = cfg.damping * mean(S without damping) (the
kronfluence heuristic when damping = 0.1); for "factored", d_A and d_G are relative to each factor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from thresher.influence.config import InfluenceConfig
from thresher.utils.errors import ThresherError


@dataclass
class FactorStats:
    """Sums accumulated over the fit documents of one block (reduced across ranks before use)."""

    A: torch.Tensor  # (k_in, k_in) sum over tokens of a a^T
    G: torch.Tensor  # (k_out, k_out) sum over tokens of d d^T
    n_tokens: torch.Tensor  # () number of non-padding tokens
    docs: list = field(default_factory=list)  # per batch (B, k_out, k_in) document gradients (EK-FAC only)


class Preconditioner(ABC):
    needs_factors = True
    needs_doc_grads = False

    def __init__(self, cfg: InfluenceConfig):
        self.cfg = cfg
        self.state: dict[str, list[torch.Tensor]] = {}

    @abstractmethod
    def fit(self, names: list[str], stats: list[FactorStats], reduce) -> None:
        """Build the inverse from the factor sums; ``reduce`` all-reduces a tensor (identity off torchrun)."""

    @abstractmethod
    def apply(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """P^-1 on per-block (N, k_out, k_in) gradients."""

    def state_dict(self) -> dict:
        return {k: [t.cpu() for t in v] for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: list(v) for k, v in state.items()}


class Identity(Preconditioner):
    """TracIn-style plain dot product."""

    needs_factors = False

    def fit(self, names, stats, reduce) -> None:
        pass

    def apply(self, blocks):
        return blocks


class _Eigen(Preconditioner):
    """Shared eigenbasis machinery; subclasses give the inverse scale 1/S per block."""

    def fit(self, names, stats, reduce) -> None:
        qa, qg, inv = [], [], []
        for name, st in zip(names, stats):
            n = reduce(st.n_tokens.clone()).clamp(min=1)
            A, G = reduce(st.A.clone()) / n, reduce(st.G.clone()) / n
            _check_finite(name, "A", A), _check_finite(name, "G", G)
            e_a, q_a = torch.linalg.eigh(A)
            e_g, q_g = torch.linalg.eigh(G)
            s_inv = self._inverse_scale(name, e_a.clamp(min=0), e_g.clamp(min=0), q_a, q_g, st, reduce)
            _check_finite(name, "inverse eigenvalues", s_inv)
            qa.append(q_a), qg.append(q_g), inv.append(s_inv)
        self.state = {"Q_A": qa, "Q_G": qg, "inv": inv}

    @abstractmethod
    def _inverse_scale(self, name, e_a, e_g, q_a, q_g, st: FactorStats, reduce) -> torch.Tensor:
        """(k_out, k_in) elementwise 1/S in the eigenbasis."""

    def _damp(self, s: torch.Tensor) -> float:
        return self.cfg.damping * float(s.mean()) if self.cfg.damping_mode == "relative" else self.cfg.damping

    def apply(self, blocks):
        out = []
        for v, q_a, q_g, s_inv in zip(blocks, self.state["Q_A"], self.state["Q_G"], self.state["inv"]):
            q_a, q_g, s_inv = (t.to(device=v.device, dtype=v.dtype) for t in (q_a, q_g, s_inv))
            out.append(q_g @ ((q_g.T @ v @ q_a) * s_inv) @ q_a.T)
        return out


class KFAC(_Eigen):
    def _inverse_scale(self, name, e_a, e_g, q_a, q_g, st, reduce):
        if self.cfg.kfac_damping == "factored":
            return torch.outer(1.0 / (e_g + self._damp(e_g)), 1.0 / (e_a + self._damp(e_a)))
        s = torch.outer(e_g, e_a)
        return 1.0 / (s + self._damp(s))


class EKFAC(_Eigen):
    needs_doc_grads = True

    def _inverse_scale(self, name, e_a, e_g, q_a, q_g, st, reduce):
        lam = torch.zeros(len(e_g), len(e_a), dtype=q_a.dtype, device=q_a.device)
        n_docs = torch.zeros((), dtype=q_a.dtype, device=q_a.device)
        for v in st.docs:  # (B, k_out, k_in)
            lam += ((q_g.T @ v.to(q_a.dtype) @ q_a) ** 2).sum(0)
            n_docs += v.shape[0]
        lam = reduce(lam) / reduce(n_docs).clamp(min=1)
        _check_finite(name, "Lambda", lam)
        return 1.0 / (lam + self._damp(lam))


def _check_finite(block: str, what: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ThresherError(
            f"influence: factor {what} of block {block} is not finite (NaN/inf activations or gradients, "
            "or zero damping on a singular factor)"
        )


def build_preconditioner(cfg: InfluenceConfig) -> Preconditioner:
    return {"none": Identity, "kfac": KFAC, "ekfac": EKFAC}[cfg.preconditioner](cfg)
