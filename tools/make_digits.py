"""Write scikit-learn's handwritten digits as an ImageNet-layout dataset
(see gplq_mm.demo.data.make_digits)."""
import argparse

from gplq_mm.demo.data import make_digits

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--out', default='data/digits')
    p.add_argument('--size', type=int, default=32)
    args = p.parse_args()
    print(make_digits(args.out, args.size))
