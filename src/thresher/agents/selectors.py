"""Selectors the trainer drives: the multi-agent console (Algorithm 1), Quad, a static domain mixture."""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.agents.agent import Agent, CategoricalAgent, category_sizes, normalise_rewards
from thresher.agents.bandit import BanditAgent, ClusterBandit, RoundLog
from thresher.agents.base import SelectionContext, Selector, budget_count, resolve_budget, selection_digest
from thresher.agents.cells import (CellIndex, StageDraws, build_cell_index, cached_cell_index, cell_index_key,
                                   mark_used)
from thresher.agents.config import SelectorConfig
from thresher.agents.console import AgentConsole
from thresher.agents.presets import init_specs, initial_weights
from thresher.agents.select import make_groups, select_gumbel, select_top_k
from thresher.utils.errors import ThresherError
from thresher.utils.log import print0, progress_bar
from thresher.utils.seeding import derive_seed, rng


def _categories(ctx: SelectionContext, column: str) -> list[str]:
    if column not in ctx.labels.codes:
        raise ThresherError(f"label column {column!r} is missing (have: {sorted(ctx.labels.codes)})")
    cats = list(ctx.labels.categories.get(column, []))
    return cats or [str(i) for i in range(int(np.max(ctx.labels.codes[column], initial=-1)) + 1)]


def _warn_empty_categories(policy: str, index: CellIndex, categories: dict[str, list[str]], columns: list[str]) -> dict:
    """{column: [categories without a document in the pool]}, each column's named in one warning line: their
    agent weights never learn (no samples, no reward) and they are never selected."""
    empty = {}
    for col in columns:
        sizes = category_sizes(index, col, len(categories[col]))
        names = [c for c, n in zip(categories[col], sizes) if n == 0]
        if names:
            empty[col] = names
            print0(f"warning: {policy}: no document in the pool has {col} " + ", ".join(map(repr, names))
                   + ": those categories get no samples, their weights keep their initial values")
    return empty


def composition(index: CellIndex, ids: np.ndarray, categories: dict[str, list[str]]) -> dict:
    """Selected docs per category of each label column (a count of distinct codes for wide columns)."""
    per_cell = np.bincount(index.cell_id[ids], minlength=index.n_cells)
    out = {}
    for j, col in enumerate(index.columns):
        codes = index.codes[:, j]
        counts = np.bincount(codes + 1, weights=per_cell, minlength=len(categories[col]) + 1).astype(np.int64)
        if len(categories[col]) > 64:
            out[col] = {"distinct": int((counts[1:] > 0).sum()), "missing": int(counts[0])}
        else:
            out[col] = {name: int(c) for name, c in zip(["<missing>"] + categories[col], counts) if c}
    return out


