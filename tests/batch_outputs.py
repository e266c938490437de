"""What the batch CLI tests (test_batch.py, test_inputs.py) share: running
``clear-native explain`` in process and reading back its store.

A plain module next to conftest.py (imported as ``from batch_outputs import ...``); zarr and
pyarrow are imported where used, so the test modules' ``importorskip`` still decides.
"""
from pathlib import Path

from clear_native import cli


def explain(*args) -> int:
    return cli.main(["explain", "--no-progress", *map(str, args)])


def read_arrays(out) -> dict:
    import zarr

    g = zarr.open_group(str(Path(out) / "clear.zarr"), mode="r")
    return {name: g[name][:] for name in g.array_keys()}


def read_table(out):
    import pyarrow.parquet as pq

    return pq.read_table(Path(out) / "table.parquet").to_pylist()
