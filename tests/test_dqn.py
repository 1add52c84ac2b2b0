"""Smoke tests of examples/train_dqn.py (DQN on gymnax's CartPole with the
Nature DQN's centered RMSprop, from optax_rms or as TF1 ran it)."""

import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip(
  "gymnax",
  reason="examples/train_dqn.py needs gymnax (and six): pip install -e '.[rl]'",
)

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples/train_dqn.py"


@pytest.fixture(scope="module")
def dqn():
  return runpy.run_path(str(EXAMPLE))


def _grads(dqn, key):
  """A small Q-network's parameters and three random gradients for it."""
  params = dqn["init_mlp"](jax.random.key(0), (4, 8, 8, 2))
  keys = jax.random.split(key, 3)
  return params, [optax.tree.random_like(k, params) for k in keys]


def test_optax_rms_variant_is_optax_centered_rmsprop(dqn):
  """The example's optimizer is a one-line swap for the optax call a JAX DQN
  makes: three steps give the same parameters, bit for bit (both jitted)."""
  params, grads = _grads(dqn, jax.random.key(1))
  ours = dqn["make_optimizer"]("optax_rms", 1e-3)
  ref = optax.rmsprop(1e-3, decay=0.95, eps=0.01, centered=True)
  ends = []
  for tx in (ours, ref):
    p, state = params, tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
      updates, state = step(g, state, p)
      p = optax.apply_updates(p, updates)
    ends.append(jax.tree.leaves(p))
  for a, b in zip(*ends, strict=True):
    np.testing.assert_array_equal(a, b)


def test_the_variants_differ_in_the_accumulators_start_only(dqn):
  params, grads = _grads(dqn, jax.random.key(2))
  plain, tf1 = (dqn["make_optimizer"](v, 1e-3) for v in ("optax_rms", "tf1"))
  s0, s1 = plain.init(params), tf1.init(params)
  for a, b in zip(jax.tree.leaves(s0.nu), jax.tree.leaves(s1.nu), strict=True):
    assert (a == 0).all() and (b == 1).all()
  for a, b in zip(jax.tree.leaves(s0.mu), jax.tree.leaves(s1.mu), strict=True):
    assert (a == 0).all() and (b == 0).all()
  # Starting optax_rms's state where TF1's starts reproduces TF1's step.
  shifted = s0._replace(nu=s1.nu)
  u0, _ = plain.update(grads[0], shifted, params)
  u1, _ = tf1.update(grads[0], s1, params)
  for a, b in zip(jax.tree.leaves(u0), jax.tree.leaves(u1), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-6)  # float32, a few ulps
  with pytest.raises(ValueError, match="variant must be one of"):
    dqn["make_optimizer"]("adam", 1e-3)


def test_replay_buffer_is_a_ring(dqn):
  buffer = dqn["buffer_init"](8, 4)
  for i in range(3):  # 12 transitions of 4 environments into 8 slots
    obs = jnp.full((4, 4), float(i))
    action = jnp.full(4, i, jnp.int32)
    buffer = dqn["buffer_add"](buffer, obs, action, obs[:, 0], obs, obs[:, 0] > 1)
  assert int(buffer.size) == 8 and int(buffer.pos) == 4
  # The third write overwrote the first four slots.
  np.testing.assert_array_equal(buffer.action, [2] * 4 + [1] * 4)
  np.testing.assert_array_equal(buffer.terminated, [1.0] * 4 + [0.0] * 4)
  batch = dqn["buffer_sample"](buffer, jax.random.key(0), 16)
  assert batch.obs.shape == (16, 4)
  np.testing.assert_array_equal(batch.obs[:, 0], batch.action)  # rows kept whole


def test_td_target_bootstraps_unless_terminated(dqn):
  params = dqn["init_mlp"](jax.random.key(0), (4, 8, 2))
  target = dqn["init_mlp"](jax.random.key(1), (4, 8, 2))
  obs, next_obs = jax.random.normal(jax.random.key(2), (2, 6, 4))
  buffer = dqn["Buffer"](
    obs=obs,
    action=jnp.array([0, 1, 0, 1, 0, 1]),
    reward=jnp.ones(6),
    next_obs=next_obs,
    terminated=jnp.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0]),
    pos=jnp.zeros((), jnp.int32),
    size=jnp.array(6),
  )
  q = np.asarray(dqn["q_values"](params, obs))[np.arange(6), buffer.action]
  next_q = np.asarray(dqn["q_values"](target, next_obs)).max(axis=-1)
  y = 1.0 + 0.9 * (1.0 - np.asarray(buffer.terminated)) * next_q
  expected = optax.huber_loss(q, y).mean()
  loss = dqn["td_loss"](params, target, buffer, 0.9)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)  # float32 rounding


def test_check_config_names_the_field(dqn):
  cfg = dqn["Config"]()
  with pytest.raises(ValueError, match="buffer_size must be a multiple of num_envs"):
    dqn["check_config"](cfg._replace(buffer_size=10_001))
  with pytest.raises(ValueError, match="learning_starts must lie in"):
    dqn["check_config"](cfg._replace(learning_starts=20_000))
  with pytest.raises(ValueError, match="steps must be a multiple of chunk"):
    dqn["check_config"](cfg._replace(steps=750))


def test_tiny_run_end_to_end(dqn, tmp_path, capsys):
  """400 steps of 4 environments for 2 seeds: the first update comes once
  1000 transitions are stored (step 250), then one per step."""
  result = dqn["main"](
    ["--variant", "tf1", "--steps", "400", "--chunk", "200", "--seeds", "2"]
    + ["--out", str(tmp_path)]
  )  # fmt: skip
  cfg = result.config
  assert result.done.shape == result.returns.shape == (2, 400, cfg.num_envs)
  updates = 400 - cfg.learning_starts // cfg.num_envs + 1
  np.testing.assert_array_equal(result.opt_state.count, [updates, updates])
  for seed in range(2):
    ends, returns = dqn["episodes"](result, seed)
    assert len(returns) > 20  # mostly random play: episodes of ~20 steps
    assert (returns >= 1).all() and (returns <= 500).all()
    assert (returns == np.round(returns)).all()  # one point per step
    assert (np.diff(ends) >= 0).all() and ends[-1] <= 400 * cfg.num_envs
  assert ((result.final_return >= 1) & (result.final_return <= 500)).all()
  out = capsys.readouterr().out
  assert f"mean final return: {result.final_return.mean():.1f} | " in out
  assert "of 2 seeds took off; 1600 environment steps each" in out
  assert (tmp_path / dqn["PLOT_NAME"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onset_is_where_20_episodes_first_average_the_level(dqn):
  """One environment, an episode ending every other step: 25 of return 50,
  then 25 of 150. Reference: the plain loop over windows of 20 episodes."""
  cfg = dqn["Config"](num_envs=1)
  done = np.zeros((1, 100, 1), bool)
  done[0, ::2, 0] = True
  per_episode = np.where(np.arange(50) < 25, 50.0, 150.0)
  returns = np.zeros((1, 100, 1))
  returns[0, ::2, 0] = per_episode
  result = dqn["TrainResult"](None, None, done, returns, np.zeros(1), cfg)
  ends = np.arange(0, 100, 2) + 1  # environment steps when each episode ended
  first = next(k for k in range(19, 50) if per_episode[k - 19 : k + 1].mean() >= 100)
  assert dqn["onset"](result, 0, 100.0) == ends[first]
  assert np.isnan(dqn["onset"](result, 0, 151.0))
