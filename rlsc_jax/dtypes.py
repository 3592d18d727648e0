"""The floating-point dtypes parameters may be stored and computed in, by name: the one table behind the loader,
the configs and every command line's --dtype."""

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
