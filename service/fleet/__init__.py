"""Fleet mode: train and score every host from the Prometheus that already scrapes it."""
