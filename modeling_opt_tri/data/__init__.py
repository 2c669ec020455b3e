"""Data for OPT-Tri: the built-in ShapeWorld dataset, metadata folders, the formats and mixtures of `sources.py`, the
WebDataset / parquet writers and robust decoding."""

from .decoding import CorruptSampleError, decode_audio, decode_image
from .export import export_synthetic_folder
from .folder import load_metadata_folder, load_metadata_folder_dict
from .sources import Source, load_sources, parse_sources, plan_evaluation
from .writers import write_parquet, write_webdataset
from .synthetic import (
    ANSWERS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeWorld,
    build_synthetic_dataset,
    build_synthetic_dataset_dict,
    build_synthetic_iterable_dataset,
    split_offset,
)

__all__ = [
    "ANSWERS",
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "CorruptSampleError",
    "ShapeWorld",
    "Source",
    "build_synthetic_dataset",
    "build_synthetic_dataset_dict",
    "build_synthetic_iterable_dataset",
    "decode_audio",
    "decode_image",
    "export_synthetic_folder",
    "load_metadata_folder",
    "load_metadata_folder_dict",
    "load_sources",
    "parse_sources",
    "plan_evaluation",
    "split_offset",
    "write_parquet",
    "write_webdataset",
]
