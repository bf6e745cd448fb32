"""A small CNN on the bundled digits reshaped to (N, 1, 8, 8), compiled, to >= 97% test
accuracy in seconds; the model and loop are in graphflux/cnn_demo.py (also run by
`graphflux demo --cnn`)."""
from graphflux.cnn_demo import main

main()
