"""Parameter counts equal the study's tables (no compile), and every method trains + evaluates."""

import json
import os

import pytest

from ganomaly_jax import config_lib, summary, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def counts(spec):
  return summary.count_parameters(config_lib.load_config(os.path.join(REPO, spec)))


@pytest.mark.parametrize('spec,g,d', [
    ('configs/ganomaly.py:dataset=mnist,channels=3', (3_208_960, 3_206_528, 2_432), (664_064, 663_296, 768)),
    ('configs/ganomaly.py:dataset=mnist,channels=1', (3_202_816, 3_200_384, 2_432), (662_016, 661_248, 768)),
    ('configs/ganomaly.py:cars256', (143_974_144, 143_950_208, 23_936), (44_747_264, 44_739_328, 7_936)),
    ('configs/ganomaly_modified.py:cars256', (64_842_880, 64_831_232, 11_648), (17_428_672, 17_424_832, 3_840)),
    ('configs/skip_ganomaly.py:cars256', (54_423_811, 54_413_955, 9_856), (47_992_896, 47_984_960, 7_936)),
])
def test_parameter_counts_match_the_study(spec, g, d):
  c = counts(spec)
  assert (c['generator']['total'], c['generator']['trainable'], c['generator']['non_trainable']) == g
  assert (c['discriminator']['total'], c['discriminator']['trainable'],
          c['discriminator']['non_trainable']) == d


def test_spectral_norm_adds_only_non_trainable_state():
  plain, sn = counts('configs/ganomaly_modified.py:cars256'), counts('configs/ganomaly_sn.py:cars256')
  assert sn['generator'] == plain['generator']
  assert sn['discriminator']['trainable'] == plain['discriminator']['trainable']
  assert sn['discriminator']['non_trainable'] > plain['discriminator']['non_trainable']


@pytest.mark.parametrize('method', config_lib.METHODS)
def test_every_method_quick_run_writes_results(method, tmp_path):
  config = config_lib.load_config(os.path.join(
      REPO, f'configs/{method}.py:quick,steps=2,model.ngf=4,model.ndf=4,batch=8,'
      'dataset.max_train=32,dataset.max_test=32,eval.batch_size=16'))
  results = train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'results.json') as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert results['method'] == method and results['steps'] == 2
  assert 0.0 <= results['image_auroc'] <= 1.0
  assert os.path.isdir(tmp_path / 'checkpoints' / '2')
