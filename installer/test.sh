#!/usr/bin/env bash
# Install what the tests need on a fresh machine, then run the checks and the tests.
#
#   installer/test.sh [PYTEST ARGS...]
#
# Idempotent: system packages and the virtual environment are only installed
# when missing or when pyproject.toml changed. Environment:
#   APPLIANCE_TEST_VENV  virtual environment to use (default .venv in the checkout)
#   APPLIANCE_SKIP_LINT  set to 1 to run only pytest
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${APPLIANCE_TEST_VENV:-$root/.venv}"

say() { printf 'test.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- system packages ---------------------------------------------------------
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
if ((${#need[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get; install them with your package manager"
    sudo_cmd=()
    [[ "$(id -u)" == 0 ]] || sudo_cmd=(sudo)
    say "installing system packages: ${need[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- python environment -------------------------------------------------------
python="${APPLIANCE_TEST_PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$python is older than 3.11"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
stamp="$venv/.appliance-test-deps"
want="$(sha256sum < pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    say "installing the package and its test extras into $venv (llama-cpp-python builds from source the first time: ~6 min on 2 cores)"
    "$venv/bin/python" -m pip install -q --upgrade pip
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$venv/bin/python" -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi

# --- checks and tests ---------------------------------------------------------
if [[ "${APPLIANCE_SKIP_LINT:-}" != 1 ]]; then
    say "ruff"; "$venv/bin/ruff" check appliance tests bench
    say "mypy"; "$venv/bin/mypy"
    say "import contracts"; "$venv/bin/lint-imports"
    say "shellcheck"; shellcheck installer/*.sh .ci/run
fi
say "pytest"
set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
    die "pytest collected no tests"
fi
if [[ $rc == 0 && $# == 0 ]]; then
    # Under -O every `assert` vanishes: the eval harness must not rely on one for control flow.
    say "pytest -O (the eval harness without asserts)"
    "$venv/bin/python" -O -m pytest -q -p no:cacheprovider tests/test_eval*.py tests/test_session.py || rc=$?
fi
exit $rc
