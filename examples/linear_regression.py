"""The classic MXNet Gluon "RMSprop from scratch" tutorial, ported to optax_rms.

The tutorial fits a 2-feature linear regression with a hand-written update:

    g = param.grad / batch_size
    s = gamma * s + (1 - gamma) * g**2
    param -= lr * g / sqrt(s + eps)

which is exactly ``optax.chain(optax.scale(1 / batch_size),
optax_rms.rmsprop(lr, decay=gamma, eps=eps))`` (and MXNet's own
``mx.optimizer.RMSProp(learning_rate=lr, gamma1=gamma, epsilon=eps,
rescale_grad=1 / batch_size)``). MXNet's own run of it is stored in
tests/goldens/mxnet.npz (tests/goldens/make_goldens.py regenerates it), and
every run prints its per-epoch losses and final weights beside MXNet's.

Two bugs of the original, fixed here in the open:
1. ``y`` has shape (4,) while the prediction has shape (4, 1), so
   ``(yhat - y) ** 2`` broadcasts to a 4x4 matrix: every prediction is compared
   with every target. We reshape ``y`` to (4, 1).
2. ``batch_size = 10`` with only 4 rows: each epoch is one batch of 4 rows, but
   the gradient is still divided by 10. We divide by the real batch size.
``--original`` reproduces the tutorial's arithmetic exactly (both bugs), which
is what the MXNet golden with ``original=True`` was made with.

Run: python examples/linear_regression.py [--original] [--check-golden]
``--check-golden`` also exits with status 1 unless every loss and weight
agrees with MXNet's to RTOL (float32 rounding: the two order the arithmetic
differently).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rms

X = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
Y = jnp.array([0.0, -1.0, -2.0, -3.0])
LR, GAMMA, EPS, EPOCHS = 0.03, 0.9, 1e-6, 5
TUTORIAL_BATCH_SIZE = 10
GOLDEN = pathlib.Path(__file__).resolve().parent.parent / "tests/goldens/mxnet.npz"
# Relative agreement with MXNet's float32 run: measured <= 5.3e-7 (a few ulps;
# tests/tolerances.py's VS_FRAMEWORK explains why not bit for bit).
RTOL = 1e-5


def squared_errors(params, x, y, original):
  yhat = x @ params["w"] + params["b"]  # (n, 1)
  target = y if original else y.reshape(-1, 1)  # original: (n,) -> (n, n) loss
  return (yhat - target) ** 2


def train(original: bool = False, epochs: int = EPOCHS):
  """Returns the per-epoch losses and parameters."""
  # Fixed start (the tutorial draws it at random): the MXNet golden uses it too.
  params = {"w": jnp.array([[1.0], [-1.0]]), "b": jnp.array([0.5])}
  # Bug 2: the tutorial divides by 10 whatever the batch holds.
  divide_by = TUTORIAL_BATCH_SIZE if original else min(TUTORIAL_BATCH_SIZE, len(X))
  tx = optax.chain(
    optax.scale(1.0 / divide_by),  # g = param.grad / batch_size
    optax_rms.rmsprop(LR, decay=GAMMA, eps=EPS),
  )
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    # loss.backward() on a non-scalar loss differentiates its sum.
    grads = jax.grad(lambda p: jnp.sum(squared_errors(p, x, y, original)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for _ in range(epochs):
    for i in range(0, len(X), TUTORIAL_BATCH_SIZE):  # one batch of 4 rows
      params, state = step(
        params, state, X[i : i + TUTORIAL_BATCH_SIZE], Y[i : i + TUTORIAL_BATCH_SIZE]
      )
    loss = float(jnp.mean(squared_errors(params, X, Y, original)))
    history.append(
      {"loss": loss, "w": np.asarray(params["w"]), "b": np.asarray(params["b"])}
    )
  return history


def mxnet_golden(original: bool) -> dict[str, np.ndarray]:
  """MXNet's per-epoch ``losses``, ``w`` and ``b`` for the same run."""
  key = "linreg_original" if original else "linreg_fixed"
  with np.load(GOLDEN) as golden:
    return {name: golden[f"{key}/{name}"] for name in ("losses", "w", "b")}


def _relative(got: np.ndarray, want: np.ndarray) -> float:
  return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))


def compare_with_mxnet(history, original: bool) -> float:
  """Largest relative difference of the per-epoch losses from MXNet's golden."""
  want = mxnet_golden(original)["losses"]
  got = np.array([h["loss"] for h in history])
  return _relative(got, want)


def main(argv: Sequence[str] | None = None) -> float | None:
  """Trains, prints the run beside MXNet's; returns the largest relative
  difference from MXNet (losses and final weights), None without the golden."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--original",
    action="store_true",
    help="reproduce the tutorial's arithmetic, bugs included",
  )
  parser.add_argument(
    "--check-golden",
    action="store_true",
    help=f"exit with status 1 unless the run agrees with MXNet's to rtol {RTOL:g}",
  )
  args = parser.parse_args(argv)
  history = train(original=args.original)
  w, b = history[-1]["w"].ravel(), history[-1]["b"].ravel()
  if not GOLDEN.exists():  # e.g. the example copied out of the repository
    for epoch, h in enumerate(history, 1):
      print(f"epoch {epoch}: loss {h['loss']:.6e}")
    print(f"w = {w}, b = {b}")
    print(f"{GOLDEN} not found: nothing to compare with.")
    if args.check_golden:
      sys.exit(1)
    return None
  mx = mxnet_golden(args.original)
  print(f"{'epoch':>5s} {'loss':>13s} {'MXNet RMSProp':>13s} {'rel. diff':>9s}")
  for epoch, (h, want) in enumerate(zip(history, mx["losses"], strict=True), 1):
    rel = abs(h["loss"] - want) / abs(want)
    print(f"{epoch:5d} {h['loss']:13.6e} {want:13.6e} {rel:9.1e}")
  mx_w, mx_b = mx["w"][-1].ravel(), mx["b"][-1].ravel()
  print(f"w = {w}, MXNet: {mx_w}")
  print(f"b = {b}, MXNet: {mx_b}")
  worst = max(
    compare_with_mxnet(history, args.original),
    _relative(w, mx_w),
    _relative(b, mx_b),
  )
  verdict = "agrees" if worst <= RTOL else "DOES NOT agree"
  print(
    f"max relative difference from MXNet (losses, w, b): {worst:.1e}: "
    f"{verdict} to rtol {RTOL:g}"
  )
  if args.check_golden and worst > RTOL:
    sys.exit(1)
  return worst


if __name__ == "__main__":
  main()
