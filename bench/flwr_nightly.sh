#!/usr/bin/env bash
# Does fedlaunch still run on the next Flower? The newest flwr-nightly in a scratch venv: the
# internals tests (the named internals, the reliances table, the simulation seam), then a 2-round
# run (2 clients, synthetic data, the tutorial CNN, on the CPU) on each engine: the simulation
# engine (the default) and the deployment engine, whose shims hold most of the reliances.
#
#   bench/flwr_nightly.sh [SCRATCH_DIR]     (default: a new folder under /tmp; reused if given)
#
# fedlaunch is not installed there (its flwr pin would refuse the nightly): it runs from this
# checkout through PYTHONPATH. Prints the flwr-nightly version, each step's result and exit code.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${1:-$(mktemp -d /tmp/fedlaunch-flwr-nightly.XXXXXX)}
VENV="$SCRATCH/venv"
PY="$VENV/bin/python"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONPATH="$ROOT" PATH="$VENV/bin:$PATH"
export FLWR_HOME="$SCRATCH/flwr-home" XDG_CACHE_HOME="$SCRATCH/cache"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV" || exit 1
fi
echo "== installing the newest flwr-nightly and fedlaunch's other dependencies into $VENV"
# A pre-release in the specifier lets pip take flwr-nightly's dev builds without --pre, which
# would also take pre-releases of its dependencies (grpcio-health-checking 1.82.0rc2 needs a
# protobuf newer than flwr-nightly allows, and nothing imports).
"$PY" -m pip install -q --upgrade "flwr-nightly>=0.dev0" || exit 1
"$PY" -m pip install -q torch torchvision numpy pillow nvidia-ml-py psutil textual matplotlib \
    uvicorn httpx cryptography pytest pytest-timeout pytest-asyncio || exit 1
nightly=$("$PY" -c 'import importlib.metadata as m; print(m.version("flwr-nightly"))')
echo "flwr-nightly $nightly (flwr.__version__ $("$PY" -c 'import flwr; print(flwr.__version__)'))"

echo "== internals tests"
(cd "$ROOT" && "$PY" -m pytest -q -p no:cacheprovider tests/test_flwr_internals.py \
    tests/test_simulation_seam.py 2>&1 | tail -25)
internals=${PIPESTATUS[0]}

declare -A runs
for engine in simulation deployment; do
    echo "== 2-round run, $engine engine"
    "$PY" -m launcher.cli --engine "$engine" --clients 2 --rounds 2 --dataset synthetic --model cnn \
        --limit-train 600 --limit-test 200 --gpus cpu --headless --out "$SCRATCH/run-$engine" \
        >"$SCRATCH/run-$engine.out" 2>&1
    runs[$engine]=$?
    grep -E "fedlaunch:|warning|round [0-9]+/" "$SCRATCH/run-$engine.out" | tail -16
    [ -f "$SCRATCH/run-$engine/summary.json" ] && cat "$SCRATCH/run-$engine/summary.json"
done

echo "== flwr-nightly $nightly: internals tests exit $internals, 2-round runs exit" \
    "${runs[simulation]} (simulation) and ${runs[deployment]} (deployment) ($SCRATCH)"
[ "$internals" -eq 0 ] && [ "${runs[simulation]}" -eq 0 ] && [ "${runs[deployment]}" -eq 0 ]
