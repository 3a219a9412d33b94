#!/usr/bin/env bash
# Set up the appliance on this machine and start it.
#
#   installer/install.sh [--profile auto|NAME] [--dry-run] [--prefix DIR] [--gpu auto|cuda|metal|cpu] [--no-run]
#   BUNDLE/install.sh [--bundle BUNDLE] [--bundle-digest SHA256] [--prefix DIR] [--no-run]     (air-gapped)
#
# Steps: OS packages (bubblewrap, a compiler, cmake; apt-get, dnf, pacman or brew),
# a virtual environment, the appliance with llama-cpp-python built for this
# hardware (CMAKE_ARGS: CUDA, Metal, or a portable CPU build), then
# `appliance install` (weights, SearXNG, the sandbox's Python, config) and the
# first start of the terminal UI. From a bundle: checksums first, then the same
# with no network at all.
#
# Environment:
#   APPLIANCE_INSTALL_PYTHON  interpreter for the venv (default python3; needs >= 3.11)
#   APPLIANCE_PREFIX       where the venv goes (default ${XDG_DATA_HOME:-~/.local/share}/appliance)
#   CMAKE_ARGS             llama.cpp build flags; when set, used as given
#   APPLIANCE_TUNE_NATIVE  1 = build llama.cpp for this CPU only (-DGGML_NATIVE=ON; faster, not portable)
#   APPLIANCE_HOME         put config, models and history under one directory (see docs/install.md)
# Exit status: 0 on success, 1 on any failure (with the reason and the fix), 2 on bad usage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dry_run=0
profile=""
bundle=""
bundle_digest=""
gpu="auto"
run_after=1
prefix="${APPLIANCE_PREFIX:-${XDG_DATA_HOME:-$HOME/.local/share}/appliance}"
python="${APPLIANCE_INSTALL_PYTHON:-python3}"

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "error: $1"; [[ -n "${2:-}" ]] && say "fix: $2"; exit 1; }
usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

# Run a command, or show it in a dry run. Every failure stops the script with its command line.
run() {
    if ((dry_run)); then
        printf 'would run:' >&2
        printf ' %q' "$@" >&2
        printf '\n' >&2
        return 0
    fi
    "$@" || die "command failed (exit $?): $*" "${fix_hint:-read the messages above}"
}

while (($#)); do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --profile) profile="${2:?--profile needs a name}"; shift ;;
        --prefix) prefix="${2:?--prefix needs a directory}"; shift ;;
        --bundle) bundle="${2:?--bundle needs a directory}"; shift ;;
        --bundle-digest) bundle_digest="${2:?--bundle-digest needs a sha256}"; shift ;;
        --gpu) gpu="${2:?--gpu needs auto, cuda, metal or cpu}"; shift ;;
        --no-run) run_after=0 ;;
        -h|--help) usage 0 ;;
        *) say "unknown option: $1"; usage 2 >&2 ;;
    esac
    shift
done
case "$gpu" in auto|cuda|metal|cpu) ;; *) say "--gpu must be auto, cuda, metal or cpu"; exit 2 ;; esac
if [[ -z "$bundle" && -f "$here/manifest.json" ]]; then
    bundle="$here"   # this script is the copy inside a bundle
fi
if [[ -n "$bundle" ]]; then
    [[ -f "$bundle/manifest.json" ]] || die "$bundle is not an appliance bundle (no manifest.json)" \
        "pass the directory made by \`appliance bundle create\`"
    bundle="$(cd "$bundle" && pwd)"
fi

# --- what this machine is ---------------------------------------------------------
os="$(uname -s)"
arch="$(uname -m)"
pkg=""
for candidate in apt-get dnf pacman brew; do
    if command -v "$candidate" >/dev/null 2>&1; then pkg="$candidate"; break; fi
done
if [[ "$gpu" == auto ]]; then
    if [[ "$os" == Darwin && "$arch" == arm64 ]]; then
        gpu=metal
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        gpu=cuda
    else
        gpu=cpu
    fi
fi
if [[ -n "${CMAKE_ARGS:-}" ]]; then
    cmake_args="$CMAKE_ARGS"
else
    case "$gpu" in
        cuda) cmake_args="-DGGML_CUDA=on" ;;
        metal) cmake_args="-DGGML_METAL=on" ;;
        *) if [[ "${APPLIANCE_TUNE_NATIVE:-}" == 1 ]]; then cmake_args="-DGGML_NATIVE=ON"; else cmake_args="-DGGML_NATIVE=OFF"; fi ;;
    esac
fi
say "system: $os $arch, package manager: ${pkg:-none}, accelerator: $gpu, CMAKE_ARGS=$cmake_args"
[[ -n "$bundle" ]] && say "installing from the bundle $bundle (no network)"

# --- OS packages -----------------------------------------------------------------
missing=()
if [[ "$os" == Linux ]]; then
    command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
fi
if [[ -z "$bundle" ]]; then   # a bundle carries llama-cpp-python already built
    if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
        missing+=(compiler)
    fi
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
fi
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python-venv)
fi

