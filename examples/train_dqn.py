"""DQN on CartPole (gymnax, pure JAX) with the Nature DQN's centered RMSprop.

Run: pip install -e ".[rl]"; python examples/train_dqn.py
It trains one agent per seed (``--seeds``, run side by side under
``jax.vmap``) for 100k environment steps (under 30 s for 3 seeds on 2 CPU
cores), shows a progress bar, prints each seed's final return (the mean of 16
greedy episodes; 500 is CartPole-v1's ceiling) and plots the episode returns
against environment steps to runs/train_dqn/<variant>/train_dqn.png (``--out``
sets the folder).

The whole loop is jitted: ``lax.scan`` over steps, each of which picks an
epsilon-greedy action in every environment (``jax.vmap`` over 4 of gymnax's
CartPole-v1), writes the transitions into a replay buffer of plain arrays,
samples a batch from it, takes one RMSprop step on the Huber TD loss and, every
``target_every`` steps, copies the parameters into the target network. Python
only calls the jitted scan once per ``chunk`` steps, to move the progress bar.

The optimizer: the Nature DQN (Mnih et al. 2015, Extended Data Table 1) trains
with RMSProp at learning rate 0.00025, "gradient momentum" 0.95, "squared
gradient momentum" 0.95 and "min squared gradient" 0.01. DeepMind's released
code (``NeuralQLearner.lua``) shows what these are: no momentum at all, but
the centered RMSprop of Graves (2013): running means ``g`` of the gradient and
``g2`` of its square, both with decay 0.95 and both starting at 0, and the
step ``lr * grad / sqrt(g2 - g**2 + 0.01)``, eps inside the square root (the
TD error clipped to [-1, 1] there is the Huber loss here). So the table's two
"momentums" are the two decays, and the faithful port is::

  optax_rms.rmsprop(2.5e-4, decay=0.95, eps=0.01, centered=True)

This example keeps decay, eps and the centering but takes a learning rate of
1e-3 (``--learning-rate``): the small MLP's gradients are small against the
eps of 0.01 inside the square root, so its steps are small: at 2.5e-4 three
seeds ended 100k steps with greedy returns of 9 to 23; at 1e-3 ten seeds end
between 55 and 400 (mean 152; DQN on CartPole is famously unstable).

``--variant`` switches to the same hyperparameters as TensorFlow 1 ran them
(``tf.compat.v1.train.RMSPropOptimizer(2.5e-4, decay=0.95, momentum=0.0,
epsilon=..., centered=True)``, the optimizer of Dopamine's TF DQN, which uses
epsilon 1e-5)::

  optax_rms  optax_rms.rmsprop(lr, decay=decay, eps=0.01, centered=True)
  tf1        optax_rms.compat.tf1(lr, decay=decay, momentum=0.0, epsilon=0.01,
                                  centered=True)

with ``decay`` 0.95 (``--decay``).

The only difference is where the mean square starts: 0 (the Lua code, optax)
or 1 (TF1). docs/porting.md ("RL recipes from TF1") says when it matters and
what it changed here.

Simplifications against the paper, for a 4-number observation: an MLP (two
hidden layers of 64) instead of the convolutional network, a replay buffer
of 10k transitions instead of 1M, a target copy every 500 updates instead of
10k, exploration decaying over the first 30% of the run instead of 1M frames,
and one update per step of the 4 environments (the paper: one per 4 frames).
Time limits (500 steps) are truncations: their transitions bootstrap from the
final observation, as gymnax reports it.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import optax_rms

# variant -> optimizer for (learning rate, decay): the same hyperparameters,
# the mean square starting at 0 (optax_rms, as optax and the Lua DQN) or at 1
# (TF1).
VARIANTS: dict[str, Callable[[float, float], optax.GradientTransformation]] = {
  "optax_rms": lambda lr, decay: optax_rms.rmsprop(
    lr, decay=decay, eps=0.01, centered=True
  ),
  "tf1": lambda lr, decay: optax_rms.compat.tf1(
    lr, decay=decay, momentum=0.0, epsilon=0.01, centered=True
  ),
}
RUNS = pathlib.Path("runs/train_dqn")  # --out defaults to RUNS / variant
PLOT_NAME = "train_dqn.png"


class Config(NamedTuple):
  """One run's hyperparameters (defaults: the full run of the docstring)."""

  steps: int = 25_000  # loop steps; each: num_envs env steps and one update
  num_envs: int = 4
  buffer_size: int = 10_000  # transitions (a multiple of num_envs)
  batch_size: int = 32
  gamma: float = 0.99
  learning_starts: int = 1_000  # transitions stored before the first update
  target_every: int = 500  # steps between copies into the target network
  eps_start: float = 1.0
  eps_end: float = 0.05
  explore_fraction: float = 0.3  # of the steps, to go from eps_start to eps_end
  learning_rate: float = 1e-3  # the paper's 2.5e-4 is too slow here (docstring)
  decay: float = 0.95  # RMSprop's, the paper's (docs/porting.md also ran 0.999)
  hidden: int = 64
  chunk: int = 500  # steps per jitted call (one tick of the progress bar)
  eval_episodes: int = 16


