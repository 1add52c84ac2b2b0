"""Studies: scripts that answered one question. Each says at its top what it
asks; run one with ``python -m benchmarks.studies.<name>``. Their findings
are in docs/performance_findings.md and docs/numerics.md."""
