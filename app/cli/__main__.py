"""`python -m app.cli`: how `serve` starts its watcher child process."""

from app.cli import main

main()
