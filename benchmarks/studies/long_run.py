"""100k RMSprop steps on a small noisy problem in float32: no drift, no NaN.

Question: does a long float32 run drift, or nu leave its range? (No: the
figures are in docs/numerics.md, "The long run".)

Run: python -m benchmarks.studies.long_run [--steps 100000]

A noisy quadratic f(x) = 0.5 * sum(a * (x - x_star)^2), curvatures a spread
over 1e-2..1e2, gradient noise of standard deviation 0.1, a cosine-decayed
learning rate. For each variant it reports, over the last 10% of the run: the
mean loss (it should sit at the noise floor, not creep up), the largest
|x - x_star|, whether anything became non-finite, and the range of nu (which
must stay within the range of the squared gradients seen). The result is
recorded in docs/numerics.md.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import optax_rms

VARIANTS = {
  "plain": dict(),
  "centered": dict(centered=True),
  "momentum": dict(momentum=0.9),
  "centered+nesterov+bias_correction": dict(
    centered=True, momentum=0.9, nesterov=True, bias_correction=True
  ),
  "pytorch-style": dict(
    eps_in_sqrt=False, momentum=0.9, lr_in_momentum=False, weight_decay=1e-4
  ),
}


def run(kw, steps, dim=256, chunk=10_000):
  key = jax.random.PRNGKey(0)
  k_a, k_x, k_noise = jax.random.split(key, 3)
  a = 10.0 ** jax.random.uniform(k_a, (dim,), minval=-2, maxval=2)
  x_star = jax.random.normal(k_x, (dim,))
  tx = optax_rms.rmsprop(optax.cosine_decay_schedule(1e-2, steps, alpha=1e-2), **kw)
  x = jnp.zeros(dim)
  state = tx.init(x)

  @jax.jit
  def run_chunk(x, state, start):
    def step(carry, t):
      x, state, nu_min, nu_max = carry
      noise = 0.1 * jax.random.normal(jax.random.fold_in(k_noise, t), (dim,))
      g = a * (x - x_star) + noise
      u, state = tx.update(g, state, x)
      x = optax.apply_updates(x, u)
      loss = 0.5 * jnp.sum(a * (x - x_star) ** 2)
      return (
        x,
        state,
        jnp.minimum(nu_min, state.nu.min()),
        jnp.maximum(nu_max, state.nu.max()),
      ), (loss, jnp.all(jnp.isfinite(x)))

    init = (x, state, jnp.inf, -jnp.inf)
    (x, state, nu_min, nu_max), (losses, finite) = jax.lax.scan(
      step, init, start + jnp.arange(chunk)
    )
    return x, state, losses, jnp.all(finite), nu_min, nu_max

  losses, finite, nu_lo, nu_hi = [], True, float("inf"), 0.0
  for start in range(0, steps, chunk):
    x, state, chunk_losses, chunk_finite, lo, hi = run_chunk(x, state, start)
    losses.append(chunk_losses)
    finite &= bool(chunk_finite)
    nu_lo, nu_hi = min(nu_lo, float(lo)), max(nu_hi, float(hi))
  losses = jnp.concatenate(losses)
  tail = losses[-steps // 10 :]
  return {
    "final_loss_mean": float(tail.mean()),
    "first_10pct_loss_mean": float(losses[: steps // 10].mean()),
    "max_abs_error": float(jnp.max(jnp.abs(x - x_star))),
    "all_finite": finite and bool(jnp.all(jnp.isfinite(losses))),
    "nu_range": (nu_lo, nu_hi),
    "count": int(state.count),
  }


def main() -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.long_run", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--steps", type=int, default=100_000)
  args = parser.parse_args()
  print(
    f"{args.steps} steps, float32, jax {jax.__version__}, {jax.devices()[0].platform}"
  )
  print(
    f"{'variant':36s} {'loss first 10%':>14s} {'loss last 10%':>13s} "
    f"{'max|x-x*|':>9s} {'finite':>6s} {'nu range':>20s} {'sec':>5s}"
  )
  for name, kw in VARIANTS.items():
    t0 = time.perf_counter()
    r = run(kw, args.steps)
    assert r["count"] == args.steps
    print(
      f"{name:36s} {r['first_10pct_loss_mean']:14.3e} {r['final_loss_mean']:13.3e} "
      f"{r['max_abs_error']:9.2e} {str(r['all_finite']):>6s} "
      f"[{r['nu_range'][0]:.1e}, {r['nu_range'][1]:.1e}] "
      f"{time.perf_counter() - t0:5.1f}"
    )


if __name__ == "__main__":
  main()
