"""Linear probing of a frozen checkpoint (the paper's transfer protocol):
the model, its train loop, the annotation-list dataset and the data
checks that run before any work."""
from .datasets import AnnotationList
from .fit import PROTOCOL, accuracy, fit_linear
from .loop import LinearProbeLoop, extract_features, feature_key
from .model import FrozenBackbone, LinearProbe, load_frozen
from .preflight import check_data_roots

__all__ = ['LinearProbe', 'LinearProbeLoop', 'FrozenBackbone', 'load_frozen',
           'AnnotationList', 'check_data_roots', 'extract_features',
           'feature_key', 'PROTOCOL', 'fit_linear', 'accuracy']
