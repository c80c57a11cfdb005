"""Models: resolving and loading them safely, shipped architectures, classical
classifiers on features, and the Predictor every run loads as."""
