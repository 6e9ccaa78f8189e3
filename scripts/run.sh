#!/usr/bin/env bash
# Set everything up (idempotent), then run one job:
#   bash scripts/run.sh suite [run-suite options]   compute the experiment suite on the default model into
#                                                   ./mlxinterp-out/suite (resumable), then compare it with
#                                                   the committed reference results/
#   bash scripts/run.sh test  [pytest options]      the test suite
# Works on a fresh Linux machine (installs OpenBLAS with apt when it can) and on an Apple-silicon
# Mac (MLX with Metal). The venv lives in .venv (MLXINTERP_VENV overrides); on Linux its python,
# pytest and Jupyter kernel preload OpenBLAS by themselves (mlxinterp-openblas.pth, kernel.json).
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-suite}"; shift || true
venv="${MLXINTERP_VENV:-.venv}"
out="${MLXINTERP_OUT:-mlxinterp-out/suite}"

log() { printf '[setup] %s\n' "$*" >&2; }
case "$job" in suite|test) ;; *) echo "usage: bash scripts/run.sh {suite|test} [options]" >&2; exit 2 ;; esac

openblas_path() { ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 2>/dev/null | head -n1 || true; }

install_openblas() {
  # MLX's Linux wheel ships a reference BLAS; OpenBLAS interposed is ~16x faster.
  [ "$(uname -s)" = Linux ] || return 0
  [ -n "$(openblas_path)" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    log "OpenBLAS: not installed and no apt-get here; install OpenBLAS yourself for ~16x faster CPU matmuls"
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      log "OpenBLAS: not installed, and installing it needs root (sudo asks for a password):"
      log "  run 'sudo apt-get install libopenblas0-pthread' once; continuing with MLX's bundled (slow) BLAS"
      return 0
    fi
  fi
  log "OpenBLAS: installing libopenblas0-pthread with apt-get"
  local err; err="$(mktemp)"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenblas0-pthread; } \
       >/dev/null 2>"$err"; then
    log "OpenBLAS: apt-get failed: $(grep -v '^\s*$' "$err" | tail -n1)"
    log "  continuing with MLX's bundled (slow) BLAS; rerun this script when apt is free"
  fi
  rm -f "$err"
}

install_chromium() {
  # The explorer's browser tests (tests/test_serve_browser.py) drive Debian's headless Chromium; they skip
  # with a reason when it is missing. Browser builds downloaded by Playwright/Selenium do not run here.
  [ "$(uname -s)" = Linux ] || return 0
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || { log "Chromium: not installed and no apt-get; browser tests will skip"; return 0; }
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      log "Chromium: installing it needs root; browser tests will skip (sudo apt-get install chromium chromium-driver)"
      return 0
    fi
  fi
  log "Chromium: installing chromium chromium-driver with apt-get (browser tests)"
  local err; err="$(mktemp)"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; } \
       >/dev/null 2>"$err"; then
    log "Chromium: apt-get failed: $(grep -v '^\s*$' "$err" | tail -n1); browser tests will skip"
  fi
  rm -f "$err"
}

install_python_packages() {
  local stamp="$venv/.mlxinterp-installed"
  if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then return 0; fi
  local t0=$SECONDS pip_log="$venv/pip.log"
  log "installing mlxinterp and its dependencies into $venv (pip, a few minutes the first time; log: $pip_log)"
  {
    "$venv/bin/python" -m pip install --upgrade pip
    "$venv/bin/python" -m pip install -e ".[test]"
  } >"$pip_log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do  # a sign of life while pip works silently
    sleep 15
    kill -0 "$pid" 2>/dev/null && log "  still installing ($((SECONDS - t0)) s): $(grep -Eo '^(Collecting|Downloading|Installing|Building)[^(]*' "$pip_log" | tail -n1 | cut -c1-80)"
  done
  if ! wait "$pid"; then
    tail -n 20 "$pip_log" >&2
    log "pip failed (full log: $pip_log)"; exit 1
  fi
  log "installed in $((SECONDS - t0)) s"
  touch "$stamp"
}

preload_openblas_in_venv() {
  # python, pytest and Jupyter kernels of this venv preload OpenBLAS by themselves (Linux).
  [ "$(uname -s)" = Linux ] || return 0
  local blas site
  blas="$(openblas_path)"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if [ -z "$blas" ]; then
    rm -f "$site/mlxinterp-openblas.pth"
    log "OpenBLAS: not available; MLX uses its bundled BLAS (~16x slower float32 matmuls)"
    return 0
  fi
  # -W: this one process runs before the preload exists (import mlxinterp would warn about it)
  "$venv/bin/python" -W ignore::RuntimeWarning -c \
    'import sys; from mlxinterp.core.platform import startup_preload_line as f; sys.stdout.write(f(sys.argv[1]))' \
    "$blas" >"$site/mlxinterp-openblas.pth"
  "$venv/bin/python" -m ipykernel install --sys-prefix --name mlxinterp --display-name "mlxinterp ($venv)" \
    --env LD_PRELOAD "$blas" >/dev/null 2>&1 || log "could not register the Jupyter kernel (ipykernel missing?)"
  export LD_PRELOAD="$blas${LD_PRELOAD:+:$LD_PRELOAD}"
  local in_use
  in_use="$("$venv/bin/python" -c 'from mlxinterp.core.platform import blas_in_use; print(blas_in_use())' 2>/dev/null || true)"
  log "BLAS in use: ${in_use:-unknown}; python, pytest and the 'mlxinterp' Jupyter kernel of $venv preload it"
}

setup() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $("$py" --version 2>&1)"
    "$py" -m venv "$venv"
  fi
  install_openblas
  install_python_packages
  preload_openblas_in_venv
}

setup
case "$job" in
  suite)
    log "running the suite into $out (Ctrl-C is safe: run the same command again to resume)"
    exec "$venv/bin/mlxinterp" run-suite --model default --out "$out" --reference results "$@" ;;
  test)
    install_chromium
    set +e
    "$venv/bin/python" -m pytest "$@"
    rc=$?
    if [ "$rc" = 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
    exit "$rc" ;;
esac
