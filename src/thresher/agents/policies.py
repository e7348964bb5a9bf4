"""The policy registry: ``build_selector(cfg, ctx)`` -> a set-up Selector.

Policies (the multi-agent paper's baselines and ablations, Tables 1-2, and Quad):
    random                       uniform D_k at the budget (never re-selects)
    static-mixture               a fixed domain mixture (Table 4 presets or given weights)
    quality-top                  the highest quality intervals first (FineWeb-Edu / QuRating style)
    quality | domain | topic     one learning agent (theta is trivially constant)
    domain+quality, topic+quality, domain+topic   two agents with the console
    no-collaboration-update      three agents, theta fixed at its initial value (Table 2 ablation)
    multi-agent                  Algorithm 1 with quality, domain and topic agents
    quad                         Quad's cluster bandit with threshold acceptance
    multi-agent+quad             Algorithm 1 with the bandit as a 4th agent (beyond both papers)
    perplexity                   a band (high | medium | low) of a reference LM's perplexity (Ankner et al. 2024)
    dsir                         DSIR importance resampling: Gumbel-top-k on log importance weights (Xie et al. 2023)
    mates                        MATES: ridge data-influence model on embeddings, refit every U steps (Yu et al. 2024)
``cfg.agents`` overrides the label columns of the agent policies (e.g. a user label column).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from thresher.agents.base import RandomSelector, SelectionContext, Selector, resolve_budget
from thresher.agents.config import OUTPUT_ONLY, SelectorConfig
from thresher.agents.mates import MatesSelector
from thresher.agents.score_top import DsirSelector, PerplexitySelector
from thresher.agents.selectors import MultiAgentSelector, QuadSelector, StaticMixtureSelector
from thresher.utils.errors import ThresherError

THREE = ["quality", "domain", "topic"]


def _agents(cols: list[str], **kw) -> Callable[[SelectorConfig, str], Selector]:
    return lambda cfg, name: MultiAgentSelector(cfg, cfg.agents or cols, name=name, **kw)


def _random(cfg: SelectorConfig, name: str) -> Selector:
    return RandomSelector()


POLICIES: dict[str, Callable[[SelectorConfig, str], Selector]] = {
    "random": _random,
    "static-mixture": lambda cfg, name: StaticMixtureSelector(cfg, name),
    "quality-top": _agents(["quality"], learn=False, fixed_init={"quality": "quality-ascending"}),
    "quality": _agents(["quality"]),
    "domain": _agents(["domain"]),
    "topic": _agents(["topic"]),
    "domain+quality": _agents(["domain", "quality"]),
    "topic+quality": _agents(["topic", "quality"]),
    "domain+topic": _agents(["domain", "topic"]),
    "no-collaboration-update": _agents(THREE, update_theta=False),
    "multi-agent": _agents(THREE),
    "quad": lambda cfg, name: QuadSelector(cfg, name),
    "multi-agent+quad": _agents(THREE, bandit=True),
    "perplexity": lambda cfg, name: PerplexitySelector(cfg, name),  # Ankner et al. 2024 (score_top.py)
    "dsir": lambda cfg, name: DsirSelector(cfg, name),  # Xie et al. 2023 (score_top.py)
    "mates": lambda cfg, name: MatesSelector(cfg, name),  # Yu et al. 2024, ridge departure (mates.py)
}


def label_columns_needed(cfg: SelectorConfig) -> list[str]:
    """The agent label columns (names of data.label_columns) the policy's setup will look up."""
    if cfg.policy not in POLICIES:
        return []
    sel = POLICIES[cfg.policy](cfg, cfg.policy)
    if isinstance(sel, MultiAgentSelector):
        return list(sel.columns) + ([cfg.bandit_column] if sel.with_bandit else [])
    if isinstance(sel, QuadSelector):
        return [cfg.bandit_column]
    if isinstance(sel, StaticMixtureSelector):
        return [cfg.mixture_column]
    return []


def build_selector(cfg: SelectorConfig, ctx: SelectionContext) -> Selector:
    """The selector of ``cfg.policy``, set up on ``ctx`` (call ``initial_selection()`` next)."""
    if cfg.policy not in POLICIES:
        raise ThresherError(f"unknown selection policy {cfg.policy!r}; choose one of {', '.join(POLICIES)}")
    cfg.validate()
    sel = POLICIES[cfg.policy](cfg, cfg.policy)
    if cfg.policy == "random":  # the base RandomSelector reads budget and seed from the context
        budget_docs, budget_tokens = resolve_budget(cfg, ctx)  # as every policy: no budget is an error
        ctx = replace(ctx, seed=cfg.seed, budget_docs=budget_docs, budget_tokens=budget_tokens)
    sel.setup(ctx)
    sel.settings = {k: v for k, v in cfg.to_dict().items() if k not in OUTPUT_ONLY}  # a resume may change these
    return sel
