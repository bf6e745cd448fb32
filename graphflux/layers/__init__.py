"""Layers: small classes a newcomer reads in one screen, one kind per file -- dense (Chain,
Dense, Dropout), convolution, pooling, normalisation -- and their initialisers."""
from .convolution import Conv, ConvTranspose, CrossCor  # noqa: F401
from .dense import Chain, Dense, Dropout  # noqa: F401
from .init import as_rng, glorot_uniform, nfan  # noqa: F401
from .normalisation import BatchNorm, LayerNorm  # noqa: F401
from .pooling import (AdaptiveMaxPool, AdaptiveMeanPool, GlobalMaxPool,  # noqa: F401
                      GlobalMeanPool, MaxPool, MeanPool)