DEFAULT = Config()


def check_config(cfg: Config) -> None:
  """Raises ValueError naming the first field out of range."""
  counts = ("steps", "num_envs", "buffer_size", "batch_size", "target_every")
  for name in (*counts, "chunk", "hidden", "eval_episodes"):
    if getattr(cfg, name) < 1:
      raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
  if not 0 < cfg.explore_fraction <= 1:
    raise ValueError(
      f"explore_fraction must lie in (0, 1], got {cfg.explore_fraction}."
    )
  if cfg.buffer_size % cfg.num_envs:
    raise ValueError(
      f"buffer_size must be a multiple of num_envs={cfg.num_envs}, got "
      f"{cfg.buffer_size}."
    )
  if not cfg.batch_size <= cfg.learning_starts <= cfg.buffer_size:
    raise ValueError(
      f"learning_starts must lie in [batch_size={cfg.batch_size}, "
      f"buffer_size={cfg.buffer_size}], got {cfg.learning_starts}."
    )
  if cfg.steps % cfg.chunk:
    raise ValueError(f"steps must be a multiple of chunk={cfg.chunk}, got {cfg.steps}.")


def make_optimizer(
  variant: str, learning_rate: float, decay: float = 0.95
) -> optax.GradientTransformation:
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
  return VARIANTS[variant](learning_rate, decay)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", choices=list(VARIANTS), default="optax_rms")
  parser.add_argument(
    "--steps",
    type=int,
    default=DEFAULT.steps,
    help=f"loop steps, a multiple of --chunk (default {DEFAULT.steps}: "
    f"{DEFAULT.steps * DEFAULT.num_envs} environment steps)",
  )
  parser.add_argument("--chunk", type=int, default=DEFAULT.chunk)
  parser.add_argument("--learning-rate", type=float, default=DEFAULT.learning_rate)
  parser.add_argument(
    "--decay", type=float, default=DEFAULT.decay, help="RMSprop's (default 0.95)"
  )
  parser.add_argument("--seed", type=int, default=0, help="the first seed")
  parser.add_argument(
    "--seeds", type=int, default=3, help="agents, seeds seed.. (default 3)"
  )
  parser.add_argument(
    "--out", type=pathlib.Path, default=None, help=f"default {RUNS}/<variant>"
  )
  return parser


ENV, ENV_PARAMS = gymnax.make("CartPole-v1")

