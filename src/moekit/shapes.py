"""The canonical MoE layer shapes we measure on (one layer; TP slices divide the intermediate size).

Source: the model cards / configs of each model (hidden_size, moe_intermediate_size, num_experts, top_k).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class MoEShape:
    name: str
    E: int
    top_k: int
    H: int
    I: int
    num_expert_group: Optional[int] = None
    topk_group: Optional[int] = None
    scoring: str = "softmax"

    def tp(self, n: int) -> "MoEShape":
        """The per-rank slice under tensor parallelism of size n (intermediate size divided)."""
        return MoEShape(f"{self.name}_tp{n}", self.E, self.top_k, self.H, self.I // n, self.num_expert_group,
                        self.topk_group, self.scoring)

    def route_kwargs(self) -> dict:
        return dict(scoring=self.scoring, num_expert_group=self.num_expert_group, topk_group=self.topk_group)


SHAPES = {
    "mixtral8x7b": MoEShape("mixtral8x7b", 8, 2, 4096, 14336),
    "qwen3_30b_a3b": MoEShape("qwen3_30b_a3b", 128, 8, 2048, 768),
    "dsv3": MoEShape("dsv3", 256, 8, 7168, 2048, num_expert_group=8, topk_group=4, scoring="sigmoid"),
    "gpt_oss_20b": MoEShape("gpt_oss_20b", 32, 4, 2880, 2880),
}
SHAPES["mixtral_tp2"] = SHAPES["mixtral8x7b"].tp(2)
SHAPES["qwen3_30b_tp2"] = SHAPES["qwen3_30b_a3b"].tp(2)
SHAPES["dsv3_tp8"] = SHAPES["dsv3"].tp(8)
SHAPES["gpt_oss_120b"] = MoEShape("gpt_oss_120b", 128, 4, 2880, 2880)  # benchmarks: a shape with no tuned file

BATCH_SIZES: Tuple[int, ...] = (1, 16, 64, 256, 1024, 4096)


def expected_distinct_experts(E: int, top_k: int, M: int) -> float:
    """With uniform routing, the expected number of experts that receive at least one token."""
    return E * (1.0 - (1.0 - top_k / E) ** M)


def moe_bytes_flops(shape: MoEShape, M: int, weight_bytes: float = 2.0, act_bytes: float = 2.0) -> Tuple[float, float]:
    """Fewest bytes one forward must move (weights of the touched experts, input and output activations)
    and its FLOPs (2 * M * k * 3 * H * I)."""
    weights = expected_distinct_experts(shape.E, shape.top_k, M) * 3 * shape.H * shape.I * weight_bytes
    acts = 2 * M * shape.H * act_bytes
    return weights + acts, 2.0 * M * shape.top_k * 3 * shape.H * shape.I
