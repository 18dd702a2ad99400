"""The field's evaluation protocols on cached embeddings (``fastall probe``): linear probes fitted many at
once, cosine kNN, label-efficiency curves, the batch-effect score and the embedding map."""