# --------------------------------------------------------------- the Q-network


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
  """Weights (LeCun normal) and zero biases of an MLP with layer ``sizes``."""
  keys = jax.random.split(key, len(sizes) - 1)
  init = jax.nn.initializers.lecun_normal()
  return [
    {"w": init(k, (m, n), jnp.float32), "b": jnp.zeros(n, jnp.float32)}
    for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def q_values(params: list[dict[str, jax.Array]], obs: jax.Array) -> jax.Array:
  """Float[obs, "... 4"] -> Float[q, "... actions"]."""
  x = obs
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


# -------------------------------------------------------------- replay buffer


class Buffer(NamedTuple):
  obs: jax.Array  # (capacity, 4)
  action: jax.Array  # (capacity,) int32
  reward: jax.Array  # (capacity,)
  next_obs: jax.Array  # (capacity, 4): the final observation at an episode's end
  terminated: jax.Array  # (capacity,) 1.0 where the pole fell (no bootstrap)
  pos: jax.Array  # where the next transitions go
  size: jax.Array  # transitions stored (at most capacity)


def buffer_init(capacity: int, obs_dim: int) -> Buffer:
  return Buffer(
    obs=jnp.zeros((capacity, obs_dim)),
    action=jnp.zeros(capacity, jnp.int32),
    reward=jnp.zeros(capacity),
    next_obs=jnp.zeros((capacity, obs_dim)),
    terminated=jnp.zeros(capacity),
    pos=jnp.zeros((), jnp.int32),
    size=jnp.zeros((), jnp.int32),
  )


def buffer_add(buffer: Buffer, *transition: jax.Array) -> Buffer:
  """Writes one transition per environment at ``pos`` (a ring buffer; its
  capacity is a multiple of the environments, so a write never wraps)."""
  n = transition[0].shape[0]
  capacity = buffer.obs.shape[0]
  arrays = [
    jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), buffer.pos, 0)
    for old, new in zip(buffer[:5], transition, strict=True)
  ]
  return Buffer(
    *arrays, (buffer.pos + n) % capacity, jnp.minimum(buffer.size + n, capacity)
  )


def buffer_sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Buffer:
  idx = jax.random.randint(key, (batch_size,), 0, buffer.size)
  return buffer._replace(**{f: getattr(buffer, f)[idx] for f in Buffer._fields[:5]})


# ------------------------------------------------------------------- training


class Carry(NamedTuple):
  params: Any
  target: Any  # the target network's parameters
  opt_state: Any
  buffer: Buffer
  obs: jax.Array  # (num_envs, 4)
  env_state: Any
  ep_return: jax.Array  # (num_envs,) the running episodes' returns so far
  step: jax.Array
  key: jax.Array


def td_loss(params, target, batch: Buffer, gamma: float) -> jax.Array:
  """Huber loss of Q(s, a) against r + gamma * max_a' Q_target(s', a')."""
  q = jnp.take_along_axis(q_values(params, batch.obs), batch.action[:, None], 1)
  next_q = q_values(target, batch.next_obs).max(axis=-1)
  y = batch.reward + gamma * (1.0 - batch.terminated) * next_q
  return optax.huber_loss(q[:, 0], jax.lax.stop_gradient(y)).mean()


def epsilon(cfg: Config, step: jax.Array) -> jax.Array:
  frac = jnp.clip(step / (cfg.explore_fraction * cfg.steps), 0.0, 1.0)
  return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)


def init_carry(cfg: Config, tx, key: jax.Array) -> Carry:
  k_net, k_env, key = jax.random.split(key, 3)
  params = init_mlp(k_net, (4, cfg.hidden, cfg.hidden, ENV.num_actions))
  obs, env_state = jax.vmap(ENV.reset, in_axes=(0, None))(
    jax.random.split(k_env, cfg.num_envs), ENV_PARAMS
  )
  return Carry(
    params=params,
    target=params,
    opt_state=tx.init(params),
    buffer=buffer_init(cfg.buffer_size, obs.shape[-1]),
    obs=obs,
    env_state=env_state,
    ep_return=jnp.zeros(cfg.num_envs),
    step=jnp.zeros((), jnp.int32),
    key=key,
  )


