"""`gradatim report`: a pipeline run as one HTML page with plots: the ablation table, a row per stage, and the
loss, reward, completion-length and pass@1 curves. `build` is pure, `render` draws, `collect` does the I/O."""
