"""bfloat16-parameter benchmarks: round to nearest, Kahan summation and
stochastic rounding against float32 parameters, on least squares
(``python -m benchmarks.bf16_params.least_squares``) and on the example's
character-level LM (``python -m benchmarks.bf16_params.lm``)."""
