"""Evaluation: FID and KID on the Inception-v3 of the TensorFlow FID graph, identity similarity.

``inception`` (the net), ``inception_weights`` (its weights), ``metrics`` (FID, KID),
``identity`` (face embeddings), ``features`` (batched feature extraction over every device,
cached statistics of folders), ``evaluator`` (a generator scored against a photo and a cartoon
set).
"""
