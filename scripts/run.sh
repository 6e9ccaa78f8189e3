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

# The Debian packages a job needs: OpenBLAS (MLX's Linux wheel ships a reference BLAS; OpenBLAS
# interposed is ~16x faster), the Python documentation sources (the default text corpus for SAE and
# tuned-lens training, PSF licence) and, for the tests, Debian's headless Chromium (the explorer's
# browser tests; browser builds downloaded by Playwright/Selenium do not run here).
missing_packages() {
  [ "$(uname -s)" = Linux ] || return 0
  [ -n "$(openblas_path)" ] || echo libopenblas0-pthread
  ls -d /usr/share/doc/python3*/html/_sources >/dev/null 2>&1 || echo python3-doc
  if [ "$job" = test ]; then
    { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || echo chromium chromium-driver
  fi
}

install_debian_packages() {
  local pkgs; pkgs="$(missing_packages | xargs)"
  [ -n "$pkgs" ] || return 0
  local without="without them: slow BLAS, no default corpus (pass --corpus), browser tests skip"
  if ! command -v apt-get >/dev/null 2>&1; then
    log "not installed and no apt-get here: $pkgs; $without"
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      log "installing $pkgs needs root (sudo asks for a password): run 'sudo apt-get install $pkgs' once; $without"
      return 0
    fi
  fi
  log "installing $pkgs with apt-get"
  local err; err="$(mktemp)"
  # shellcheck disable=SC2086 - one word per package
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $pkgs; } \
       >/dev/null 2>"$err"; then
    log "apt-get failed: $(grep -v '^\s*$' "$err" | tail -n1); rerun this script when apt is free ($without)"
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
    # --no-compile: pip would byte-compile every installed module (about half the install's time); the
    # modules actually imported are compiled on first use instead (see use_bytecode_cache).
    "$venv/bin/python" -m pip install --no-compile -e ".[test]"
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

use_bytecode_cache() {
  # Compiled bytecode is cached in the venv, never beside the sources. Where PYTHONDONTWRITEBYTECODE is set
  # (as on the CI machine) nothing would be cached and every test subprocess would recompile what it
  # imports (measured: pytest 747 s instead of 595 s).
  unset PYTHONDONTWRITEBYTECODE
  PYTHONPYCACHEPREFIX="$(cd "$venv" && pwd)/pycache"
  export PYTHONPYCACHEPREFIX
}

setup() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $("$py" --version 2>&1)"
    "$py" -m venv "$venv"
  fi
  install_debian_packages
  use_bytecode_cache
  install_python_packages
  preload_openblas_in_venv
}

setup
case "$job" in
  suite)
    log "running the suite into $out (Ctrl-C is safe: run the same command again to resume)"
    exec "$venv/bin/mlxinterp" run-suite --model default --out "$out" --reference results "$@" ;;
  test)
    # One OpenBLAS thread per process: the tests run three to four processes at once on CI's two cores
    # (tests/background.py), where a second thread per process only spins and yields (measured with one
    # other job running: a default-model forward 0.59 s with one thread, 0.81 s with two, and 0.18 s of
    # each forward's CPU spent in the kernel).
    export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
    set +e
    "$venv/bin/python" -m pytest "$@"
    rc=$?
    if [ "$rc" = 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
    exit "$rc" ;;
esac
