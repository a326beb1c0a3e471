"""Benchmarks and data set generators, run from the repository root as modules
(`.venv/bin/python -m scripts.bench_sync`); `serve`, `test` and `setup.sh` are the README's commands."""
