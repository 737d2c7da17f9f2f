"""Records and loaders: evaluation suites (suites.py), training sets and the synthetic world."""
