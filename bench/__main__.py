from bench.cli import bench_app
from mlxinterp.cli.common import run

run(bench_app)
