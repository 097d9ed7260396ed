from .base import GPLQModel
from .classifier import GPLQClassifier
from .detector import GPLQDetector
from .methods import METHODS, MethodRecipe
from .pca import PCAProjector, choose_num_components, pca_loss

__all__ = ['GPLQModel', 'GPLQClassifier', 'GPLQDetector', 'METHODS',
           'MethodRecipe', 'PCAProjector', 'choose_num_components',
           'pca_loss']
