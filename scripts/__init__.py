"""Benchmarks and data set generators, run from the repository root as modules
(`.venv/bin/python -m scripts.bench_sync`); `serve` and `test` are the README's commands, `setup.sh` the
set-up both run."""
