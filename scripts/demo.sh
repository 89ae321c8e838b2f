#!/usr/bin/env bash
# The main job, end to end on the embedded chain: build a zoo model, register it, three nodes
# answer a request with commit-reveal, consensus finalizes, and a proof-backed result follows.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
aivm demo --out out "$@"
