from .gplq import GPLQClassifier, GPLQModel
from .gplq_detector import GPLQDetector
from .pca import PCAProjector, choose_num_components, pca_loss

__all__ = ['GPLQModel', 'GPLQClassifier', 'GPLQDetector', 'PCAProjector',
           'choose_num_components', 'pca_loss']
