"""Preconditioners P in reward = g_ref^T P^-1 g_x, one per kind, on per-block gradient matrices.

A preconditioner does not know which space its matrices live in; the scorer decides
(``InfluenceConfig.precondition_space``):
  full       A = E_tokens[a a^T] (d_in, d_in), G = E_tokens[d d^T] (d_out, d_out): the usual (E)K-FAC,
             applied to the reference gradient in full space, which is projected afterwards.
  projected  A = E_tokens[(P_in a)(P_in a)^T] (k_in, k_in), G likewise (k_out, k_out): memory independent
             of the model width, but (P_out G P_out^T)^-1 is not P_out G^-1 P_out^T, so this is the
             preconditioner of the projected problem, not a projection of the true one.

Inverses act on a block's gradient V (r, c) in the eigenbases A = Q_A diag(e_A) Q_A^T,
G = Q_G diag(e_G) Q_G^T:   P^-1 V = Q_G [ (Q_G^T V Q_A) / S ] Q_A^T   with S (k_out, k_in):
  kfac, joint     S = e_G e_A^T + d                  i.e. (G (x) A + d I)^-1 exactly (kronfluence's K-FAC)
  kfac, factored  S = (e_G + d_G)(e_A + d_A)^T      i.e. (G + d_G I)^-1 V (A + d_A I)^-1
  ekfac           S = Lambda + d,  Lambda_ij = E_docs[(Q_G^T V_doc Q_A)_ij^2]  (George et al. 2018)
Damping d: "absolute" = cfg.damping; "relative" = cfg.damping * mean(S without damping) (the
kronfluence heuristic when damping = 0.1); for "factored", d_A and d_G are relative to each factor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from thresher.influence.config import InfluenceConfig
from thresher.utils.errors import ThresherError


@dataclass
class FactorStats:
    """Sums accumulated over the fit documents of one block (reduced across ranks before use)."""

    A: torch.Tensor  # (k_in, k_in) sum over tokens of a a^T
    G: torch.Tensor  # (k_out, k_out) sum over tokens of d d^T
    n_tokens: torch.Tensor  # () number of non-padding tokens


class Preconditioner(ABC):
    needs_factors = True
    needs_lambda = False  # EK-FAC: a second pass over the fit documents (see EKFAC.accumulate)

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
        qa, qg, inv, ea, eg = [], [], [], [], []
        for name, st in zip(names, stats):
            n = reduce(st.n_tokens.clone())
            if float(n) == 0:
                raise ThresherError("influence: the fit documents hold no token: the factors cannot be estimated")
            A, G = reduce(st.A.clone()) / n, reduce(st.G.clone()) / n
            _check_finite(name, "A", A), _check_finite(name, "G", G)
            if not G.any():
                raise ThresherError(f"influence: factor G of block {name} is zero: the fit documents give no loss "
                                    "gradient (each needs >= 2 tokens)")
            e_a, q_a = torch.linalg.eigh(A)
            e_g, q_g = torch.linalg.eigh(G)
            e_a, e_g = self._zero_noise(e_a.clamp(min=0)), self._zero_noise(e_g.clamp(min=0))
            s_inv = self._inverse_scale(e_a, e_g)
            if s_inv is not None:
                _check_finite(name, "inverse eigenvalues", s_inv)
            qa.append(q_a), qg.append(q_g), inv.append(s_inv), ea.append(e_a), eg.append(e_g)
        self.state = {"Q_A": qa, "Q_G": qg, "inv": inv, "e_A": ea, "e_G": eg}

    @abstractmethod
    def _inverse_scale(self, e_a, e_g) -> torch.Tensor | None:
        """(r, c) elementwise 1/S in the eigenbasis (None: set later from Lambda)."""

    def _zero_noise(self, s: torch.Tensor) -> torch.Tensor:
        """Under zero damping, entries of ``s`` (eigenvalues, or EK-FAC's Lambda) at or below the rounding noise of
        its largest (max x size x eps, numpy's matrix_rank tolerance) are set to exactly 0, so a singular factor gives
        the not-finite error whatever the rounding: the inverse of noise would be a finite but meaningless 1e30.
        With damping > 0 nothing changes (the damped inverse of noise is bounded and the exactness tests hold)."""
        if self.cfg.damping != 0 or not s.numel():
            return s
        tol = float(s.max()) * max(s.shape) * torch.finfo(s.dtype).eps
        return s.masked_fill(s <= tol, 0.0)

    def _damp(self, s: torch.Tensor) -> float:
        return self.cfg.damping * float(s.mean()) if self.cfg.damping_mode == "relative" else self.cfg.damping

    def apply(self, blocks):
        out = []
        for v, q_a, q_g, s_inv in zip(blocks, self.state["Q_A"], self.state["Q_G"], self.state["inv"]):
            q_a, q_g, s_inv = (t.to(device=v.device, dtype=v.dtype) for t in (q_a, q_g, s_inv))
            out.append(q_g @ ((q_g.T @ v @ q_a) * s_inv) @ q_a.T)
        return out


    def whiteners(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block (W_A, W_G) = (A + d_A I)^-1/2, (G + d_G I)^-1/2, float64 on CPU.

        Documents are projected as P_out W_G V W_A P_in^T and the reference as P_out R P_in^T with
        R = Q_G [(Q_G^T g Q_A) S^-1 / (w_G w_A^T)] Q_A^T, so their dot product is exactly g^T P^-1 V
        without projection, and with one the JL error is that of two whitened vectors (balanced norms)
        rather than of P^-1 g (huge in low-curvature directions) against V. d = sqrt(damping) x mean
        eigenvalue of the factor: any d > 0 keeps the result exact, it only changes the variance.
        """
        return [(self._whiten(q_a, e_a), self._whiten(q_g, e_g))
                for q_a, q_g, e_a, e_g in zip(self.state["Q_A"], self.state["Q_G"], self.state["e_A"], self.state["e_G"])]

    def _white_scale(self, e: torch.Tensor) -> torch.Tensor:
        d = max(self.cfg.damping, 1e-6) ** 0.5 * float(e.mean()) + 1e-30
        return (e + d).rsqrt()

    def _whiten(self, q: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return ((q * self._white_scale(e)) @ q.T).cpu().double()

    def apply_for_whitened(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The reference-side matrix R above, per block (N, r, c)."""
        out = []
        for v, q_a, q_g, s_inv, e_a, e_g in zip(blocks, *(self.state[k] for k in ("Q_A", "Q_G", "inv", "e_A", "e_G"))):
            q_a, q_g, s_inv = (t.to(device=v.device, dtype=v.dtype) for t in (q_a, q_g, s_inv))
            w = torch.outer(self._white_scale(e_g), self._white_scale(e_a)).to(device=v.device, dtype=v.dtype)
            out.append(q_g @ ((q_g.T @ v @ q_a) * (s_inv / w)) @ q_a.T)
        return out


class KFAC(_Eigen):
    def _inverse_scale(self, e_a, e_g):
        if self.cfg.kfac_damping == "factored":
            return torch.outer(1.0 / (e_g + self._damp(e_g)), 1.0 / (e_a + self._damp(e_a)))
        s = torch.outer(e_g, e_a)
        return 1.0 / (s + self._damp(s))


class EKFAC(_Eigen):
    """Lambda_ij = E_docs[(Q_G^T V_doc Q_A)_ij^2], summed over a second pass of the fit documents:
    after ``fit``, call ``accumulate`` on each batch's rotated per-document gradients, then ``fit_lambda``."""

    needs_lambda = True

    def _inverse_scale(self, e_a, e_g):
        return None

    def _bases(self, bi: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block bi's (Q_A, Q_G) on ``like``'s device and dtype."""
        return tuple(self.state[k][bi].to(device=like.device, dtype=like.dtype) for k in ("Q_A", "Q_G"))

    def rotate_sequences(self, bi: int, a: torch.Tensor, delta: torch.Tensor):
        """(B, T, c), (B, T, r) -> the same in the eigenbases (a Q_A, delta Q_G)."""
        q_a, q_g = self._bases(bi, a)
        return a @ q_a, delta @ q_g

    def rotate_grads(self, bi: int, v: torch.Tensor) -> torch.Tensor:
        """(N, r, c) per-document gradients -> Q_G^T V Q_A."""
        q_a, q_g = self._bases(bi, v)
        return q_g.T @ v @ q_a

    def fit_lambda(self, names, lam_sums: list[torch.Tensor], n_docs: torch.Tensor, reduce) -> None:
        n = reduce(n_docs.clone()).clamp(min=1)
        inv = []
        for name, lam in zip(names, lam_sums):
            lam = reduce(lam.clone()) / n
            _check_finite(name, "Lambda", lam)
            lam = self._zero_noise(lam)
            inv.append(1.0 / (lam + self._damp(lam)))
            _check_finite(name, "inverse eigenvalues", inv[-1])  # a zero Lambda entry under zero damping
        self.state["inv"] = inv


def _check_finite(block: str, what: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ThresherError(
            f"influence: factor {what} of block {block} is not finite (NaN/inf activations or gradients, "
            "or zero damping on a singular factor)"
        )


def build_preconditioner(cfg: InfluenceConfig) -> Preconditioner:
    return {"none": Identity, "kfac": KFAC, "ekfac": EKFAC}[cfg.preconditioner](cfg)
