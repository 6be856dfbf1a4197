"""sepmeasure: measure how neural networks disentangle linear from non-linear structure."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("sepmeasure")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from .data import DATASETS, LabeledData, Split, as_dataset, load_dataset, load_npz

__all__ = ["__version__", "DATASETS", "LabeledData", "Split", "as_dataset", "load_dataset", "load_npz"]