def train_step(cfg: Config, tx, c: Carry, _) -> tuple[Carry, tuple[jax.Array, ...]]:
  """Acts in every environment, stores the transitions, learns from a batch.

  Returns the new carry and, per environment, (done, the return of the
  episode that ended here, 0 where none did).
  """
  key, k_explore, k_random, k_env, k_batch = jax.random.split(c.key, 5)
  greedy = q_values(c.params, c.obs).argmax(axis=-1)
  random = jax.random.randint(k_random, greedy.shape, 0, ENV.num_actions)
  explore = jax.random.uniform(k_explore, greedy.shape) < epsilon(cfg, c.step)
  action = jnp.where(explore, random, greedy)
  obs, env_state, reward, terminated, truncated, info = jax.vmap(
    ENV.step, in_axes=(0, 0, 0, None)
  )(jax.random.split(k_env, cfg.num_envs), c.env_state, action, ENV_PARAMS)
  buffer = buffer_add(
    c.buffer, c.obs, action, reward, info["final_observation"], terminated
  )
  done = terminated | truncated
  ep_return = c.ep_return + reward

  def learn(params, opt_state):
    batch = buffer_sample(buffer, k_batch, cfg.batch_size)
    grads = jax.grad(td_loss)(params, c.target, batch, cfg.gamma)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.lax.cond(
    buffer.size >= cfg.learning_starts,
    learn,
    lambda params, opt_state: (params, opt_state),
    c.params,
    c.opt_state,
  )
  sync = (c.step + 1) % cfg.target_every == 0
  target = jax.tree.map(lambda p, t: jnp.where(sync, p, t), params, c.target)
  carry = Carry(
    params=params,
    target=target,
    opt_state=opt_state,
    buffer=buffer,
    obs=obs,
    env_state=env_state,
    ep_return=jnp.where(done, 0.0, ep_return),
    step=c.step + 1,
    key=key,
  )
  return carry, (done, jnp.where(done, ep_return, 0.0))


def greedy_return(cfg: Config, params, key: jax.Array) -> jax.Array:
  """Mean return of ``cfg.eval_episodes`` greedy episodes (at most 500 steps)."""
  steps = ENV_PARAMS.max_steps_in_episode

  def episode(key):
    k_reset, k_steps = jax.random.split(key)
    obs, state = ENV.reset(k_reset, ENV_PARAMS)

    def step(carry, k):
      obs, state, alive, total = carry
      action = q_values(params, obs).argmax()
      obs, state, reward, terminated, truncated, _ = ENV.step(
        k, state, action, ENV_PARAMS
      )
      total = total + alive * reward
      alive = alive * (1.0 - (terminated | truncated))
      return (obs, state, alive, total), None

    carry = (obs, state, jnp.ones(()), jnp.zeros(()))
    carry, _ = jax.lax.scan(step, carry, jax.random.split(k_steps, steps))
    return carry[-1]

  return jax.vmap(episode)(jax.random.split(key, cfg.eval_episodes)).mean()


class TrainResult(NamedTuple):
  params: Any  # per seed (leading axis)
  opt_state: Any  # per seed
  done: np.ndarray  # (seeds, steps, num_envs) bool: an episode ended there
  returns: np.ndarray  # (seeds, steps, num_envs): its return where it did
  final_return: np.ndarray  # (seeds,) greedy evaluation after training
  config: Config


