"""Training data: image folders and TFRecords as global batches, the offline demo dataset."""
