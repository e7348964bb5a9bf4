"""Settings of a selection policy (one TOML table; every field has a default)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from thresher.utils.errors import ThresherError


AUTO_SAVE_MAX_DOCS = 50_000_000  # save_selections = "auto" saves D_k for pools up to this size
OUTPUT_ONLY = ("save_selections",)  # what a run writes, not what it selects: left out of the resume check
# settings added after checkpoints were written without them, with the value that selects as those runs did:
# a saved state that lacks one is checked as if it held that value
ADDED_SETTINGS = {"theta_eta": "console", "ucb_count": "docs", "mixture_shortfall": "keep"}


@dataclass
class SelectorConfig:
    policy: str = "multi-agent"  # see thresher.agents.policies.POLICIES
    agents: list = field(default_factory=list)  # label columns used as agents; [] = the policy's default
    seed: int = 0  # selection's random streams; follows the run's seed unless set
    # Algorithm 1
    update_every: int = 1000  # U: steps between agent updates and re-selection
    eta_agent: float = 0.1  # eta_A of Eq. 5 (all agents) ...
    eta_agents: dict = field(default_factory=dict)  # ... or per agent {column: eta}
    eta_console: float = 0.1  # eta of Eq. 9 when theta_eta = "console" (one value for every agent)
    # Eq. 9's learning rate: "console" (eta_console for every agent) | "agent" (each agent's eta_A of Eq. 5,
    # eta_agents / eta_agent, as Eq. 9 and Algorithm 1 line 11 write it: theta_A += eta_A (R_A - Rbar))
    theta_eta: str = "console"
    theta_init: float = 1.0  # initial collaborative weight of every agent
    samples_per_category: int = 64  # n docs sampled per category per update (Algorithm 1 line 6)
    normalization: str = "rank"  # raw (the paper) | zscore | rank: rewards within one agent's sample
    # beyond the paper: score the union of all categorical agents' samples once and let every agent
    # learn from all of it (inverse-inclusion weighted Eq. 4); same influence cost, more samples each
    share_samples: bool = False
    missing: str = "neutral"  # a doc without a label: neutral (mean weight) | exclude (never selected)
    # selection of D_k
    selection: str = "top-k"  # top-k (the paper) | gumbel (Gumbel-top-k, MATES)
    temperature: float = 1.0  # tau of Gumbel-top-k on the scores S
    budget_docs: Optional[int] = None  # overrides the context's budget when set
    budget_tokens: Optional[int] = None  # (set one of the two budgets)
    reuse_penalty: float = 0.0  # subtracted from S of docs already trained on (0 = off)
    initial: str = "random"  # D_k before the first update: random (Algorithm 1 line 2) | scores (by initial weights)
    # initial agent weights: {column: "uniform" | preset name | {category: weight}}; file: same JSON
    init: dict = field(default_factory=dict)
    # JSON {column: spec}, e.g. RegMix weights (thresher regmix); several comma-separated (one per column, e.g.
    # init_domain.json,init_topic.json); init wins per key
    init_file: Optional[str] = None
    # static-mixture: a preset name (Table 4), or "init": the initial weights of mixture_column (selector.init,
    # else init_file, e.g. a RegMix fit) ...
    mixture: str = "slimpajama"
    mixture_weights: dict = field(default_factory=dict)  # ... or {domain: weight} (wins over mixture)
    mixture_column: str = "domain"  # the label column the mixture weights are over
    # a category with fewer documents (tokens) than its share: "keep" gives what it has and the selection stays
    # short of the budget; "redistribute" hands its unmet share to the other categories in proportion to their
    # weights (water-filling: the budget is met unless the whole pool is smaller)
    mixture_shortfall: str = "keep"
    # Quad's cluster bandit
    bandit_column: str = "cluster"
    alpha: float = 0.002  # exploration weight of the UCB cluster score (paper scale)
    sample_proportion: float = 0.05  # fraction of a chosen cluster sampled per round
    max_samples_per_cluster: int = 1024  # cap per cluster per round
    clusters_per_round: int = 16  # top clusters by CS sampled each round
    threshold: float = 0.0025  # keep a sampled doc if its reward > threshold (paper scale)
    threshold_mode: str = "absolute"  # absolute | quantile (threshold_quantile of the round's rewards)
    threshold_quantile: float = 0.5  # threshold_mode = "quantile": keep docs above this quantile of a round
    unvisited: str = "inf"  # CS of a never-sampled cluster: inf (UCB1 reading) | initial-visit
    # what n_i and N of Eq. 1 count: "docs" (n_i = docs sampled from cluster i, R_i their summed rewards) |
    # "rounds" (n_i = rounds cluster i was played, R_i the sum of each round's mean reward: same mean, an
    # exploration bonus about sqrt(docs per round) larger; Quad's "total times of samples taken")
    ucb_count: str = "docs"
    bandit_normalization: str = "auto"  # auto: raw for quad, `normalization` for the bandit agent
    bandit_rounds_per_update: int = 1  # rounds the bandit agent plays per console update
    # quad: each stage refills D_k to the whole budget (the paper's single pass; scores about
    # budget / keep-rate documents per stage), or, when set, to this many tokens: what the trainer
    # consumes in U steps (update_every x global batch tokens), so scoring cost follows training
    quad_stage_tokens: Optional[int] = None
    # score baselines (agents/score_top.py, agents/mates.py); label columns named as in data.label_columns
    perplexity_column: str = "perplexity"  # perplexity: float label column (labels/perplexity.py)
    perplexity_band: str = "high"  # high | medium | low (Ankner et al. 2024: high best on the Pile)
    dsir_column: str = "dsir_logw"  # dsir: log importance weights (labels/dsir.py)
    embedding_column: str = "embedding"  # mates: (N, d) embeddings (labels/embed.py)
    mates_samples: int = 4096  # docs scored with influence per update to fit the ridge model
    mates_alpha: float = 1.0  # ridge penalty on the embedding weights (standardised targets)
    mates_holdout: float = 0.2  # fraction of the samples held out for the logged fit R^2
    mates_temperature: float = 0.5  # tau of Gumbel-top-k on predicted standardised rewards
    # write each stage's D_k (its doc ids: int32, 4 bytes a selected doc) to <out>/selections/step_NNNNNN.npy,
    # named in the selector log (`thresher trace` and `thresher selection` read them): "always" | "never" |
    # "auto": for pools of at most 50M documents (a stage's file is then at most 200 MB; a 600M-doc pool
    # selecting 100M+ docs a stage would write 400+ MB per update). Output only: a resume may change it
    save_selections: str = "auto"

    def validate(self) -> None:
        choices = {"normalization": ("raw", "zscore", "rank"), "missing": ("neutral", "exclude"),
                   "selection": ("top-k", "gumbel"), "mixture_shortfall": ("keep", "redistribute"),
                   "theta_eta": ("console", "agent"), "threshold_mode": ("absolute", "quantile"),
                   "unvisited": ("inf", "initial-visit"), "ucb_count": ("docs", "rounds"),
                   "initial": ("random", "scores"),
                   "bandit_normalization": ("auto", "raw", "zscore", "rank"),
                   "save_selections": ("auto", "always", "never")}
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise ThresherError(f"selector.{name} = {getattr(self, name)!r}; choose one of {', '.join(ok)}")
        if self.update_every < 1 or self.samples_per_category < 1:
            raise ThresherError("selector.update_every and selector.samples_per_category must be >= 1")
        if self.temperature <= 0:
            raise ThresherError("selector.temperature must be > 0")
        if not 0 < self.sample_proportion <= 1:
            raise ThresherError("selector.sample_proportion must be in (0, 1]")

    def saves_selections(self, n_docs: int) -> bool:
        """Whether a run over a pool of ``n_docs`` documents writes every stage's D_k to disk."""
        return self.save_selections == "always" or self.save_selections == "auto" and n_docs <= AUTO_SAVE_MAX_DOCS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SelectorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ThresherError(f"unknown selector setting(s): {', '.join(unknown)}")
        return cls(**d)
