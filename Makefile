# Shortcuts; each target is a script in scripts/ that also runs on its own.
.PHONY: test demo bench recovery

test: ## the whole test suite, as CI runs it
	./scripts/test.sh

demo: ## the long-lived publisher, riding through broker restarts
	./scripts/demo.sh -restart-every 10s -duration 30s

bench: ## the benchmark suite and its comparison table (COUNT, BENCHTIME, BENCH, PAIRS, DUEL)
	./scripts/bench.sh

recovery: ## recovery time and memory while the broker is away; plots docs/recovery.svg
	go test ./benchmarks -count=1 -run TestRecovery -v -args -recovery.svg=$(CURDIR)/docs/recovery.svg
