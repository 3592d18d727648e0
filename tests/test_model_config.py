"""ModelConfig's parameter and FLOP counts: the one counter the plan and the benchmarks read."""

import math

import jax
import pytest
from flax import nnx

from rlsc_jax.models import Decoder, ModelConfig


def _config(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 97, "hidden_size": 16, "intermediate_size": 40, "num_layers": 2,
                          "num_heads": 4, "num_kv_heads": 2, "head_dim": 8, **kw})


@pytest.mark.parametrize("tied, bias", [(False, True), (True, False)])
def test_num_params_counts_every_weight_of_the_decoder(tied, bias):
    cfg = _config(tie_word_embeddings=tied, attention_bias=bias)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    assert cfg.num_params == sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_matmul_flops():
    cfg = _config()
    rows, width = 3, 10
    params = sum(cfg.matmul_params.values())
    attention = 4 * cfg.num_layers * rows * cfg.num_heads * width**2 * cfg.head_dim
    assert cfg.matmul_flops(rows, width) == 2 * params * rows * width + attention
    assert cfg.matmul_flops(rows, width, causal=True) == 2 * params * rows * width + attention // 2
    assert cfg.matmul_flops(rows, width, train=True) == 3 * cfg.matmul_flops(rows, width)
