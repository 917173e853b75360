"""Stage 1, the feature store: HDF5 files of backbone features per split, how they are read
(`open_store`), written crash-safely (`PartialStore`) and filled by `extract_features`.
"""

from __future__ import annotations

from featurestore.store.extract import (
    DTYPES,
    ExtractResult,
    Status,
    default_workers,
    extract_features,
)
from featurestore.store.extract_loop import (
    Chunk,
    run_chunks,
)
from featurestore.store.read import (
    FORMAT_VERSION,
    JSON_ATTRS,
    PROVENANCE_KEYS,
    SPLIT_NAMES,
    FeatureStore,
    SplitArrays,
    StoreDamagedError,
    StoreInUseError,
    dataset_folder,
    find_stores,
    open_store,
    provenance_difference,
    read_attrs,
    store_path,
    verify_store,
)
from featurestore.store.write import (
    KEPT,
    PartialStore,
    store_lock,
)

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "JSON_ATTRS",
    "KEPT",
    "PROVENANCE_KEYS",
    "SPLIT_NAMES",
    "Chunk",
    "ExtractResult",
    "FeatureStore",
    "PartialStore",
    "SplitArrays",
    "Status",
    "StoreDamagedError",
    "StoreInUseError",
    "dataset_folder",
    "default_workers",
    "extract_features",
    "find_stores",
    "open_store",
    "provenance_difference",
    "read_attrs",
    "run_chunks",
    "store_lock",
    "store_path",
    "verify_store",
]
