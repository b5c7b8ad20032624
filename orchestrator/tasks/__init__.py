"""Tasks: where the data, the model family and the held-out score come from."""
