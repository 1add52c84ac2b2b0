"""Noise and bias of the 8-bit state, measured against float32 state.

Question: how noisy and how biased is a step with every buffer in 8 bits?
(docs/numerics.md's table of the 8-bit state cites the answer.)

Feeds the same gradients (unit-variance normal, so each nu settles at 1) to
rmsprop with float32 and with 8-bit buffers for 600 steps, and reports over
the last 300 steps and 65536 elements: the relative spread (std) and mean
error of the stored nu, mu and momentum against the float32 ones, and of the
step size. Writes benchmarks/results/<machine>/quantize_noise.md.

  python -m benchmarks.studies.quantize_noise
"""

import argparse
import datetime
import platform

import jax
import jax.numpy as jnp
import numpy as np

import optax_rms
from optax_rms import _quantize

from ..harness import machine_info, results_path

ALL_8BIT = dict(
  nu_quantization="8bit", mu_quantization="8bit", momentum_quantization="8bit"
)


def _decoded(state, field, form, n):
  codes, scales = getattr(state, field), getattr(state, f"{field}_scale")
  if scales is None:
    return np.asarray(codes)
  return np.asarray(_quantize.decode(form, codes, scales, ((0, (n,)),)))


def measure(decay, steps=600, n=65536):
  kw = dict(decay=decay, centered=True, momentum=0.9)
  f = optax_rms.rmsprop(1e-3, **kw)
  q = optax_rms.rmsprop(1e-3, **kw, **ALL_8BIT)
  p = jnp.zeros(n)
  sf, sq = f.init(p), q.init(p)
  uf_, uq_ = jax.jit(f.update), jax.jit(q.update)
  key = jax.random.PRNGKey(0)
  rel = {k: [] for k in ("nu", "mu", "momentum", "step")}
  for t in range(steps):
    g = 1.0 + jax.random.normal(jax.random.fold_in(key, t), (n,))  # mean 1, var 1
    uf, sf = uf_(g, sf, p)
    uq, sq = uq_(g, sq, p)
    if t < steps // 2:
      continue
    for field, form in (("nu", "log8"), ("mu", "signed8"), ("momentum", "signed8")):
      a, b = _decoded(sq, field, form, n), np.asarray(getattr(sf, field))
      if field == "nu":  # centered 8-bit nu holds the variance nu - mu^2
        b = b - np.asarray(sf.mu) ** 2
      rel[field].append((a - b) / np.sqrt(np.mean(b**2)))
    uf, uq = np.asarray(uf), np.asarray(uq)
    rel["step"].append((uq - uf) / np.sqrt(np.mean(uf**2)))
  return {k: (float(np.mean(v)), float(np.std(v))) for k, v in rel.items()}


def main():
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.quantize_noise",
    description=__doc__.splitlines()[0],
  )
  parser.add_argument(
    "--out", help="default: benchmarks/results/<machine>/quantize_noise.md"
  )
  args = parser.parse_args()
  lines = [
    "# 8-bit state: noise and bias against float32 state",
    "",
    f"Measured {datetime.date.today()} by "
    "`python -m benchmarks.studies.quantize_noise` "
    f"(jax {jax.__version__}, {platform.machine()} CPU): centered + momentum "
    "0.9, every buffer 8-bit, gradients 1 + N(0, 1) (nu settles at 2, mu at 1: "
    "variance 1; centered 8-bit nu holds the variance, compared with nu - mu^2), "
    "last 300 of 600 steps, 65536 elements. Error of each stored "
    "buffer (decoded) and of the step against the float32-state run fed the "
    "same gradients, relative to the float32 buffer's root mean square: mean "
    "(bias) and standard deviation (spread).",
    "",
    "| decay | buffer | mean | std |",
    "|---|---|---|---|",
  ]
  for decay in (0.9, 0.99):
    for k, (mean, std) in measure(decay).items():
      lines.append(f"| {decay} | {k} | {mean:+.2e} | {std:.3f} |")
      print(lines[-1], flush=True)
  out = args.out or results_path(machine_info(), "quantize_noise.md")
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
