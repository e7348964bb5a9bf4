"""``thresher regmix``: initial agent weights from RegMix-style proxy regressions (Liu et al. 2024).

The multi-agent paper (section 3, appendix A.2.3) initialises its domain and topic agents "following
RegMix": train many small proxy models on random mixtures over one label column's categories, fit a
regression from the mixture weights to the proxies' validation loss, and take the mixture the
regression predicts best. Here:

1. draw ``n_proxies`` mixtures from a Dirichlet centred on the pool's token share per category
   (RegMix's token-distribution prior), its concentration varied per draw;
2. train one ``static-mixture`` run of the base run config per mixture (a small model, few steps) under
   ``<out>/proxies/<i>``; resumable proxy by proxy, like ``thresher experiment``;
3. target: the mean final held-out reference loss over the tasks (or one named task);
4. fit LightGBM (or least squares) from weights to target; k-fold cross-validated Spearman is reported;
5. predict ``n_candidates`` fresh prior draws; the result is the mean of the ``top_k`` predicted best.

Outputs in ``out``: ``init_<column>.json`` (the ``selector.init_file`` format), ``regmix.json``
(settings, proxy rows, CV Spearman, weights), ``proxies.jsonl`` and ``results.md``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from thresher.config import RunConfig, run_config_from_dict
from thresher.evaluate.report import SUMMARY
from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, remove_stale_temps
from thresher.utils.log import print0
from thresher.utils.seeding import rng
from thresher.utils.tomlio import apply_overrides, from_dict, load_toml

INSTALL_HINT = "pip install 'thresher[regmix]'"


@dataclass
class RegMixConfig:
    out: str = "runs/regmix"  # proxies/<i>, init_<column>.json, regmix.json, results.md
    column: str = "domain"  # the agent label name (a key of data.label_columns) whose categories are mixed
    n_proxies: int = 64  # proxy runs, one mixture each (the paper: 512)
    model: str = "tiny"  # proxy model, train.model (the paper: TinyLlama-1M)
    steps: int = 300  # training steps per proxy (the paper: 1B tokens each)
    # Dirichlet prior: alpha = c x K x token share, c drawn log-uniformly from this range for every mixture
    # (small c: mixtures near a few categories; large c: near the token shares)
    concentration: list[float] = field(default_factory=lambda: [0.1, 5.0])  # [low, high] of c
    target: str = "mean"  # "mean" over the reference tasks of the final held-out loss, or one task's name
    regressor: str = "lightgbm"  # lightgbm | linear (least squares with an intercept)
    # what the fit reads as a proxy's mixture: "realised" (the requested weights with every category the pool
    # could not fill cut to what the proxy got, renormalised: what it trained on) or "requested"
    fit_weights: str = "realised"
    cv_folds: int = 5  # folds of the cross-validated Spearman (at most one per proxy)
    n_candidates: int = 100_000  # fresh prior mixtures whose loss the fit predicts
    top_k: int = 100  # the result is the mean of the top_k candidates with the lowest predicted loss
    seed: int = 0  # the mixtures, the candidates, the folds and LightGBM

    def validate(self) -> None:
        if self.n_proxies < 3:
            raise ThresherError(f"regmix.n_proxies = {self.n_proxies}: a fit needs at least 3 proxies")
        if self.steps < 1:
            raise ThresherError(f"regmix.steps = {self.steps}: expected at least 1")
        lo_hi = self.concentration
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ThresherError(f"regmix.concentration = {lo_hi}: expected [low, high] with 0 < low <= high")
        if self.fit_weights not in ("realised", "requested"):
            raise ThresherError(f"regmix.fit_weights = {self.fit_weights!r}; choose realised or requested")
        if self.regressor not in ("lightgbm", "linear"):
            raise ThresherError(f"regmix.regressor = {self.regressor!r}; choose lightgbm or linear")
        if self.cv_folds < 2 or self.n_candidates < 1 or not 1 <= self.top_k <= self.n_candidates:
            raise ThresherError("regmix: cv_folds must be >= 2 and 1 <= top_k <= n_candidates")


def load_regmix(path: str | Path | None, overrides: list[str] | None = None) -> tuple[RegMixConfig, RunConfig]:
    """(RegMix settings, base run config) from a run config TOML with an optional [regmix] table + overrides."""
    data = apply_overrides(load_toml(path) if path else {}, list(overrides or []))
    cfg = from_dict(RegMixConfig, data.pop("regmix", {}), "regmix")
    cfg.validate()
    base = run_config_from_dict(data)
    if cfg.column not in base.data.label_columns:
        raise ThresherError(f"column {cfg.column!r} is not an agent label; data.label_columns has "
                            f"{', '.join(base.data.label_columns)}")
    if cfg.target != "mean" and cfg.target not in base.data.reference:
        raise ThresherError(f"regmix.target = {cfg.target!r} is neither 'mean' nor a reference task "
                            f"({', '.join(sorted(base.data.reference))})")
    return cfg, base


# --- the prior -----------------------------------------------------------------------------------------------
def token_shares(base: RunConfig, column: str) -> tuple[list[str], np.ndarray]:
    """(categories, share of the pool's tokens per category) of the agent label ``column``."""
    from thresher.corpus.store import TokenStore
    from thresher.labels.table import LabelTable

    if column not in base.data.label_columns:
        raise ThresherError(f"column {column!r} is not an agent label; data.label_columns has "
                            f"{', '.join(base.data.label_columns)}")
    table = LabelTable.open(base.data.labels)
    name = base.data.label_columns[column]
    if name not in table.columns or table.kind(name) != "category":
        raise ThresherError(f"label table {base.data.labels} has no categorical column {name!r} (agent {column!r})")
    codes = np.asarray(table.codes(name))
    lengths = np.asarray(TokenStore.open(base.data.store).lengths, dtype=np.float64)
    cats = list(table.categories(name))
    tokens = np.bincount(codes[codes >= 0], weights=lengths[codes >= 0], minlength=len(cats))
    if (tokens > 0).sum() < 2:
        raise ThresherError(f"column {column!r} has {(tokens > 0).sum()} non-empty categories; mixing needs 2")
    return cats, tokens / tokens.sum()


def sample_mixtures(shares: np.ndarray, n: int, concentration: list[float], seed: int, stream: str) -> np.ndarray:
    """(n, K) Dirichlet(c x K x shares) draws, c log-uniform in ``concentration`` per row; zero share -> 0.

    Gamma draws in log space (Gamma(a) = Gamma(a + 1) x U^(1/a)) so small alphas never underflow to an
    all-zero row."""
    g = rng(seed, "regmix", stream)
    lo, hi = np.log(concentration[0]), np.log(concentration[1])
    c = np.exp(g.uniform(lo, hi, size=(n, 1)))
    alpha = c * len(shares) * np.asarray(shares, dtype=np.float64)[None, :]
    a = np.where(alpha > 0, alpha, 1.0)
    logx = np.log(g.standard_gamma(a + 1.0)) + np.log1p(-g.random(alpha.shape)) / a
    logx = np.where(alpha > 0, logx, -np.inf)
    w = np.exp(logx - logx.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


# --- the fit and the choice ----------------------------------------------------------------------------------
class LinearFit:
    """Least squares with an intercept. Mixture rows sum to 1, so the design is rank-deficient; lstsq's
    minimum-norm solution still gives the unique least-squares predictions."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LinearFit":
        self.coef = np.linalg.lstsq(_with_intercept(X), y, rcond=None)[0]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _with_intercept(X) @ self.coef


def _with_intercept(X: np.ndarray) -> np.ndarray:
    return np.hstack([np.ones((len(X), 1)), X])


def require_lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise ThresherError(f"regmix.regressor = 'lightgbm' needs LightGBM: {INSTALL_HINT} "
                            f"(or --set regmix.regressor=linear)") from None
    return lightgbm


def make_regressor(kind: str, seed: int, n_rows: int):
    """An unfitted regressor: LightGBM with small trees for tens to hundreds of rows, or LinearFit."""
    if kind == "linear":
        return LinearFit()
    lgb = require_lightgbm()
    return lgb.LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=7, max_depth=3,
                             min_child_samples=max(1, min(5, n_rows // 8)), min_data_in_bin=1,
                             subsample=0.8, subsample_freq=1, colsample_bytree=1.0, random_state=seed,
                             deterministic=True, force_row_wise=True, n_jobs=1, verbose=-1)


def cv_spearman(X: np.ndarray, y: np.ndarray, kind: str, folds: int, seed: int) -> float | None:
    """Spearman between out-of-fold predictions and ``y`` (k-fold, seeded); None if undefined."""
    from scipy.stats import spearmanr

    order = rng(seed, "regmix", "folds").permutation(len(y))
    pred = np.empty(len(y))
    for test in np.array_split(order, min(folds, len(y))):
        train = np.setdiff1d(order, test)
        pred[test] = make_regressor(kind, seed, len(train)).fit(X[train], y[train]).predict(X[test])
    if np.ptp(pred) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(pred, y).statistic)


def choose(X: np.ndarray, y: np.ndarray, shares: np.ndarray, cfg: RegMixConfig) -> tuple[np.ndarray, dict]:
    """The mean of the ``top_k`` prior candidates with the lowest predicted loss (renormalised) + fit info."""
    model = make_regressor(cfg.regressor, cfg.seed, len(y)).fit(X, y)
    cands = sample_mixtures(shares, cfg.n_candidates, cfg.concentration, cfg.seed, "candidates")
    pred = model.predict(cands)
    best = np.argsort(pred, kind="stable")[:cfg.top_k]
    w = cands[best].mean(axis=0)
    info = {"cv_spearman": cv_spearman(X, y, cfg.regressor, cfg.cv_folds, cfg.seed),
            "cv_folds": min(cfg.cv_folds, len(y)), "predicted_loss_top_k": float(pred[best].mean()),
            "predicted_loss_chosen": float(model.predict(w[None])[0]), "best_proxy_loss": float(y.min())}
    return w / w.sum(), info


# --- the proxies ---------------------------------------------------------------------------------------------
def proxy_config(base: RunConfig, cfg: RegMixConfig, i: int, weights: dict[str, float]) -> RunConfig:
    """The base run under a static mixture over ``cfg.column`` with the proxy's model and steps."""
    rc = copy.deepcopy(base)
    rc.out = str(Path(cfg.out) / "proxies" / str(i))
    rc.selector.policy, rc.selector.mixture_column = "static-mixture", cfg.column
    rc.selector.mixture_weights = dict(weights)
    rc.train.model, rc.train.steps = cfg.model, cfg.steps
    rc.train.model_overrides = {}  # the base's recipe changes describe its own model, not the proxy
    from thresher.train.models import resolve_model

    # the base's sequence length is its own model's (pool.toml: 1024); a proxy trains within its context
    # (tiny: 256), the same tokens a step in more micro-batches
    rc.train.seq_len = min(rc.train.seq_len, resolve_model(cfg.model).max_seq_len)
    rc.train.warmup_steps = min(rc.train.warmup_steps, max(cfg.steps // 10, 1))
    rc.train.export = False  # only the reference losses are needed
    return rc


def target_loss(ref_losses: dict[str, float], target: str) -> float:
    if target == "mean":
        return float(np.mean(list(ref_losses.values())))
    return float(ref_losses[target])


def train_proxies(cfg: RegMixConfig, base: RunConfig, cats: list[str], mixtures: np.ndarray) -> list[dict]:
    """Train every proxy that has no summary yet (an interrupted one resumes from its checkpoint); after
    each, ``proxies.jsonl`` is rewritten with every finished proxy's (weights, final reference losses)."""
    from thresher.experiments.experiment import check_same_settings, run_or_keep

    configs = [proxy_config(base, cfg, i, dict(zip(cats, w.tolist()))) for i, w in enumerate(mixtures)]
    for rc in configs:  # an existing proxy is reused only under the same settings
        check_same_settings(rc, Path(rc.out), "choose another --out")
    rows = []
    for i, rc in enumerate(configs):
        run_dir = run_or_keep(rc, f"[regmix {i + 1}/{len(configs)}]", f"proxy {i}")
        ref = read_json(run_dir / SUMMARY)["ref_losses"]
        rows.append({"proxy": i, "weights": rc.selector.mixture_weights,
                     "realised": realised_mixture(run_dir, rc.selector.mixture_weights), "ref_losses": ref,
                     "loss": target_loss(ref, cfg.target)})
        atomic_write_jsonl(Path(cfg.out) / "proxies.jsonl", rows)
    return rows


def realised_mixture(run_dir: Path, requested: dict[str, float]) -> dict[str, float]:
    """The mixture a proxy trained on: the requested weights, every category its pool could not fill cut by
    the fraction it got (the static mixture's logged shortfall, in its budget's unit), renormalised; under
    ``selector.mixture_shortfall = "redistribute"`` the shares it logged as ``targets`` (the others got more)."""
    log = Path(run_dir) / "selector_log.jsonl"
    try:
        with log.open() as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        raise ThresherError(f"proxy {run_dir} has no readable selector_log.jsonl; delete that proxy folder to "
                            "retrain it") from None
    short = first.get("shortfall", {})
    if not short:  # filled: exactly the requested weights
        return dict(requested)
    targets = first.get("targets")  # selector.mixture_shortfall = "redistribute": what each category was given
    if targets and sum(targets.values()) > 0:
        total = sum(targets.get(c, 0) for c in requested)
        return {c: targets.get(c, 0) / total for c in requested}
    got = {c: w * (short[c]["selected"] / short[c]["target"] if c in short and short[c]["target"] else 1.0)
           for c, w in requested.items()}
    total = sum(got.values())
    return {c: v / total for c, v in got.items()} if total > 0 else dict(requested)


def few_proxies(n_proxies: int, n_categories: int) -> str | None:
    """A warning when the fit has fewer than two proxies per parameter (a weight per category and an intercept):
    the regression and its CV Spearman over so few points are noise (RegMix fits 512 proxies to 17 domains)."""
    need = 2 * (n_categories + 1)
    if n_proxies >= need:
        return None
    return (f"{n_proxies} proxies for {n_categories} categories: fewer than 2 per fitted parameter "
            f"(>= {need} advised); the fit, the chosen weights and the CV Spearman are noise at this size")


def run_regmix(cfg: RegMixConfig, base: RunConfig) -> dict:
    """Proxies -> fit -> choice; writes the outputs and returns ``regmix.json``'s content."""
    cfg.validate()
    if cfg.regressor == "lightgbm":
        require_lightgbm()  # before hours of proxies
    remove_stale_temps(cfg.out)  # proxies.jsonl, results.md, ... of a killed run
    cats, shares = token_shares(base, cfg.column)
    warning = few_proxies(cfg.n_proxies, len(cats))
    if warning:
        print0(f"warning: regmix: {warning}")  # before the proxies train
    # one stream per proxy: raising n_proxies later keeps the mixtures (and proxies) already drawn
    mixtures = np.vstack([sample_mixtures(shares, 1, cfg.concentration, cfg.seed, f"proxy-{i}")
                          for i in range(cfg.n_proxies)])
    rows = train_proxies(cfg, base, cats, mixtures)
    key = "realised" if cfg.fit_weights == "realised" else "weights"
    X = np.array([[r[key][c] for c in cats] for r in rows])
    y = np.array([r["loss"] for r in rows])
    w, info = choose(X, y, shares, cfg)
    weights = dict(zip(cats, w.tolist()))
    out = Path(cfg.out)
    atomic_write_json(out / f"init_{cfg.column}.json", {cfg.column: weights})
    result = {"settings": asdict(cfg), "categories": cats, "token_shares": dict(zip(cats, shares.tolist())),
              "proxies": rows, **info, "weights": weights, **({"warning": warning} if warning else {})}
    atomic_write_json(out / "regmix.json", result)
    atomic_write_text(out / "results.md", _markdown(result))
    print0(f"regmix: CV Spearman {_fmt(info['cv_spearman'])}; weights -> {out / f'init_{cfg.column}.json'}")
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# RegMix weights for `{s['column']}`", "",
             f"{len(r['proxies'])} proxies ({s['model']}, {s['steps']} steps), target: {s['target']} reference "
             f"loss, {s['regressor']} fit, {r['cv_folds']}-fold CV Spearman {_fmt(r['cv_spearman'])}; "
             f"mean of the top {s['top_k']} of {s['n_candidates']} prior candidates; fit on the {s['fit_weights']} "
             f"mixtures ({sum(p['realised'] != p['weights'] for p in r['proxies'])} proxies got less of a category "
             "than requested).", "",
             f"Best proxy loss {r['best_proxy_loss']:.4f}; predicted loss of the chosen mixture "
             f"{r['predicted_loss_chosen']:.4f}.", "",
             *([f"**Warning:** {r['warning']}.", ""] if r.get("warning") else []),
             "| category | token share | RegMix weight |", "|---|---:|---:|"]
    lines += [f"| {c} | {r['token_shares'][c]:.4f} | {r['weights'][c]:.4f} |" for c in r["categories"]]
    lines += ["", f"Use: `--set selector.init_file={Path(s['out']) / ('init_' + s['column'] + '.json')}`", ""]
    return "\n".join(lines)
