"""Inference: a batch of preprocessed images in, probabilities out.

* ``predictors``: ``load_predictor(weights, backend, device)``; the dynamic-graph and the Paddle Inference
  (oneDNN, CPU) predictors.
* ``export``: ``paddle.jit.save`` exports and their cache keyed by the weights' content.
"""
