"""The application layer: what the entry scripts call. The config package (files, overrides,
``${refs}``, trust, building objects by name), run directories and their lifecycle, loading a
trained model, prediction files, and the drivers of runs of runs (sweeps, cross-validation)."""
