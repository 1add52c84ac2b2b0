"""Comparison tolerances, per dtype, with the reason for each.

Import as `from tolerances import assert_close, TOL` (pytest puts tests/ on
sys.path).
"""

import jax.numpy as jnp
import numpy as np

# Same computation, same dtype (optax vs optax_rms): both run the same sequence
# of IEEE operations, but XLA may fuse or reassociate them differently, so a
# few units in the last place may differ per step. float32 eps = 1.2e-7;
# bfloat16 eps = 7.8e-3 (8 bits of mantissa). The test values are O(1), and a
# parameter that moves at scale 1 and ends near 0 keeps the absolute rounding
# error of scale 1, so atol is a few ulps *at 1.0*: 4 for float32, 2 for bf16.
SAME_MATH = {
  jnp.dtype(jnp.float32): dict(rtol=2e-6, atol=4.8e-7),
  jnp.dtype(jnp.bfloat16): dict(rtol=2e-2, atol=1.6e-2),
  jnp.dtype(jnp.complex64): dict(rtol=2e-6, atol=4.8e-7),
}

# optax_rms in float32 against a float64 NumPy reference after tens of steps on
# a fixed gradient sequence: each step's update carries a relative error of a
# few float32 ulps (rsqrt/sqrt are correctly rounded to ~1 ulp, each of the ~8
# elementwise ops adds <= 0.5 ulp), and params accumulate ~50 such steps, so
# ~50 * 8 * 6e-8 ~ 2.4e-5 relative to the size of a step in the worst case.
VS_FLOAT64 = {
  jnp.dtype(jnp.float32): dict(rtol=2e-5, atol=2e-6),
  jnp.dtype(jnp.complex64): dict(rtol=2e-5, atol=2e-6),
  # bfloat16 params hold 8 bits: one rounding of the parameter itself is
  # 2^-8 relative, and params are rounded once per step.
  jnp.dtype(jnp.bfloat16): dict(rtol=3e-2, atol=3e-2),
}


def assert_close(actual, desired, table, dtype, err_msg=""):
  tol = table[jnp.dtype(dtype)]
  np.testing.assert_allclose(
    np.asarray(actual, dtype=np.complex128 if np.iscomplexobj(actual) else np.float64),
    np.asarray(
      desired, dtype=np.complex128 if np.iscomplexobj(desired) else np.float64
    ),
    err_msg=err_msg,
    **tol,
  )


# optax_rms.compat against another framework's float32 implementation of the
# same math, over the 60-step golden problems. The two sides order the
# arithmetic differently (TF/timm: ms += (g^2 - ms) * (1 - rho); PyTorch:
# addcdiv; Keras: lr * g / sqrt(...)), so each step differs by a few float32
# ulps, and the O(1) parameters accumulate them. Measured worst
# |ours - theirs| / max(|x|, 1): torch 3.6e-7, keras 5.6e-7, tf1 3.6e-7,
# mxnet 3.9e-7, timm 1.6e-6 -- and for that timm case ours is 4.5e-7 from a
# float64 reference while timm's own float32 run is 1.2e-6 from it: the gap
# is timm's rounding. So: ~8 ulps relative, ~16 ulps at 1.0 absolute.
VS_FRAMEWORK = {
  jnp.dtype(jnp.float32): dict(rtol=1e-6, atol=2e-6),
}


# One step's update in a low-precision dtype against float64, after up to 30
# steps of statistics (tests/test_numerics.py). u = unit roundoff.
# - float32 (u = 6e-8): nu carries ~3 roundings per step, damped by decay 0.9,
#   so <= 30u relative, halved by the square root, plus ~3u in the update:
#   ~18u = 1e-6; 1e-5 leaves room for eps and the centered subtraction.
# - float16 params: the statistics live in float32 (the default), so the only
#   float16 rounding is the final update's (u = 2^-11 = 4.9e-4): 2u, and an
#   absolute 2^-24 for updates below float16's normal range.
# - bfloat16 (u = 2^-8 = 3.9e-3) with the state in bfloat16 too: the same 18u
#   worst-case bound = 7e-2; 8e-2. (atol: bf16 has float32's range.)
LOW_PRECISION_UPDATE = {
  jnp.dtype(jnp.float32): dict(rtol=1e-5, atol=1e-30),
  jnp.dtype(jnp.float16): dict(rtol=1e-3, atol=2.0**-24),
  jnp.dtype(jnp.bfloat16): dict(rtol=8e-2, atol=1e-30),
}
