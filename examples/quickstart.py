"""Quickstart: fit a small linear model with optax_rms.rmsprop.

Run: python examples/quickstart.py
It swaps optax.rmsprop for optax_rms.rmsprop in the usual optax loop, checks
the two give the same parameters, then shows a PyTorch-style variant
(momentum with the learning rate applied after the buffer, a schedule, and
coupled weight decay) that optax.rmsprop cannot express.
"""

import jax
import jax.numpy as jnp
import optax

import optax_rms


def main(steps: int = 200) -> None:
  key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(key_x, (256, 8))
  true_w = jax.random.normal(key_w, (8,))
  y = x @ true_w

  def loss(params):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

  def fit(tx):
    params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      value, grads = jax.value_and_grad(loss)(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, value

    for _ in range(steps):
      params, state, value = step(params, state)
    return params, float(loss(params))

  ours, ours_loss = fit(optax_rms.rmsprop(0.01, momentum=0.9))
  ref, ref_loss = fit(optax.rmsprop(0.01, momentum=0.9))
  diff = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)
  )
  print(f"optax_rms.rmsprop final loss: {ours_loss:.3e}")
  print(f"optax.rmsprop     final loss: {ref_loss:.3e}")
  print(f"max |param difference|:       {diff:.1e}")

  torch_style = optax_rms.rmsprop(
    optax.cosine_decay_schedule(0.01, steps),
    decay=0.99,
    eps_in_sqrt=False,
    momentum=0.9,
    lr_in_momentum=False,
    weight_decay=1e-4,
  )
  _, torch_loss = fit(torch_style)
  print(f"PyTorch-style variant final loss: {torch_loss:.3e}")


if __name__ == "__main__":
  main()
