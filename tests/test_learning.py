"""Learning really happens: the shapes preset's small fcn8s, 800 steps, about twice the all-background mean IU.

Short and still clear of the bar: 64 px crops (not 96; a step costs under half) and 3x the preset's learning
rate. Measured when this test was written (2026-11): 800 steps at 3x gave 0.335 / 0.314 / 0.358 with the
preset's seed and seeds 0 and 7; 600 steps at 4x gave 0.282 / 0.305 / 0.279, and the preset's own settings
(1e-3, 96 px crops) needed as many steps, over twice the time, for 0.259. On 2026-12-02 600 steps at 4x gave
0.248 on another 2-core machine (XLA:CPU's arithmetic differs by CPU), at the code before and after the model
contract alike: too close to the bar, hence 800 steps at 3x.
"""
import numpy as np

from fcn_jax import data
from fcn_jax.configs import get_config
from fcn_jax.train_lib import train_and_evaluate

STEPS = 800
LR = 3e-3  # the preset's 1e-3 suits its 2,500 steps; the poly decay reaches 0 at STEPS here
CROP = 64
MIN_MEAN_IU = 0.25


def test_small_fcn8s_learns_shapes(tmp_path):
    data_dir = str(tmp_path / "tfds")
    cfg = get_config("shapes", "fcn8s", steps=STEPS, lr=LR, crop_size=CROP, eval_every=STEPS,
                     checkpoint_every=STEPS, data_dir=data_dir)
    summary = train_and_evaluate(cfg, str(tmp_path / "run"), progress=False, log=lambda _: None)
    scores = summary["scores"]
    # Independent baseline: predicting background everywhere on the same validation split.
    source = data.load_split("shapes", "validation", data_dir)
    labels = np.concatenate([np.asarray(source[i]["segmentation"]).ravel() for i in range(len(source))])
    labels = labels[labels != 255]
    background_iu = np.mean(labels == 0) / 7  # IU of class 0 is its pixel share; the other six are 0
    assert summary["step"] == STEPS
    assert scores["mean_iu"] > MIN_MEAN_IU > 1.8 * background_iu, (scores, background_iu)
    assert scores["mean_acc"] > 2 / 7  # more than background and one class right on average
