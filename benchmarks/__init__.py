"""Scripts that measure and write results (docs/ holds what they write); run from a checkout as
`python -m benchmarks.NAME ...`."""