def train(
  cfg: Config = DEFAULT,
  variant: str = "optax_rms",
  seeds: Sequence[int] = (0, 1, 2),
  progress: bool = True,
) -> TrainResult:
  """Trains one DQN agent per seed, all at once (``jax.vmap`` over seeds)."""
  check_config(cfg)
  if not seeds:
    raise ValueError("seeds must name at least one seed, got none.")
  tx = make_optimizer(variant, cfg.learning_rate, cfg.decay)
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  carry = jax.jit(jax.vmap(functools.partial(init_carry, cfg, tx)))(keys)

  @jax.jit
  @jax.vmap
  def run_chunk(c: Carry):
    return jax.lax.scan(
      functools.partial(train_step, cfg, tx), c, None, length=cfg.chunk
    )

  done, returns = [], []
  with tqdm(total=cfg.steps, desc=f"DQN {variant}", disable=not progress) as bar:
    for _ in range(cfg.steps // cfg.chunk):
      carry, (d, r) = run_chunk(carry)
      done.append(np.asarray(d))
      returns.append(np.asarray(r))
      ended = done[-1].sum()
      mean = returns[-1].sum() / ended if ended else float("nan")
      bar.set_postfix(episode_return=f"{mean:.1f}", refresh=False)
      bar.update(cfg.chunk)
  eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  final = jax.jit(jax.vmap(functools.partial(greedy_return, cfg)))(
    carry.params, eval_keys
  )
  return TrainResult(
    params=carry.params,
    opt_state=carry.opt_state,
    done=np.concatenate(done, axis=1),
    returns=np.concatenate(returns, axis=1),
    final_return=np.asarray(final),
    config=cfg,
  )


def episodes(result: TrainResult, seed_index: int) -> tuple[np.ndarray, np.ndarray]:
  """(environment step at which each episode ended, its return), in order."""
  step, env = np.nonzero(result.done[seed_index])
  env_steps = (step + 1) * result.config.num_envs
  return env_steps, result.returns[seed_index][step, env]


def late_return(result: TrainResult, seed_index: int, fraction: float = 0.1) -> float:
  """Mean return of the training episodes that ended in the last ``fraction``
  of the run (exploring with eps_end)."""
  ends, returns = episodes(result, seed_index)
  total = result.config.steps * result.config.num_envs
  late = returns[ends > (1 - fraction) * total]
  return float(late.mean()) if len(late) else float("nan")


def smoothed_returns(
  result: TrainResult, seed_index: int, window: int = 20
) -> tuple[np.ndarray, np.ndarray]:
  """(environment step, mean return of the ``window`` episodes ending there)."""
  ends, returns = episodes(result, seed_index)
  window = min(window, len(returns))
  if not window:
    return ends, returns
  smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
  return ends[window - 1 :], smooth


def onset(result: TrainResult, seed_index: int, level: float = 100.0) -> float:
  """Environment steps until 20 consecutive episodes first averaged
  ``level`` (NaN if they never did): when learning took off."""
  x, smooth = smoothed_returns(result, seed_index)
  above = np.nonzero(smooth >= level)[0]
  return float(x[above[0]]) if len(above) else float("nan")


def plot_returns(
  result: TrainResult, seeds: Sequence[int], path: pathlib.Path, title: str
) -> None:
  """Writes each seed's episode returns (mean of 20 episodes) to ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
  for i, seed in enumerate(seeds):
    ax.plot(*smoothed_returns(result, i), label=f"seed {seed}")
  ax.set_xlabel("environment steps")
  ax.set_ylabel("episode return (mean of 20)")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> TrainResult:
  """Parses ``argv`` (None: the command line) and runs the example."""
  return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> TrainResult:
  """Trains as ``args`` ask, prints each seed's final return, writes the plot."""
  cfg = Config(
    steps=args.steps,
    chunk=args.chunk,
    learning_rate=args.learning_rate,
    decay=args.decay,
  )
  seeds = list(range(args.seed, args.seed + args.seeds))
  start = time.perf_counter()
  result = train(cfg, args.variant, seeds)
  seconds = time.perf_counter() - start
  print(
    f"variant {args.variant}, decay {cfg.decay:g}, per seed: final return (mean "
    f"of {cfg.eval_episodes} greedy episodes) | training return, last 10% of "
    "steps | environment steps until 20 episodes averaged 100"
  )
  late = [late_return(result, i) for i in range(len(seeds))]
  took_off = [onset(result, i) for i in range(len(seeds))]
  for i, seed in enumerate(seeds):
    r, t, o = result.final_return[i], late[i], took_off[i]
    print(f"  seed {seed}: {r:6.1f} | {t:6.1f} | {o:8.0f}")
  reached = int(np.sum(~np.isnan(took_off)))
  mean_onset = f"{np.nanmean(took_off):.0f}" if reached else "never"
  print(
    f"mean final return: {result.final_return.mean():.1f} | {np.mean(late):.1f} "
    f"| {mean_onset} ({reached} of {len(seeds)} seeds took off; "
    f"{cfg.steps * cfg.num_envs} environment steps each, {seconds:.1f} s)"
  )
  out = RUNS / args.variant if args.out is None else args.out
  plot = out / PLOT_NAME
  plot_returns(result, seeds, plot, f"CartPole-v1, DQN, {args.variant} RMSprop")
  print(f"episode returns: {plot}")
  return result


if __name__ == "__main__":
  main()
