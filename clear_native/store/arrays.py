"""The run's Zarr arrays under ``OUT/clear.zarr``: which arrays a run stores, and their
metadata, kept sound without ever re-creating an array that holds committed chunks."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from clear_native.store.files import Files, read_json

logger = logging.getLogger(__name__)

# The arrays of each --store item: (name, "class" | "response"); "input" is an array of
# uint8 pictures (its own name), "png" files outside the arrays.
STORE_FIELDS = {
    "dominant": (("dominant_class", "class"),),
    "response": (("dominant_response", "response"),),
    "runner_up": (("runner_up_class", "class"), ("runner_up_response", "response")),
    "focus": (("target_response", "response"), ("rival_class", "class"), ("rival_response", "response")),
    "weakest": (("weakest_class", "class"), ("weakest_response", "response")),
}
_BASE_ARRAYS = ("prediction", "target", "label", "logits", "valid")


def array_names(identity: dict) -> list[str]:
    """The arrays of the run of ``identity`` (its ``store`` items)."""
    names = list(_BASE_ARRAYS)
    for item in identity.get("store", ()):
        names += [name for name, _ in STORE_FIELDS.get(item, ())] + (["input"] if item == "input" else [])
    return names


def _fresh_metadata(specs: dict, batch_size: int) -> dict:
    """The Zarr metadata (zarr.json contents) of the group ("") and of each array, as this
    zarr version creates them."""
    import zarr

    with tempfile.TemporaryDirectory(prefix="clear-native-meta-") as tmp:
        group = zarr.open_group(tmp, mode="w")
        for name, (shape, dt, fill) in specs.items():
            group.create_array(name, shape=shape, chunks=(batch_size, *shape[1:]), dtype=dt, fill_value=fill)
        root = Path(tmp)
        return {name: json.loads((root / name / "zarr.json").read_text()) for name in ("", *specs)}


def _same_array(meta, want: dict) -> bool:
    """Whether ``meta`` is a usable array metadata equal to ``want`` in what the store
    relies on (codecs may differ between zarr versions)."""
    return (isinstance(meta, dict) and meta.get("node_type") == "array" and isinstance(meta.get("codecs"), list)
            and all(meta.get(k) == want.get(k) for k in ("zarr_format", "shape", "data_type", "fill_value",
                                                          "chunk_grid", "chunk_key_encoding")))


def _is_group(meta) -> bool:
    return isinstance(meta, dict) and meta.get("node_type") == "group" and meta.get("zarr_format") == 3


def _usable(meta, n: int, b: int) -> bool:
    """Whether ``meta`` is an array metadata of ``n`` rows in chunks of ``b``."""
    try:
        return (meta.get("node_type") == "array" and isinstance(meta.get("codecs"), list)
                and meta["shape"][0] == n and meta["chunk_grid"]["configuration"]["chunk_shape"][0] == b)
    except (AttributeError, KeyError, IndexError, TypeError):
        return False


def ensure_arrays(out: Path, specs: dict, batch_size: int, identity: dict, arguments: dict,
                  files: Files | None = None) -> list[str]:
    """Makes ``OUT/clear.zarr`` hold every array of ``specs`` without touching a chunk file:
    a missing or unusable array metadata is restored from ``arrays.json`` or rebuilt; then
    writes ``arrays.json`` (through ``files``, default :class:`Files`). Returns what it had
    to fix (empty for a fresh or sound store)."""
    files = files or Files()
    root = out / "clear.zarr"
    fresh = _fresh_metadata(specs, batch_size)
    state, rec = read_json(out / "arrays.json")
    copies = rec.get("arrays") if state == "ok" and isinstance(rec, dict) and isinstance(rec.get("arrays"), dict) \
        else {}
    fixed = []
    root.mkdir(exist_ok=True)
    gstate, gmeta = read_json(root / "zarr.json")
    if not _is_group(gmeta):
        files.write_json(root / "zarr.json", fresh[""])
        if gstate != "missing":
            fixed.append(f"clear.zarr/zarr.json was {gstate if gstate != 'ok' else 'not a group'}: rebuilt")
    final = {}
    for name in specs:
        path = root / name / "zarr.json"
        st, cur = read_json(path)
        if st == "ok" and _same_array(cur, fresh[name]):
            final[name] = cur
            continue
        if _same_array(copies.get(name), fresh[name]):
            meta, how = copies[name], "restored from arrays.json"
        else:
            meta, how = fresh[name], "rebuilt from the run's options"
        path.parent.mkdir(exist_ok=True)
        files.write_json(path, meta)
        final[name] = meta
        if st != "missing" or (root / name / "c").exists():
            what = {"missing": "missing", "unreadable": "unreadable"}.get(st, "not this run's array")
            fixed.append(f"clear.zarr/{name}/zarr.json was {what}: {how} (its chunk files are kept and "
                         "checked against their commit records)")
    want = {"identity": identity, "arguments": arguments, "arrays": final}
    if rec != want:
        files.write_json(out / "arrays.json", want)
        if state == "unreadable" or (state == "ok" and (not isinstance(rec, dict) or rec.get("arrays") != final)):
            fixed.append(f"arrays.json was {state if state != 'ok' else 'out of date'}: rebuilt from the arrays")
        elif state == "missing" and (out / "chunks").is_dir() and any((out / "chunks").glob("*.json")):
            fixed.append("arrays.json was missing: rebuilt from the arrays")
    for f in fixed:
        logger.warning("%s: %s", out, f)
    return fixed
