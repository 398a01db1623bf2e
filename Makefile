.PHONY: setup demo test test-slow bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/gauntlet demo

test: setup
	.venv/bin/ruff check src
	.venv/bin/mypy src/gauntlet
	.venv/bin/python -m pytest -q

test-slow: setup
	.venv/bin/python -m pytest -q -m slow

bench: setup
	.venv/bin/python benchmarks/bench_speed.py