class _StagedSelector(Selector):
    """Shared plumbing: cell index, budget, seeded stream, random first stage, RNG in state_dict."""

    def __init__(self, cfg: SelectorConfig, name: str) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.name = cfg, name
        self.g = rng(cfg.seed, "selector", name)

    def _index(self, ctx: SelectionContext, columns: list[str]) -> None:
        self.ctx = ctx
        self.budget_docs, self.budget_tokens = resolve_budget(self.cfg, ctx)
        self.categories = {c: _categories(ctx, c) for c in columns}
        lengths = np.asarray(ctx.doc_lengths)
        self.index = (cached_cell_index(ctx.labels, columns, lengths, ctx.cell_cache, heldout=ctx.heldout)
                      if ctx.cell_cache else build_cell_index(ctx.labels, columns, lengths, ctx.heldout))
        if self.index.key is None:
            self.index.key = cell_index_key(ctx.labels, columns, lengths, ctx.heldout)

    @property
    def _budget(self) -> int:
        """The budget in its unit: tokens (budget_tokens set) or documents (resolve_budget sets exactly one)."""
        return self.budget_tokens if self.budget_tokens is not None else self.budget_docs

    def _random_stage(self) -> np.ndarray:
        """Algorithm 1 line 2: D_k as a uniformly random subset at the budget."""
        groups = make_groups(self.index, np.zeros(self.index.n_cells), self.ctx.doc_lengths)
        g = rng(self.cfg.seed, "initial-selection")
        return select_top_k(self.index, self.ctx.doc_lengths, groups, g, self.budget_docs, self.budget_tokens)

    def _due(self, step: int) -> bool:
        due = step > 0 and step % self.cfg.update_every == 0
        if due and self.index.folder is not None:
            mark_used(self.index.folder)  # a running job keeps its cache folder "used" for `thresher cache prune`
        return due

    def _provenance(self) -> dict:
        src = self.ctx.rewards
        return src.provenance() if src is not None else {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": self.g.bit_generator.state}

    def labels_key(self) -> tuple[str, str]:
        return self.index.key, f"the labels of {', '.join(self.index.columns)} or the documents' lengths"

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.g.bit_generator.state = state["rng"]


def missing_labels_error(policy: str, cols: list[str], missing: list[str], found: list[str]) -> ThresherError:
    return ThresherError(
        f"policy {policy} runs agents {cols}, but the label table has no {missing} column "
        f"(agent columns found: {found}): label the store with the labeler that writes "
        "it (topic: topic_zeroshot or topic_hf; cluster: embed with --kmeans-k; quality_bin: a quality labeler "
        "with --quality-bins), or pick a policy / "
        "selector.agents that uses only the columns you have "
        "(e.g. --set selector.agents='[\"domain\", \"quality\"]')")


class MultiAgentSelector(_StagedSelector):
    """Algorithm 1: every U steps refresh rewards, update agents (Eq. 4-5) and theta (Eq. 8-9),
    re-select D_k by Eq. 7 (top-k or Gumbel-top-k, per cell).

    ``columns``: the categorical agents' label columns; ``bandit``: add Quad's bandit as an agent;
    ``learn=False`` keeps the weights fixed (static score policies such as quality-top);
    ``fixed_init`` overrides the initial weights per column.
    """

    def __init__(self, cfg: SelectorConfig, columns: list[str], bandit: bool = False, learn: bool = True,
                 update_theta: bool = True, name: str = "multi-agent", fixed_init: dict | None = None) -> None:
        super().__init__(cfg, name)
        self.columns, self.with_bandit, self.learn = list(columns), bandit, learn
        self.update_theta, self.fixed_init = update_theta, fixed_init or {}

    def setup(self, ctx: SelectionContext) -> None:
        cols = self.columns + ([self.cfg.bandit_column] if self.with_bandit else [])
        for key in ("eta_agents", "init"):  # a misspelt column would silently fall back to the defaults
            unknown = sorted(set(getattr(self.cfg, key)) - set(ctx.labels.codes) - set(cols))
            if unknown:
                raise ThresherError(f"selector.{key} names {unknown}: not label columns (have: {sorted(ctx.labels.codes)})")
        missing = [c for c in cols if c not in ctx.labels.codes]
        if missing:
            raise missing_labels_error(self.name, cols, missing, sorted(ctx.labels.codes))
        self._index(ctx, cols)
        self.empty = _warn_empty_categories(self.name, self.index, self.categories, self.columns)
        if self.learn and ctx.rewards is None:
            raise ThresherError(f"policy {self.name} needs a reward source (influence) in the context")
        agents = [self._agent(c) for c in self.columns]
        if self.with_bandit:
            agents.append(self._bandit_agent())
        # Eq. 9's eta: eta_console for all, or each agent's eta_A (the bandit agent's: eta_agents of its column)
        eta = (self.cfg.eta_console if self.cfg.theta_eta == "console"
               else [self._eta(a.column) for a in agents])
        self.console = AgentConsole(agents, self.cfg.theta_init, eta, self.update_theta,
                                    share_samples=self.cfg.share_samples)
        self.trained = np.zeros(ctx.n_docs, dtype=bool) if self.cfg.reuse_penalty > 0 else None

    def _agent(self, column: str) -> Agent:
        specs = {**init_specs(self.cfg.init, self.cfg.init_file), **self.fixed_init}
        w = initial_weights(specs.get(column), self.categories[column], f"initial weights of {column}")
        return CategoricalAgent(column, column, self.categories[column], w, self._eta(column),
                                self.cfg.samples_per_category, self.cfg.normalization)

    def _eta(self, column: str) -> float:
        """eta_A of the agent on ``column`` (Eq. 5; Eq. 9 too under theta_eta = "agent")."""
        return float(self.cfg.eta_agents.get(column, self.cfg.eta_agent))

    def _bandit_agent(self) -> BanditAgent:
        c, col = self.cfg, self.cfg.bandit_column
        sizes = category_sizes(self.index, col, len(self.categories[col]))
        b = ClusterBandit(sizes, c.alpha, c.sample_proportion, c.max_samples_per_cluster, c.clusters_per_round,
                          c.unvisited, c.ucb_count)
        norm = c.normalization if c.bandit_normalization == "auto" else c.bandit_normalization
        return BanditAgent("bandit", col, self.categories[col], b, c.samples_per_category,
                           c.bandit_rounds_per_update, norm)

    def initial_selection(self) -> np.ndarray:
        initial = self.cfg.initial if self.learn else "scores"  # a policy that never learns selects by its weights
        ids = self._random_stage() if initial == "random" else self._select()
        self._set_selection(ids)
        self.log.append({"step": 0, "policy": self.name, "selected": int(len(ids)), "initial": initial,
                         "agents": [a.initial_log() for a in self.console.agents],
                         "theta": self.console.theta.tolist(), "composition": self._composition(ids),
                         "selection_sha1": selection_digest(ids),
                         **({"empty_categories": self.empty} if self.empty else {})})
        return self._selection

    def on_step(self, step: int, model: Any) -> bool:
        if not (self.learn and self._due(step)):
            return False
        self.ctx.rewards.refresh(model, step)
        ups, collab = self.console.update(self.index, self.ctx.rewards, self.g)
        if self.trained is not None:  # the stage that just ended counts as trained on
            self.trained[self._selection] = True
        ids = self._select()
        self._set_selection(ids)
        self.log.append({"step": step, "policy": self.name, "agents": [u.to_log() for u in ups], **collab,
                         "selected": int(len(ids)), "composition": self._composition(ids),
                         "selection_sha1": selection_digest(ids), "rewards": self._provenance()})
        return True

    def mark_trained(self, doc_ids: np.ndarray) -> None:
        """The trainer may report exactly which docs it consumed (for the reuse penalty)."""
        if self.trained is not None:
            self.trained[np.asarray(doc_ids, dtype=np.int64)] = True

    def _select(self) -> np.ndarray:
        scores = self.console.cell_scores(self.index, self.cfg.missing)
        groups = make_groups(self.index, scores, self.ctx.doc_lengths, self.trained, self.cfg.reuse_penalty)
        args = (self.index, self.ctx.doc_lengths, groups, self.g)
        if self.cfg.selection == "gumbel":
            return select_gumbel(*args, self.cfg.temperature, self.budget_docs, self.budget_tokens, self.trained)
        return select_top_k(*args, self.budget_docs, self.budget_tokens, self.trained)

    def _composition(self, ids: np.ndarray) -> dict:
        return composition(self.index, ids, self.categories)

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "console": self.console.state_dict()}
        if self.trained is not None:
            state["trained"] = np.packbits(self.trained)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.console.load_state_dict(state["console"])
        if self.trained is not None:
            self.trained = np.unpackbits(np.asarray(state["trained"]), count=self.ctx.n_docs).astype(bool)


