"""Time-MoE's configuration: the fields of the official `config.json` that shape the model.

`TimeMoeConfig.from_dict` reads a checkpoint's config.json (defaults as in the original
TimeMoeConfig for absent keys) and refuses what this engine cannot run, with a message
naming the field. `OFFICIAL` holds the released sizes for benchmarks and test checkpoints.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Tuple

#: activations the official checkpoints may name (hidden_act); all are plain torch functions
ACTIVATIONS = ("silu", "gelu", "relu")


@dataclass(frozen=True)
class TimeMoeConfig:
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    num_experts: int = 1
    num_experts_per_tok: int = 2
    horizon_lengths: Tuple[int, ...] = (1,)
    input_size: int = 1
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    use_dense: bool = False
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def expert_intermediate_size(self) -> int:
        # Each routed expert is intermediate_size / top_k wide, so the routed part costs
        # about as much as the shared expert (the original's choice).
        return self.intermediate_size // self.num_experts_per_tok

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "TimeMoeConfig":
        """Read an official config.json mapping; ValueError says which field is wrong."""
        model_type = raw.get("model_type", "time_moe")
        if model_type != "time_moe":
            raise ValueError(f"config.json has model_type {model_type!r}, expected 'time_moe'")
        d = cls()
        heads = int(raw.get("num_attention_heads", d.num_attention_heads))
        kv_heads = raw.get("num_key_value_heads")
        horizons = raw.get("horizon_lengths", list(d.horizon_lengths))
        if isinstance(horizons, int):
            horizons = [horizons]
        config = cls(
            hidden_size=int(raw.get("hidden_size", d.hidden_size)),
            intermediate_size=int(raw.get("intermediate_size", d.intermediate_size)),
            num_hidden_layers=int(raw.get("num_hidden_layers", d.num_hidden_layers)),
            num_attention_heads=heads,
            num_key_value_heads=heads if kv_heads is None else int(kv_heads),
            num_experts=int(raw.get("num_experts", d.num_experts)),
            num_experts_per_tok=int(raw.get("num_experts_per_tok", d.num_experts_per_tok)),
            horizon_lengths=tuple(int(h) for h in horizons),
            input_size=int(raw.get("input_size", d.input_size)),
            hidden_act=str(raw.get("hidden_act", d.hidden_act)),
            max_position_embeddings=int(
                raw.get("max_position_embeddings", d.max_position_embeddings)
            ),
            rms_norm_eps=float(raw.get("rms_norm_eps", d.rms_norm_eps)),
            rope_theta=float(raw.get("rope_theta", d.rope_theta)),
            use_dense=bool(raw.get("use_dense", d.use_dense)),
            initializer_range=float(raw.get("initializer_range", d.initializer_range)),
        )
        config.check()
        return config

    def check(self) -> None:
        problems = []
        if self.input_size != 1:
            problems.append(f"input_size is {self.input_size}; tsfmd serves univariate Time-MoE (1)")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if not self.horizon_lengths or min(self.horizon_lengths) < 1:
            problems.append("horizon_lengths must list positive head lengths")
        if not self.use_dense and not 1 <= self.num_experts_per_tok <= self.num_experts:
            problems.append("num_experts_per_tok must be between 1 and num_experts")
        if min(self.hidden_size, self.intermediate_size, self.num_hidden_layers) < 1:
            problems.append("hidden_size, intermediate_size and num_hidden_layers must be positive")
        if problems:
            raise ValueError("unsupported Time-MoE config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """The official config.json layout (what the original's from_pretrained reads)."""
        out = asdict(self)
        out["horizon_lengths"] = list(self.horizon_lengths)
        out.update(
            model_type="time_moe",
            architectures=["TimeMoeForPrediction"],
            apply_aux_loss=not self.use_dense,
            router_aux_loss_factor=0.02,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            use_cache=True,
            torch_dtype="float32",
        )
        return out


def _released(hidden: int, intermediate: int) -> dict:
    return {
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": 12,
        "num_attention_heads": 12, "num_key_value_heads": 12, "num_experts": 8,
        "num_experts_per_tok": 2, "horizon_lengths": [1, 8, 32, 64],
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000,
        "hidden_act": "silu", "input_size": 1, "use_dense": False, "initializer_range": 0.02,
        "model_type": "time_moe",
    }


#: the released checkpoints' shapes (Maple728/TimeMoE-50M and -200M config.json; paper, table 1)
OFFICIAL = {
    "TimeMoE-50M": _released(384, 1536),
    "TimeMoE-200M": _released(768, 3072),
}
