"""Tracked modules: which Linears carry influence, and how they are grouped into Kronecker blocks.

A block is a set of Linears that read ONE input activation a (B, T, d_in). Its weight gradient is the
stack of its members' gradients, sum_t delta_t a_t^T with delta = concat of the members' output
gradients (B, T, sum d_out). Under grouping="qkv", q/k/v_proj form one block (Quad section 3.3: the
attention projections are factored together) and so do gate/up_proj (same input).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from thresher.influence.config import InfluenceConfig
from thresher.utils.errors import ThresherError


@dataclass
class Block:
    name: str  # e.g. "model.layers.0.self_attn.qkv"
    module_names: list[str]
    modules: list[nn.Linear]

    @property
    def d_in(self) -> int:
        return self.modules[0].in_features

    @property
    def d_outs(self) -> list[int]:
        return [m.out_features for m in self.modules]

    @property
    def d_out(self) -> int:
        return sum(self.d_outs)


def tracked_linears(model: nn.Module, patterns: list[str]) -> list[tuple[str, nn.Linear]]:
    """(qualified name, Linear) of every nn.Linear whose name matches one of ``patterns``, model order."""
    regs = [re.compile(p) for p in patterns]
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(r.search(n) for r in regs)]
    if not found:
        raise ThresherError(f"influence: no nn.Linear matches the module patterns {patterns}")
    return found


def build_blocks(model: nn.Module, cfg: InfluenceConfig) -> list[Block]:
    """Group tracked Linears into blocks; a group's members must be siblings (same parent module)."""
    leaf_group = {}
    if cfg.grouping != "independent":
        for gi, group in enumerate(cfg.groups):
            for leaf in group:
                leaf_group[leaf] = gi
    blocks: dict[str, Block] = {}
    for name, mod in tracked_linears(model, cfg.module_patterns()):
        parent, _, leaf = name.rpartition(".")
        gi = leaf_group.get(leaf)
        key = name if gi is None else f"{parent}.{'_'.join(s.replace('_proj', '') for s in cfg.groups[gi])}"
        blk = blocks.setdefault(key, Block(key, [], []))
        if blk.modules and blk.d_in != mod.in_features:
            raise ThresherError(f"influence: {name} cannot join block {key}: input sizes differ")
        blk.module_names.append(name)
        blk.modules.append(mod)
    return list(blocks.values())