package_names() {   # map generic names to the package manager's
    local name
    for name in "$@"; do
        case "$pkg:$name" in
            apt-get:compiler) echo build-essential ;;
            apt-get:python-venv) echo python3-venv ;;
            dnf:compiler) echo gcc-c++ make ;;
            dnf:python-venv) ;;
            pacman:compiler) echo base-devel ;;
            pacman:python-venv) ;;
            brew:bubblewrap|brew:python-venv) ;;
            brew:compiler) ;;   # Xcode's command line tools: xcode-select --install
            *) echo "$name" ;;
        esac
    done
}

if ((${#missing[@]})); then
    sudo_cmd=()
    if [[ "$(id -u)" != 0 && "$pkg" != brew ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]} and not root" "install them as root: ${missing[*]}"
        sudo_cmd=(sudo)
    fi
    read -r -a names <<< "$(package_names "${missing[@]}" | tr '\n' ' ')"
    say "installing OS packages: ${names[*]:-(none needed from $pkg)}"
    fix_hint="install ${names[*]:-${missing[*]}} with your package manager, then run this again"
    if [[ -n "$bundle" ]]; then
        die "missing ${missing[*]} and a bundle install uses no network" "$fix_hint (from the OS's install media)"
    fi
    case "$pkg" in
        apt-get)
            run "${sudo_cmd[@]}" apt-get update -qq
            run "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${names[@]}" ;;
        dnf) run "${sudo_cmd[@]}" dnf install -y "${names[@]}" ;;
        pacman) run "${sudo_cmd[@]}" pacman -S --needed --noconfirm "${names[@]}" ;;
        brew)
            if ((${#names[@]})); then run brew install "${names[@]}"; fi
            if [[ " ${missing[*]} " == *" compiler "* ]]; then
                die "no C++ compiler" "run: xcode-select --install"
            fi ;;
        *) die "missing ${missing[*]} and no known package manager (apt-get, dnf, pacman, brew)" "$fix_hint" ;;
    esac
    unset fix_hint
fi
if [[ "$os" != Linux ]]; then
    say "note: the code sandbox needs Linux (bubblewrap); on $os the agent runs without its Python tool"
fi

# --- Python and the virtual environment --------------------------------------------
command -v "$python" >/dev/null 2>&1 || die "$python not found" "install Python 3.11 or newer, or set APPLIANCE_INSTALL_PYTHON"
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    die "$("$python" -V 2>&1) is older than 3.11" "install Python 3.11+ (e.g. apt-get install python3.11) and set APPLIANCE_INSTALL_PYTHON"
fi
venv="$prefix/venv"
if [[ ! -x "$venv/bin/python" ]]; then
    say "creating the virtual environment $venv"
    run mkdir -p "$prefix"
    run "$python" -m venv "$venv"
fi
app="$venv/bin/appliance"

if [[ -n "$bundle" ]]; then
    say "checking every file of the bundle against SHA256SUMS"
    if command -v sha256sum >/dev/null 2>&1; then sums=(sha256sum); else sums=(shasum -a 256); fi
    fix_hint="copy the bundle again; it is damaged or was changed"
    run bash -c 'cd "$1" && shift && "$@" -c --quiet SHA256SUMS' _ "$bundle" "${sums[@]}"
    if [[ -n "$bundle_digest" ]] && ((!dry_run)); then
        actual="$("${sums[@]}" < "$bundle/manifest.json" | cut -d' ' -f1)"
        [[ "$actual" == "$bundle_digest" ]] || die "manifest digest $actual is not $bundle_digest" "$fix_hint"
    fi
    fix_hint="the bundle lacks a wheel for this machine: create it on a machine like this one"
    run env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null \
        "$venv/bin/python" -m pip install -q --no-index --find-links "$bundle/wheels" appliance
    install_cmd=("$app" bundle install "$bundle")
    [[ -n "$bundle_digest" ]] && install_cmd+=(--digest "$bundle_digest")
else
    src="$(cd "$here/.." && pwd)"
    [[ -f "$src/pyproject.toml" ]] || die "no appliance source next to $here" "run the install.sh of an appliance checkout or bundle"
    extras=""
    [[ "$gpu" == cuda ]] && extras="[gpu]"
    say "installing the appliance; llama-cpp-python compiles from source the first time (~6 min on 2 cores)"
    fix_hint="check the compiler and cmake output above; for CUDA the toolkit (nvcc) must be installed"
    run "$venv/bin/python" -m pip install -q --upgrade pip
    run env CMAKE_ARGS="$cmake_args" "$venv/bin/python" -m pip install -q "$src$extras"
    install_cmd=("$app" install)
    [[ -n "$profile" ]] && install_cmd+=(--profile "$profile")
fi
unset fix_hint

# --- weights, SearXNG, sandbox, config ---------------------------------------------
fix_hint="read the message above; \`$app doctor\` shows what is missing"
run "${install_cmd[@]}"
unset fix_hint

bin_dir="$HOME/.local/bin"
run mkdir -p "$bin_dir"
run ln -sf "$app" "$bin_dir/appliance"
case ":$PATH:" in *":$bin_dir:"*) ;; *) say "add $bin_dir to PATH to run \`appliance\` from anywhere" ;; esac

if ((dry_run)); then
    say "dry run: nothing was changed"
    exit 0
fi
say "done: \`appliance doctor\` checks every component, \`appliance\` starts the research agent"
if ((run_after)) && [[ -t 0 && -t 1 ]]; then
    exec "$app"
fi
