"""The pure core: fronts and hypervolume, the distillation loss, the objectives registry, early stopping,
the search space's vocabulary, the compressible-model protocol, bit packing and model measurements.

Nothing here imports another part of the product (tests/test_layers.py checks it); every layer above
builds on these. Import the modules themselves (`orchestrator.core.pareto`, ...): this file imports
nothing, so that reading one of them costs no more than that module.
"""
