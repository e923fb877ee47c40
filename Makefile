.PHONY: test services generate bench

test:            ## start the peers, install into .venv, run every test
	scripts/test

services:        ## start the real peers (Mosquitto listeners, libcoap server)
	scripts/services up

generate:        ## regenerate completions/ and man/ from the command tree
	scripts/gen-completions
	scripts/gen-man

bench:           ## iotctl against the reference tools, side by side
	bench/run
