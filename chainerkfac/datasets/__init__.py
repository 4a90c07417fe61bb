"""Dataset loaders used by the examples and tests."""
from chainerkfac.datasets.fashion_mnist import get_fashion_mnist  # NOQA: F401
from chainerkfac.datasets.fashion_mnist import load_fashion_mnist  # NOQA: F401
