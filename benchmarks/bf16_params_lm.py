"""The character-level LM of examples/train_lm.py with bfloat16 parameters.

Final validation loss of float32 parameters against bfloat16 parameters
with round-to-nearest, `optax_rms.kahan_summation` and
`optax_rms.stochastic_rounding` (issue 16), same initialisation, batches and
schedule. Writes benchmarks/RESULTS_bf16_params_lm.md.

  python benchmarks/bf16_params_lm.py [--steps 300] [--variant plain]
"""

import argparse
import datetime
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

ROWS = (
  ("float32 parameters", "float32", "nearest"),
  ("bfloat16, nearest", "bfloat16", "nearest"),
  ("bfloat16, Kahan", "bfloat16", "kahan"),
  ("bfloat16, stochastic", "bfloat16", "stochastic"),
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--variant", default="plain")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/RESULTS_bf16_params_lm.md")
  args = parser.parse_args()

  import jax
  import train_lm

  data = train_lm.load_data()
  rows = []
  for label, param_dtype, rounding in ROWS:
    start = time.perf_counter()
    result = train_lm.train(
      steps=args.steps,
      seed=args.seed,
      variant=args.variant,
      param_dtype=param_dtype,
      rounding=rounding,
      data=data,
      progress=False,
    )
    loss = result.val_loss
    rows.append((label, loss, time.perf_counter() - start))
    print(f"{label}: {loss:.4f} ({rows[-1][2]:.0f} s)", flush=True)
  ref = rows[0][1]
  lines = [
    "# The LM with bfloat16 parameters: nearest, Kahan, stochastic rounding",
    "",
    f"Measured {datetime.date.today()} by `benchmarks/bf16_params_lm.py "
    f"--steps {args.steps} --variant {args.variant} --seed {args.seed}` (jax "
    f"{jax.__version__}, {platform.machine()} CPU): examples/train_lm.py's "
    "default model (0.48M parameters, stdlib source), the optimizer's state "
    "in float32, the parameters stored as the row says; final validation "
    "loss (nats/byte).",
    "",
    "| parameters | final validation loss | vs float32 parameters |",
    "|---|---|---|",
  ]
  for label, loss, _ in rows:
    lines.append(f"| {label} | {loss:.4f} | {loss / ref - 1:+.2%} |")
  pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
