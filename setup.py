from setuptools import find_packages, setup

setup(
    name='gplq_mm',
    version='0.1.0',
    description='GPLQ (activation-only QAT, then weight PTQ) for OpenMMLab '
    'vision transformers',
    packages=find_packages(include=['gplq_mm', 'gplq_mm.*']),
    python_requires='>=3.8',
    # mmcv must come with its compiled ops (README: "Install"); the torch
    # floor is gplq_mm/env.py's, which `import gplq_mm` checks.
    install_requires=[
        'torch>=2.6', 'mmengine>=0.10.0,<0.11', 'mmcv>=2.0.0,<2.2.0',
        'mmpretrain>=1.2.0', 'mmdet>=3.3.0', 'timm>=0.9', 'numpy',
        'matplotlib'
    ],
    extras_require=dict(
        demo=['scikit-learn', 'pycocotools'],
        deploy=['onnx>=1.16', 'onnxruntime>=1.20',  # opset 21, INT4
                'openvino>=2025.0'],
        tests=['pytest', 'scikit-learn', 'onnx>=1.16', 'onnxruntime>=1.20',
               'openvino>=2025.0']),
)
