from .gplq import GPLQClassifier, GPLQModel
from .pca import PCAProjector, choose_num_components, pca_loss

__all__ = ['GPLQModel', 'GPLQClassifier', 'PCAProjector',
           'choose_num_components', 'pca_loss']
