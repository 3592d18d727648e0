"""The floating-point dtypes parameters may be stored and computed in, by name: the one table behind the loader,
the configs and every command line's --dtype. NumPy's types (bfloat16 from ml_dtypes, as JAX's is), equal to
`jnp.float32` and the rest, so that a command line lists them without importing JAX."""

import ml_dtypes
import numpy as np

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
