"""Write digit canvases as a small COCO instance-segmentation dataset (see
gplq_mm.demo.data.make_digit_coco)."""
import argparse

from gplq_mm.demo.data import make_digit_coco

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--out', default='data/digit_coco')
    p.add_argument('--train', type=int, default=300)
    p.add_argument('--val', type=int, default=100)
    args = p.parse_args()
    print(make_digit_coco(args.out, args.train, args.val))