class QuadSelector(_StagedSelector):
    """Quad: each stage, play bandit rounds, keep sampled docs whose reward passes the threshold,
    until the budget is filled. The first stage is random (as Algorithm 1 line 2)."""

    def __init__(self, cfg: SelectorConfig, name: str = "quad") -> None:
        super().__init__(cfg, name)

    def setup(self, ctx: SelectionContext) -> None:
        col = self.cfg.bandit_column
        self._index(ctx, [col])
        if ctx.rewards is None:
            raise ThresherError("policy quad needs a reward source (influence) in the context")
        if self.cfg.initial != "random":  # the console policies' 'scores' are their initial weights; quad has none
            raise ThresherError(f"selector.initial = {self.cfg.initial!r} is for the console policies (D_0 by their "
                                "initial weights); quad's D_0 would need rewards from a model that has not trained "
                                "yet: use 'random' (Algorithm 1 line 2)")
        c = self.cfg
        self.bandit = ClusterBandit(category_sizes(self.index, col, len(self.categories[col])), c.alpha,
                                    c.sample_proportion, c.max_samples_per_cluster, c.clusters_per_round, c.unvisited,
                                    c.ucb_count)
        self.norm = "raw" if c.bandit_normalization == "auto" else c.bandit_normalization
        if c.quad_stage_tokens and self.budget_tokens is None:
            raise ThresherError("selector.quad_stage_tokens sizes stages in tokens: it needs a token budget "
                                "(selector.budget_tokens), not budget_docs")

    def initial_selection(self) -> np.ndarray:
        ids = self._random_stage()
        self._set_selection(ids)
        self.log.append({"step": 0, "policy": self.name, "selected": int(len(ids)), "initial": "random",
                         "selection_sha1": selection_digest(ids)})
        return self._selection

    def on_step(self, step: int, model: Any) -> bool:
        if not self._due(step):
            return False
        self.ctx.rewards.refresh(model, step)
        self._set_selection(self._fill(step))
        return True

    def _fill(self, step: int) -> np.ndarray:
        b = self.bandit
        draws = StageDraws(self.index, self.cfg.bandit_column)  # no doc is drawn twice a stage
        left = b.sizes.copy()
        chosen, room = [], self._budget
        if self.cfg.quad_stage_tokens and step > 0 and self.budget_tokens is not None:
            room = min(room, int(self.cfg.quad_stage_tokens))
        rounds = 0
        self._record = RoundLog(b, thresholds=True)  # what the log keeps of this stage's rounds
        # a stage can take minutes of short scoring calls: the bar fills with D_k (a log gets a line every 30 s)
        bar = progress_bar(room, desc=f"quad: fill D_k (step {step})", leave=False,
                           unit="tok" if self.budget_tokens is not None else "doc")
        if self.cfg.unvisited == "initial-visit" and b.counts.sum() == 0:
            before, room = room, self._play(np.flatnonzero(left > 0), draws, left, chosen, room, initial=True)
            bar.update(before - room)
        while room > 0 and left.sum() > 0:
            arms = b.choose(self.g, left > 0)
            before, room = room, self._play(arms, draws, left, chosen, room)
            bar.update(before - room)
            rounds += 1
        bar.close()
        ids = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        sampled = draws.drawn()
        if len(ids) == 0 and sampled:  # every document scored, none above the threshold: never train on nothing
            raise ThresherError(
                f"quad: none of the {sampled} documents scored at step {step} has a reward above selector.threshold = "
                f"{self.cfg.threshold} ({self.cfg.threshold_mode}; rewards {self.norm}): the paper's threshold is on its "
                "influence scale, not this model's; set selector.threshold_mode = 'quantile' or a threshold on your scale")
        self.log.append({"step": step, "policy": self.name, "rounds": rounds, "sampled": sampled,
                         "selected": int(len(ids)), "arms_visited": int((b.counts > 0).sum()),
                         **self._record.to_log(),  # arms, thresholds, task_mean_rewards
                         "composition": composition(self.index, ids, self.categories),
                         "selection_sha1": selection_digest(ids), "rewards": self._provenance()})
        return ids

    def _play(self, arms, draws: StageDraws, left, chosen, room, initial=False) -> int:
        """One round: sample each arm, score, update the bandit, keep docs above threshold."""
        b = self.bandit
        docs, arm_of = [], []
        for a in arms.tolist():
            m = min(self.cfg.samples_per_category if initial else b.round_size(a), int(left[a]))
            docs.append(draws.draw(a, m, self.g))
            left[a] -= m
            arm_of.append(np.full(m, a, dtype=np.int64))
        docs, arm_of = np.concatenate(docs), np.concatenate(arm_of)
        raw, per_task = self.ctx.rewards.task_rewards(docs)
        r = normalise_rewards(raw, self.norm)
        b.observe(arm_of, r)
        thr = self.cfg.threshold if self.cfg.threshold_mode == "absolute" else np.quantile(r, self.cfg.threshold_quantile)
        above = r > thr
        self._record.add(per_task, thr, above)
        keep = docs[above]
        if self.budget_tokens is not None:
            n = int(np.searchsorted(np.cumsum(self.ctx.doc_lengths[keep]), room, side="right"))
            chosen.append(keep[:n])
            return 0 if n < len(keep) else room - int(self.ctx.doc_lengths[keep].sum())
        chosen.append(keep[:room])
        return room - len(keep[:room])

    def state_dict(self) -> dict:
        return {**super().state_dict(), "bandit": self.bandit.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.bandit.load_state_dict(state["bandit"])


class StaticMixtureSelector(_StagedSelector):
    """A fixed domain mixture (Table 4 presets or given weights): per domain a random subset with
    that share of the budget (docs or tokens); a domain short of docs gives what it has."""

    def __init__(self, cfg: SelectorConfig, name: str = "static-mixture") -> None:
        super().__init__(cfg, name)

    def setup(self, ctx: SelectionContext) -> None:
        self._index(ctx, [self.cfg.mixture_column])
        cats = self.categories[self.cfg.mixture_column]
        col, source = self.cfg.mixture_column, f"preset {self.cfg.mixture}"
        spec = self.cfg.mixture_weights or self.cfg.mixture
        if self.cfg.mixture_weights:
            source = "mixture_weights"
        elif self.cfg.mixture == "init":  # the agents' initial weights for the column: init wins over init_file
            specs = init_specs(self.cfg.init, self.cfg.init_file)
            if col not in specs:
                raise ThresherError(f"selector.mixture = 'init' takes the initial weights of {col!r} from selector.init "
                                    f"or selector.init_file, and neither has them (init_file: {self.cfg.init_file or 'unset'})")
            spec = specs[col]
            source = "init" if col in self.cfg.init else f"init_file {self.cfg.init_file}"
        self.source = source
        self.weights = initial_weights(spec, cats, "mixture weights")

    def initial_selection(self) -> np.ndarray:
        g = rng(self.cfg.seed, "static-mixture")
        parts = []
        shares = _shares(self.budget_docs, self.weights) if self.budget_docs is not None else None
        targets = self._targets(shares)
        for j in range(len(self.weights)):
            score = np.where(self.index.codes[:, 0] == j, 0.0, -np.inf)
            groups = make_groups(self.index, score, self.ctx.doc_lengths)
            docs = int(targets[j]) if shares is not None else None
            toks = int(targets[j]) if shares is None else None
            parts.append(select_top_k(self.index, self.ctx.doc_lengths, groups, g, docs, toks))
        ids = np.sort(np.concatenate(parts))
        short = self._shortfall(parts, shares)
        self._set_selection(ids)
        cats = self.categories[self.cfg.mixture_column]
        self.log.append({"step": 0, "policy": self.name, "selected": int(len(ids)), "weights_from": self.source,
                         "weights": self.weights.tolist(), "composition": composition(self.index, ids, self.categories),
                         "selection_sha1": selection_digest(ids),
                         **({"shortfall": short} if short else {}),
                         **({"targets": dict(zip(cats, map(int, targets)))} if short and self._redistribute else {})})
        return self._selection

    @property
    def _redistribute(self) -> bool:
        return self.cfg.mixture_shortfall == "redistribute"

    def _targets(self, shares: np.ndarray | None) -> np.ndarray:
        """Per category, the docs (``shares``) or tokens to select: the weights' share of the budget, or under
        ``mixture_shortfall = "redistribute"`` those shares water-filled up to what each category holds."""
        first = shares if shares is not None else self.budget_tokens * self.weights
        if not self._redistribute:
            return np.asarray(first)
        cap = category_sizes(self.index, self.cfg.mixture_column, len(self.weights),
                             self.index.counts if shares is not None else self.index.tokens)
        return _water_fill(self._budget, self.weights, cap, integer=shares is not None)

    def _shortfall(self, parts: list[np.ndarray], shares: np.ndarray | None) -> dict:
        """{category: {target, selected}} (docs or tokens) for categories the pool cannot fill, with a warning:
        the selection is then smaller than the budget and its mixture differs from the weights."""
        cats = self.categories[self.cfg.mixture_column]
        unit = "docs" if shares is not None else "tokens"
        # a token share is filled up to less than one document (the next one would not fit)
        slack = 0 if shares is not None else int(self.ctx.doc_lengths.max(initial=0))
        out = {}
        for j, part in enumerate(parts):
            got = len(part) if shares is not None else int(self.ctx.doc_lengths[part].sum())
            target = int(shares[j]) if shares is not None else int(self.budget_tokens * self.weights[j])
            if target - got > slack:
                out[cats[j]] = {"target": target, "selected": got}
        if out:
            lost = sum(v["target"] - v["selected"] for v in out.values())
            head = (f"warning: {self.name}: the pool has too few {self.cfg.mixture_column} documents for the mixture's "
                    f"share of " + ", ".join(f"{c} ({v['selected']:,} of {v['target']:,} {unit})" for c, v in out.items()))
            if not self._redistribute:
                print0(head + f"; the selection is {lost:,} {unit} short of the budget and its mixture differs from the "
                       "weights (selector.mixture_shortfall = \"redistribute\" hands the rest to the other categories)")
            else:
                got = sum(len(p) if shares is not None else int(self.ctx.doc_lengths[p].sum()) for p in parts)
                print0(head + f"; their {lost:,} {unit} went to the other categories in proportion to their weights "
                       f"(the selection: {got:,} of the budget's {self._budget:,} {unit})")
        return out


def _water_fill(budget: int, w: np.ndarray, cap: np.ndarray, integer: bool) -> np.ndarray:
    """Targets summing to ``budget`` (or to ``cap``'s total, if smaller) in proportion to ``w``, none above its
    ``cap``: a category whose share exceeds its cap gets the cap, and the rest of the budget is shared again among
    the others by their weights, until no share exceeds its cap. ``integer``: whole documents (largest
    remainders, as ``_shares``)."""
    w, cap = np.asarray(w, dtype=np.float64), np.asarray(cap, dtype=np.float64)
    full = (w > 0) & (cap <= 0)  # nothing to give: capped at 0 from the start
    while True:
        free = (w > 0) & ~full
        left = max(float(budget) - cap[full].sum(), 0.0)
        share = np.zeros_like(w)
        if free.any():
            share[free] = _shares(int(left), w[free]) if integer else left * w[free] / w[free].sum()
        over = free & (share > cap)
        if not over.any():
            out = np.where(full, cap, share)
            return out.astype(np.int64) if integer else out
        full |= over


def _shares(k: int, w: np.ndarray) -> np.ndarray:
    """k split by weights w, largest remainders first, summing to k."""
    exact = k * np.asarray(w) / np.sum(w)
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[: k - int(out.sum())]] += 1
    return out


__all__ = ["MultiAgentSelector", "QuadSelector", "StaticMixtureSelector", "budget_count"]
