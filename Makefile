# Herald's developer commands. `make test` is the README's test command.
.PHONY: test lint fmt build fuzz

test:
	./scripts/test

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	go vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

build:
	mkdir -p bin
	go build -o bin/ ./cmd/...

# Runs every fuzz target for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$(go list ./...); do \
		for t in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			go test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done
