"""The character-level LM of examples/train_lm.py with bfloat16 parameters.

Final validation loss of float32 parameters against bfloat16 parameters
with round-to-nearest, `optax_rms.kahan_summation` and
`optax_rms.stochastic_rounding` (issue 16), same initialisation, batches and
schedule. Writes benchmarks/results/<machine>/bf16_params_lm.md.

  python -m benchmarks.bf16_params.lm [--steps 300] [--variant plain] [--seeds 3]

Each seed trains every row from the same initialisation and batches; the
table gives each row's loss per seed, its mean, and the mean of its paired
differences from float32 parameters (seed by seed).
"""

import argparse
import datetime
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))

from ..harness import machine_info, results_path  # noqa: E402

ROWS = (
  ("float32 parameters", "float32", "nearest"),
  ("bfloat16, nearest", "bfloat16", "nearest"),
  ("bfloat16, Kahan", "bfloat16", "kahan"),
  ("bfloat16, stochastic", "bfloat16", "stochastic"),
)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.bf16_params.lm", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--variant", default="plain")
  parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
  parser.add_argument(
    "--out", help="default: benchmarks/results/<machine>/bf16_params_lm.md"
  )
  parser.add_argument("--tiny", action="store_true", help="a tiny LM (smoke test)")
  args = parser.parse_args(argv)

  import jax
  import train_lm

  data = train_lm.load_data()
  losses: dict[str, list[float]] = {label: [] for label, _, _ in ROWS}
  for seed in range(args.seeds):
    for label, param_dtype, rounding in ROWS:
      start = time.perf_counter()
      result = train_lm.train(
        steps=args.steps,
        seed=seed,
        variant=args.variant,
        param_dtype=param_dtype,
        rounding=rounding,
        data=data,
        progress=False,
        **(train_lm.TINY if args.tiny else {}),
      )
      losses[label].append(result.val_loss)
      took = time.perf_counter() - start
      print(f"seed {seed}, {label}: {result.val_loss:.4f} ({took:.0f} s)", flush=True)
  ref = losses[ROWS[0][0]]
  model = "tiny model (a smoke test" if args.tiny else "default model (0.48M parameters"
  lines = [
    "# The LM with bfloat16 parameters: nearest, Kahan, stochastic rounding",
    "",
    f"Measured {datetime.date.today()} by `python -m benchmarks.bf16_params.lm "
    f"--steps {args.steps} --variant {args.variant} --seeds {args.seeds}"
    f"{' --tiny' if args.tiny else ''}` (jax {jax.__version__}, "
    f"{platform.machine()} CPU): examples/train_lm.py's "
    f"{model}, stdlib source), the optimizer's state "
    "in float32, the parameters stored as the row says; final validation "
    "loss (nats/byte) per seed, its mean, and the mean of the row's "
    "seed-by-seed differences from float32 parameters (with their range).",
    "",
    "| parameters | final validation loss per seed | mean | vs float32 parameters "
    "(mean of paired differences; range) |",
    "|---|---|---|---|",
  ]
  for label, values in losses.items():
    diffs = [v / r - 1 for v, r in zip(values, ref, strict=True)]
    per_seed = " ".join(f"{v:.4f}" for v in values)
    mean = sum(values) / len(values)
    rel = sum(diffs) / len(diffs)
    lines.append(
      f"| {label} | {per_seed} | {mean:.4f} | {rel:+.2%} "
      f"({min(diffs):+.2%} to {max(diffs):+.2%}) |"
    )
  out = args.out or results_path(machine_info(), "bf16_params_lm.md")
  pathlib.Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
