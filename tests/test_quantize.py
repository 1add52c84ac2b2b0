"""8-bit blockwise storage of nu (nu_quantization="8bit")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rms
from optax_rms import _quantize


def test_state_layout_and_bytes_per_parameter():
  params = {"w": jnp.ones((300, 200)), "b": jnp.ones(200), "s": jnp.ones(())}
  state = optax_rms.rmsprop(0.1, nu_quantization="8bit").init(params)
  for k, p in params.items():
    assert state.nu[k].dtype == jnp.uint8 and state.nu[k].shape == p.shape
    assert state.nu_scale[k].shape == (_quantize.num_blocks(p.size),)
  big = {"w": jnp.ones((1024, 1024))}
  state = optax_rms.rmsprop(0.1, nu_quantization="8bit").init(big)
  nbytes = sum(x.nbytes for x in jax.tree.leaves((state.nu, state.nu_scale)))
  assert nbytes / big["w"].size == pytest.approx(1 + 4 / 256)


def test_codes_keep_zero_exact_never_round_positive_to_zero_and_keep_the_max():
  rng = np.random.default_rng(0)
  v = 10.0 ** rng.uniform(-12, 3, size=(7, 300))  # wider than the code range
  v[0, :5] = 0.0
  v = jnp.asarray(v, jnp.float32)
  codes, scales = _quantize.quantize(v, jnp.int32(3), 0)
  back = np.asarray(_quantize.dequantize(codes, scales))
  assert np.all(back[np.asarray(v) == 0] == 0)
  assert np.all(back[np.asarray(v) > 0] > 0)
  blocks = np.asarray(_quantize._blocks(v))
  np.testing.assert_array_equal(np.asarray(scales), blocks.max(axis=1))
  # Below max / 2^24 a value is stored as max / 2^24 (a smaller step, never
  # a larger one); above, within one code step (6.8%).
  floor = np.repeat(np.asarray(scales), 256)[: v.size].reshape(v.shape) / 2.0**24
  vv = np.asarray(v)
  low = (vv > 0) & (vv < floor)
  np.testing.assert_allclose(back[low], floor[low], rtol=1e-5)
  ok = vv >= floor
  assert np.all(np.abs(back[ok] / vv[ok] - 1) <= _quantize._STEP * (1 + 1e-5))


def test_stochastic_rounding_is_unbiased():
  v = jnp.asarray(
    10.0 ** np.random.default_rng(1).uniform(-6, 0, 256 * 32), jnp.float32
  )
  draws = [
    np.asarray(_quantize.dequantize(*_quantize.quantize(v, jnp.int32(t), 0)))
    for t in range(100)
  ]
  rel_bias = (np.mean(draws, axis=0) - np.asarray(v)) / np.asarray(v)
  # One draw errs by up to a code step (6.8%, rms ~2.7%); the mean of 100 draws
  # over 8192 values has a standard error of ~3e-5.
  assert abs(rel_bias.mean()) < 5e-4


def test_ema_does_not_freeze_with_slow_decay():
  """With decay 0.99, nu moves 1% a step, less than half a code: round to
  nearest would freeze it; stochastic rounding follows the float32 EMA."""
  p = jnp.ones(256 * 8)
  f = optax_rms.rmsprop(0.1, decay=0.99)
  q = optax_rms.rmsprop(0.1, decay=0.99, nu_quantization="8bit")
  sf, sq = f.init(p), q.init(p)
  for t in range(400):  # big gradients, then 300 steps of small ones: nu decays
    g = jnp.full_like(p, 10.0 if t < 100 else 0.1)
    _, sf = f.update(g, sf)
    _, sq = q.update(g, sq)
  nu_q = np.asarray(_quantize.dequantize(sq.nu, sq.nu_scale))
  nu_f = np.asarray(sf.nu)
  assert nu_f.mean() < 0.1 * 100  # it did decay by a lot
  assert abs(nu_q.mean() / nu_f.mean() - 1) < 0.05


@pytest.mark.parametrize(
  "kw", [dict(), dict(centered=True, momentum=0.9), dict(initial_scale=1.0)]
)
def test_trajectory_stays_close_to_float32_state(kw):
  """A noisy quadratic, 200 steps: the measured deviation is recorded in
  docs/numerics.md; the bound here is what the analysis allows (per-step
  step-size noise of a few percent, averaging out over steps)."""
  key = jax.random.PRNGKey(0)
  a = 10.0 ** jax.random.uniform(key, (512,), minval=-1, maxval=1)
  x0 = jnp.zeros(512)

  def run(tx):
    def step(carry, t):
      x, s = carry
      g = a * (x - 1.0) + 0.1 * jax.random.normal(jax.random.fold_in(key, t), x.shape)
      u, s = tx.update(g, s, x)
      return (optax.apply_updates(x, u), s), None

    return jax.lax.scan(step, (x0, tx.init(x0)), jnp.arange(200))[0][0]

  xf = run(optax_rms.rmsprop(1e-2, **kw))
  xq = run(optax_rms.rmsprop(1e-2, nu_quantization="8bit", **kw))
  moved = np.abs(np.asarray(xf - x0))
  dev = np.abs(np.asarray(xq - xf))
  assert np.all(np.isfinite(np.asarray(xq)))
  assert np.median(dev / moved) < 5e-3  # measured worst: 1.9e-3
  assert np.max(dev / moved) < 0.1  # measured worst: 3.6e-2


@pytest.mark.parametrize(
  "state",
  [
    dict(nu_quantization="8bit"),
    dict(nu_dtype="bfloat16", mu_dtype="bfloat16", momentum_dtype="bfloat16"),
  ],
  ids=["8bit-nu", "bfloat16-state"],
)
def test_digits_accuracy_matches_float32_state(state):
  """A real task: an MLP on scikit-learn's digits, same init and batches; with
  a smaller state the test accuracy is within 0.5 points of float32 state's
  (docs/numerics.md records the measured figures)."""
  datasets = pytest.importorskip("sklearn.datasets")
  x, y = datasets.load_digits(return_X_y=True)
  x = x / 16.0
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  xtr, ytr, xte, yte = x[:1347], y[:1347], x[1347:], y[1347:]

  def logits(p, xb):
    return jax.nn.relu(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

  def loss(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(logits(p, xb), yb).mean()

  def train(tx):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    p = {
      "w1": jax.random.normal(k1, (64, 128)) / 8,
      "b1": jnp.zeros(128),
      "w2": jax.random.normal(k2, (128, 10)) / np.sqrt(128),
      "b2": jnp.zeros(10),
    }
    s = tx.init(p)

    @jax.jit
    def step(p, s, xb, yb):
      u, s = tx.update(jax.grad(loss)(p, xb, yb), s, p)
      return optax.apply_updates(p, u), s

    rng = np.random.default_rng(0)
    for _ in range(30):
      idx = rng.permutation(len(xtr))
      for i in range(0, len(idx), 64):
        p, s = step(p, s, xtr[idx[i : i + 64]], ytr[idx[i : i + 64]])
    return float((logits(p, xte).argmax(-1) == yte).mean()), float(loss(p, xte, yte))

  # momentum at a smaller rate: its steps add up over ~1/(1-0.9) = 10 steps.
  for lr, kw in ((1e-3, {}), (1e-3, dict(centered=True)), (3e-4, dict(momentum=0.9))):
    acc_f, loss_f = train(optax_rms.rmsprop(lr, **kw))
    acc_q, loss_q = train(optax_rms.rmsprop(lr, **kw, **state))
    assert acc_f > 0.95
    # 0.5 points of the 450 test images = 2 images.
    assert abs(acc_q - acc_f) <= 0.005, (kw, acc_f, acc_q)
    assert abs(loss_q / loss_f - 1) <= 0.05, (kw, loss_f, loss_q)


def test_quantized_state_checks_and_validation():
  p = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="nu_quantization must be one of"):
    optax_rms.rmsprop(0.1, nu_quantization="4bit")
  with pytest.raises(ValueError, match="cannot be combined with nu_dtype"):
    optax_rms.rmsprop(0.1, nu_quantization="8bit", nu_dtype="bfloat16")
  q_state = optax_rms.rmsprop(0.1, nu_quantization="8bit").init(p)
  with pytest.raises(ValueError, match="'nu_scale' buffer"):
    optax_rms.rmsprop(0.1).update(p, q_state)
  f_state = optax_rms.rmsprop(0.1).init(p)
  with pytest.raises(ValueError, match="'nu_scale' buffer"):
    optax_rms.rmsprop(0.1, nu_quantization="8bit").update(p, f_state)


def test_quantized_eager_equals_jit_and_initial_scale():
  p = {"w": jax.random.normal(jax.random.PRNGKey(0), (40, 30))}
  tx = optax_rms.rmsprop(0.1, nu_quantization="8bit", initial_scale=1.0, momentum=0.9)
  s = tx.init(p)
  nu0 = _quantize.dequantize(s.nu["w"], s.nu_scale["w"])
  np.testing.assert_array_equal(np.asarray(nu0), np.ones((40, 30), np.float32))
  u1, s1 = tx.update(p, s, p)
  u2, s2 = jax.jit(tx.update)(p, s, p)
  np.testing.assert_array_equal(np.asarray(u1["w"]), np.asarray(u2["w"]))
  np.testing.assert_array_equal(np.asarray(s1.nu["w"]), np.asarray(s2.nu["w"]))
