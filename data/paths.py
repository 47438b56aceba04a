"""The one place a path outside the project is written down.

SHARED_DATA: on the project's own machines, real Flickr30k captions and photos lie in ../shared/data
beside the checkout (their licence keeps them out of the repository). A user's clone has no such
folder: the tests that use it skip, the notebooks fall back to the built-in data, and the benchmarks
take the files as arguments.
"""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
