#!/usr/bin/env bash
# Set everything up (idempotent), then run one job:
#   bash scripts/run.sh suite [run-suite options]   the experiment suite on the default model
#   bash scripts/run.sh test  [pytest options]      the test suite
# Works on a fresh Linux machine (installs OpenBLAS with apt when it can) and on
# an Apple-silicon Mac (MLX with Metal). The venv lives in .venv (MLXINTERP_VENV overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-suite}"; shift || true
venv="${MLXINTERP_VENV:-.venv}"

log() { printf '[setup] %s\n' "$*" >&2; }

install_openblas() {
  # MLX's Linux wheel ships a reference BLAS; OpenBLAS interposed is ~15x faster.
  [ "$(uname -s)" = Linux ] || return 0
  ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || { log "no apt-get: OpenBLAS not installed (slower CPU matmuls)"; return 0; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  log "installing OpenBLAS (libopenblas0-pthread)"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenblas0-pthread; } >/dev/null 2>&1 \
    || log "could not install OpenBLAS (no root?): continuing with MLX's bundled BLAS"
}

setup() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "$py" -m venv "$venv"
  fi
  install_openblas
  local stamp="$venv/.mlxinterp-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing mlxinterp and its dependencies"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install -q -e ".[test]"
    touch "$stamp"
  fi
  # Preload OpenBLAS for everything below (the `mlxinterp` command also does this itself).
  local blas
  blas="$("$venv/bin/python" -c 'from mlxinterp.core.platform import find_openblas; print(find_openblas() or "")')"
  if [ -n "$blas" ]; then export LD_PRELOAD="$blas${LD_PRELOAD:+:$LD_PRELOAD}"; fi
}

setup
case "$job" in
  suite) exec "$venv/bin/mlxinterp" run-suite --model default "$@" ;;
  test)
    set +e
    "$venv/bin/python" -m pytest "$@"
    rc=$?
    if [ "$rc" = 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
    exit "$rc" ;;
  *) echo "usage: bash scripts/run.sh {suite|test} [options]" >&2; exit 2 ;;
esac
