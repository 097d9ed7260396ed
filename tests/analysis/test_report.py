import math
from pathlib import Path

import pytest
import torch

from gplq_mm.analysis import collect, weight_drift, write_report
from gplq_mm.quant import functional as QF
from gplq_mm.quant import iter_quantizers
from gplq_mm.utils.io import read_json
from tests.models.test_classifier import _batch, _build, _stage1

PNG = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def w4a4(fp_checkpoint):
    model = _stage1(fp_checkpoint)
    x, _ = _batch(64)
    model.weight_ptq([dict(inputs=x[i:i + 16]) for i in (0, 16, 32, 48)])
    return model


def test_numbers_match_a_hand_computation(w4a4):
    torch.manual_seed(3)
    batches = [dict(inputs=torch.randn(4, 3, 16, 16)) for _ in range(2)]
    report = collect(w4a4, batches, qwt_r2={'backbone.layers.0': 0.5})
    rows = {r['name']: r for r in report['quantizers']}
    assert {n for n, q in iter_quantizers(w4a4.student)} == set(rows)
    # one activation quantizer by hand: its input over both batches
    name = 'backbone.layers.1.ffn.layers.1.input_quantizer'
    q = dict(iter_quantizers(w4a4.student))[name]
    seen = []
    h = q.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    with torch.no_grad():
        for b in batches:
            w4a4.student.extract_feat(b['inputs'])
    h.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])
    xq = QF.fake_quant(x, q.step.detach(), q.qmin, q.qmax)
    want = 10 * math.log10(float(x.double().pow(2).sum()) /
                           float((x - xq).double().pow(2).sum()))
    assert rows[name]['sqnr_db'] == pytest.approx(want, rel=1e-4)
    v = torch.round(x / q.step.detach())
    assert rows[name]['clip_high'] == pytest.approx(
        float((v > q.qmax).float().mean()))
    # blocks: W32A4 / no QwT / QwT settings, R^2 passed through
    blocks = {r['name']: r for r in report['blocks']}
    assert list(blocks) == ['backbone.layers.0', 'backbone.layers.1']
    assert blocks['backbone.layers.0']['qwt_r2'] == 0.5
    for r in blocks.values():
        for s in ('W32A4', 'W4A4 no QwT', 'W4A4'):
            assert 0 < r[s]['rel_l2'] < 1 and 0 < r[s]['cosine'] <= 1
    # the model is left as it was: W4A4, QwT on
    assert w4a4.stage == 2 and all(q.enabled for _, q in
                                   iter_quantizers(w4a4.student))
    assert report['pca']['kept'] == int(w4a4.pca.num_components)
    # weight PTQ quantizes on the fly: the latent weights are the FP32 ones
    drift = report['weight_drift']
    assert drift == weight_drift(w4a4.student, w4a4.teacher)
    assert len(drift['layers']) == len(list(iter_quantizers(w4a4.student,
                                                            'weight')))
    assert drift['mae_mean'] == drift['mse_mean'] == 0


def test_report_files(w4a4, tmp_path):
    report = collect(w4a4, [dict(inputs=torch.randn(4, 3, 16, 16))])
    md = write_report(report, str(tmp_path))
    text = Path(md).read_text()
    pngs = sorted(p.name for p in tmp_path.glob('*.png'))
    assert pngs == ['act_clipping.png', 'act_range.png', 'act_sqnr.png',
                    'blocks.png', 'pca_spectrum.png', 'weight_drift.png',
                    'weight_sqnr.png']
    import matplotlib.image as mpimg
    for name in pngs:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        img = mpimg.imread(tmp_path / name)
        assert img.shape[0] > 200 and img.shape[1] > 400, name
        assert img.std() > 0.01, name  # not a blank canvas
        assert f']({name})' in text
    stored = read_json(tmp_path / 'report.json')
    assert len(stored['quantizers']) == len(report['quantizers'])
    assert stored['weight_drift'] == report['weight_drift']
    assert '## Weight drift from the FP32 checkpoint' in text
    n = len(report['weight_drift']['layers'])
    assert f'Mean over {n} quantized layers: MAE 0, MSE 0, ' in text


def test_float_model_is_refused():
    with pytest.raises(ValueError, match='stage 0 \\(float\\)'):
        collect(_build(), [dict(inputs=torch.randn(1, 3, 16, 16))])
