"""Example models: small CNNs for Fashion-MNIST, ResNets (models.resnet)."""
from models import resnet  # NOQA: F401
from models.small_cnn import DemoCNN  # NOQA: F401
from models.small_cnn import SmallCNN  # NOQA: F401
from models.small_cnn import SmallCNNNoBN  # NOQA: F401
