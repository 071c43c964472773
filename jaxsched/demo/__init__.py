"""The ``jaxsched demo``: a small Flax denoiser trained on scikit-learn's 8x8 digits, sampled and
inverted with every scheduler. Needs the ``demo`` extra (scikit-learn, Pillow, tqdm)."""
