"""Scoring new images with a finished run (the library behind `python -m ganomaly_jax.infer`).

finished_run: the run's config, results and selected checkpoint (also used by experiments/rescore);
image_files: file discovery, map names and the decoding stream; outputs: scores.csv, map PNGs and
the staging folder; scoring: `infer`, which streams the images through the run into the outputs.
"""
