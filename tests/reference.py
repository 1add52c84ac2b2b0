"""An independent float64 NumPy RMSprop, written from the documented math.

Shared by the tests that check optax_rms against it; it imports nothing from
the package.
"""

import numpy as np


def reference_rmsprop(
  params,
  grads_seq,
  *,
  lr,
  decay=0.9,
  eps=1e-8,
  initial_scale=0.0,
  eps_in_sqrt=True,
  centered=False,
  momentum=None,
  nesterov=False,
  bias_correction=False,
  weight_decay=0.0,
  mask=None,
  mode="coupled",
  lr_in_momentum=True,
  maximize=False,
  return_updates=False,
):
  """Runs RMSprop in float64 NumPy; returns the params after every step (or,
  with return_updates, each step's update itself: no cancellation against
  the parameters)."""
  p = {
    k: np.asarray(v, np.complex128 if np.iscomplexobj(v) else np.float64)
    for k, v in params.items()
  }
  nu = {k: np.full(v.shape, initial_scale, np.float64) for k, v in p.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  history, updates = [], []
  for t, grads in enumerate(grads_seq):
    updates.append({})
    eta = lr(t) if callable(lr) else lr
    lam = weight_decay(t) if callable(weight_decay) else weight_decay
    for k in p:
      decays = mask is None or mask[k]
      g = np.asarray(grads[k], p[k].dtype)
      if maximize:
        g = -g
      if mode == "coupled" and decays:
        g = g + lam * p[k]
      nu[k] = decay * nu[k] + (1 - decay) * np.abs(g) ** 2
      mu[k] = decay * mu[k] + (1 - decay) * g
      corr = 1 - decay ** (t + 1) if bias_correction else 1.0
      v = nu[k] / corr
      if centered:
        v = np.maximum(v - np.abs(mu[k] / corr) ** 2, 0.0)
      u = g / (np.sqrt(v + eps) if eps_in_sqrt else np.sqrt(v) + eps)
      if momentum is None:
        step = -eta * u
      elif lr_in_momentum:
        buf[k] = momentum * buf[k] - eta * u
        step = -eta * u + momentum * buf[k] if nesterov else buf[k]
      else:
        buf[k] = momentum * buf[k] + u
        step = -eta * (u + momentum * buf[k] if nesterov else buf[k])
      if mode == "decoupled" and decays:
        step = step - eta * lam * p[k]
      updates[-1][k] = step
      p[k] = p[k] + step
    history.append({k: v.copy() for k, v in p.items()})
  return updates if return_updates else history
