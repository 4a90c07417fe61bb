"""Example models: small CNNs for Fashion-MNIST, ResNets (models.resnet)."""
from models import resnet  # NOQA
from models.small_cnn import DemoCNN  # NOQA
from models.small_cnn import SmallCNN  # NOQA
from models.small_cnn import SmallCNNNoBN  # NOQA
