"""Evaluation: image and pixel metrics, the test pass, FID, MC-dropout uncertainty, plots and HTML reports."""
