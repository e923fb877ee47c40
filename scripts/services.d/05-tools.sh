# shellcheck shell=bash
# Sourced by scripts/services: defines up_tools, down_tools and status_tools.
# Not a peer: the command-line tools the tests run (groff lints the man pages, jq runs
# the README's examples, man-db's `man -w` finds the pages after an install, tmux
# drives the full-screen `watch` view, headless chromium loads `coap proxy`'s page).

TOOLS_PACKAGES=(groff-base man-db jq tmux chromium)

up_tools() {
    ensure_packages "${TOOLS_PACKAGES[@]}"
    status_tools
}

down_tools() { :; }

status_tools() {
    local missing=() t
    for t in groff man jq tmux chromium; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if ((${#missing[@]})); then
        echo "tools: missing ${missing[*]}  (scripts/services up tools installs ${TOOLS_PACKAGES[*]})"
        return 1
    fi
    echo "tools: ok   groff, man, jq, tmux, chromium"
}
